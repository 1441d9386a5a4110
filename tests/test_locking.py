"""One run at a time per project: a second run stops naming the first, the processes a run
starts share its lock, and a killed run leaves the lock free."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vgg2resnet.config import UserError
from vgg2resnet.locking import exclusive

from .conftest import ROOT

HOLD = """
import subprocess, sys, time
from vgg2resnet.locking import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    if sys.argv[2] == "child":  # a process this run starts, as `dvc repro` starts a stage command
        child = ("from vgg2resnet.locking import exclusive\\n"
                 "with exclusive(__import__('sys').argv[1]): print('child ran')")
        print(subprocess.run([sys.executable, "-c", child, sys.argv[1]], capture_output=True, text=True).stdout)
    else:
        time.sleep(600)
"""


def _holder(lock: Path, mode: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_stops_naming_the_first_and_a_killed_run_frees_the_lock(tmp_path: Path):
    lock = tmp_path / "run.lock"
    holder = _holder(lock, "sleep")
    try:
        with pytest.raises(UserError, match=rf"pid {holder.pid}.* is running in this project"), exclusive(lock):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with exclusive(lock):  # the kernel released it with the process
        pass


def test_the_processes_a_run_starts_share_its_lock(tmp_path: Path):
    holder = _holder(tmp_path / "run.lock", "child")
    assert "child ran" in holder.communicate(timeout=60)[0]
    assert holder.returncode == 0


def test_two_stage_commands_started_together_run_one_at_a_time(tmp_path: Path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    command = [str(Path(sys.executable).with_name("vgg2resnet")), "prepare"]
    runs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "400"},
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], outputs
    refused = next(err for run, (_, err) in zip(runs, outputs) if run.returncode == 2)
    assert "vgg2resnet prepare" in refused and "is running in this project" in refused
    # Once the first is done, the lock is free again.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
