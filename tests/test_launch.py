"""runtime.processes: how many ranks a training stage runs, and the torchrun command that
relaunches it. (That the command really trains 2 gloo ranks under `dvc repro` is
tests/test_distill.py's; this machine has no GPU, so the GPU counts below are patched in.)"""

import importlib.util
import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgg2resnet.config import UserError
from vgg2resnet.training.placement import launch_command, process_count

from .conftest import repo_params

# The patched environment is the same for every generated input.
same_env = settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
argvs = st.lists(st.text("abcdefgh-=./", min_size=1, max_size=8), min_size=1, max_size=4)


def runtime(processes, device: str = "auto"):
    return repo_params({"runtime": {"processes": processes, "device": device}}).runtime


@pytest.fixture
def clean_env(monkeypatch):
    """Not under torchrun, and run as a script (the console entry point), whatever runs pytest."""
    for name in ("WORLD_SIZE", "PET_RDZV_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    return monkeypatch


def test_auto_is_one_process_without_a_gpu_and_nothing_is_relaunched(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: False)  # on any host, a GPU one too
    assert process_count(runtime("auto")) == 1
    assert launch_command(runtime("auto"), ["vgg2resnet", "distill"]) is None


@same_env
@given(count=st.integers(2, 64), argv=argvs)
def test_a_count_above_one_relaunches_this_very_command_under_torchrun(clean_env, count: int, argv: list[str]):
    command = launch_command(runtime(count), argv)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:6] == ["--nproc-per-node", str(count), "--standalone"]
    assert command[6:] == argv  # a script (the console entry point) runs again as itself


def test_a_package_run_with_python_m_is_relaunched_the_same_way(clean_env):
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("vgg2resnet.__main__")
    clean_env.setitem(sys.modules, "__main__", main)
    command = launch_command(runtime(2), ["/somewhere/vgg2resnet/__main__.py", "distill", "--params", "p.yaml"])
    assert command[6:] == ["-m", "vgg2resnet", "distill", "--params", "p.yaml"]


def test_a_rank_already_under_torchrun_runs_here(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    assert launch_command(runtime(2), ["vgg2resnet", "distill"]) is None


def test_several_hosts_join_the_rendezvous_given_in_the_environment(clean_env):
    clean_env.setenv("PET_RDZV_ENDPOINT", "host0:29400")
    command = launch_command(runtime(2), ["vgg2resnet", "distill"])
    assert "--standalone" not in command and command[3:5] == ["--nproc-per-node", "2"]


@pytest.fixture
def four_gpus(clean_env):
    """A mock for what this machine cannot run: a host with 4 visible GPUs."""
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "device_count", lambda: 4)


@same_env
@given(count=st.integers(5, 64))
def test_counts_follow_the_visible_gpus(four_gpus, count: int):
    assert process_count(runtime("auto")) == 4
    assert process_count(runtime(3)) == 3
    assert process_count(runtime("auto", device="cpu")) == 1  # CPU training: one process unless set
    with pytest.raises(UserError, match=f"runtime.processes is {count} but 4 GPU"):
        process_count(runtime(count))
