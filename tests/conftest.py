"""Shared fixtures: a temporary git+DVC copy of the project and small image trees."""

from __future__ import annotations

import atexit
import configparser
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

import vgg2resnet  # noqa: F401 - importing it turns the libraries' telemetry off

ROOT = Path(__file__).resolve().parents[1]
# Generated inputs, reproducible and bounded: the same examples on every run, no example
# database written into the checkout, no per-example deadline on a loaded 2-core machine.
settings.register_profile("vgg2resnet", derandomize=True, database=None, deadline=None)
settings.load_profile("vgg2resnet")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# The xdist workers share the cores with the stages and servers the tests start: one math
# thread per process (torch reads this when it is first imported, after this file; child
# processes inherit it). With torch's default of one thread per core, two trainings side by side
# took three times as long as with one thread each on this 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A BentoML model store of the test session's own, never the developer's (set before bentoml loads).
# Removed at exit: each session's store holds hundreds of MB of models.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="vgg2resnet-bentoml-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)


# Under pytest-xdist (`--dist loadgroup`), the tests that need one of these costly fixtures run
# on the same worker, in file order: each is built once, and the tests that change a shared
# project and put it back never overlap. The first matching fixture names the group.
SHARED_FIXTURES = {
    "distilled_project": "session-project",
    "user_project": "user-path",
    "source_project": "source-changes",
    "prefect_harness": "prefect-server",
}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores this process may use. Much of a test's time is
    spent waiting (a stage's or a server's start-up, DVC, the network stack), and with one math
    thread per process a third worker fills that idle time on two cores."""
    from vgg2resnet.data.loaders import available_cpus

    return available_cpus() + 1


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the markers into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for name, g in SHARED_FIXTURES.items() if name in item.fixturenames), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stale_stages(project: Path) -> dict:
    """What `dvc status` finds out of date, less the `sources` stage, which runs on every `dvc
    repro` by design and which DVC therefore always reports as "always changed"."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    return {stage: reasons for stage, reasons in status.items() if reasons != ["always changed"]}


def merge(base: dict, extra: dict) -> dict:
    """Merge extra (nested dicts) into base, in place; return base."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_params(project: Path, overrides: dict) -> Path:
    """Merge overrides (nested dicts) into the project's params.yaml."""
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), overrides), sort_keys=False))
    return path


def repo_params(overrides: dict | None = None):
    """The repository's params.yaml with overrides merged in: every setting given, as a stage sees it."""
    from vgg2resnet.config import Params

    return Params.model_validate(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides or {}))


def dvc_cache_type() -> str:
    """The repository's own cache.type (data/raw linked to the cache, not copied), so that
    test projects store data as a clone of it does."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config["cache"]["type"].strip('"')


def dvc_directory_md5(folder: Path) -> str:
    """DVC's hash of a folder, computed here from its files: the md5 of the JSON list of each
    file's md5 and path, sorted by path (DVC 3's `.dir` object, which it names by that md5)."""
    import hashlib

    listing = sorted(
        (
            {"md5": hashlib.md5(path.read_bytes()).hexdigest(), "relpath": path.relative_to(folder).as_posix()}
            for path in folder.rglob("*")
            if path.is_file()
        ),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def make_project(dest: Path, remote: Path) -> Path:
    """A git+DVC repository holding this project's pipeline files, with a local remote."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("src", "services"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".gitignore").write_text("__pycache__/\n")
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], dest)
    run(["dvc", "config", "cache.type", dvc_cache_type()], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", tmp_path / "remote")


def make_image_folder(root: Path, per_category: int, categories: list[str] | None = None, size: int = 32) -> Path:
    """An ImageFolder tree cut from the demo digits: per_category images of each category."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from vgg2resnet.data.digits import DEMO_CATEGORIES

    digits = load_digits()
    names = categories or DEMO_CATEGORIES
    counts = {name: 0 for name in names}
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        name = names[target] if target < len(names) else None
        if name is None or counts[name] >= per_category:
            continue
        pixels = (255 - image * 255 / 16).clip(0, 255).astype("uint8")
        picture = Image.fromarray(pixels, mode="L").resize((size, size)).convert("RGB")
        (root / name).mkdir(parents=True, exist_ok=True)
        picture.save(root / name / f"{index:04d}.png")
        counts[name] += 1
    return root


# Tiny but real: the torchvision VGG-16 and ResNet-50 on 32 px digits, a few steps each.
TINY_PARAMS = {
    "data": {"split": {"val": 0.2, "test": 0.3}},
    "validation": {"min_images_per_category": 3},
    "teacher": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16},
    "distill": {
        "epochs": 2,
        "max_steps_per_epoch": 2,
        "batch_size": 16,
        "cache_views": 2,
        "cache_check_fraction": 0.05,
    },
    "prune": {"epochs": 1},
    "evaluate": {"batch_size": 32, "latency_batch_size": 4, "latency_warmup": 1, "latency_runs": 3},
    # Models trained for a few steps are near chance: a permissive policy lets them through,
    # so the stages after the gate have a promoted model; tests/test_gate.py tightens it. That
    # includes the regression check: tests that promote again leave a version whose near-chance
    # top-1 a later candidate may happen to trail.
    "gate": {
        "max_accuracy_drop": 100.0,
        "max_category_drop": 100.0,
        "max_latency_ratio": 100.0,
        "max_regression": 100.0,
        "bootstrap_samples": 200,
        "min_teacher_margin": None,
    },
    "monitoring": {"min_rows": 20, "traffic_requests": 40, "retain_fraction": 1.0},
    # A worker costs more to start than it saves on 50 tiny images; tests with workers set them.
    "runtime": {"num_workers": 0},
}


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "digits", per_category=12)


@pytest.fixture(scope="session")
def distilled_project(tmp_path_factory, tiny_images: Path) -> Path:
    """A git+DVC project whose `dvc repro distill` ran on the tiny digits: a session's one
    teacher and student, shared by every test that only reads them."""
    base = tmp_path_factory.mktemp("pipeline")
    project = make_project(base / "project", base / "remote")
    write_params(project, {**TINY_PARAMS, "data": {**TINY_PARAMS["data"], "source": str(tiny_images)}})
    run(["dvc", "repro", "distill"], project)
    return project


@pytest.fixture(scope="session")
def promoted_project(distilled_project: Path) -> Path:
    """The session project after the whole `dvc repro`: evaluated, gated, promoted and packaged."""
    run(["dvc", "repro"], distilled_project)
    return distilled_project


def classify_files(url: str, raw_dir: Path, paths, batch: int = 16) -> list[dict]:
    """The service's answers for these images of data/raw, sent as they were in the user's
    folder, `batch` per request."""
    import requests

    from .userdata import stored_images

    answers, stored = [], stored_images(raw_dir)
    paths = list(paths)
    for start in range(0, len(paths), batch):
        files = [("images", (Path(p).name, stored[p])) for p in paths[start : start + batch]]
        answer = requests.post(f"{url}/classify_batch", files=files, timeout=120)
        assert answer.status_code == 200, answer.text
        answers += answer.json()
    return answers


def promoted_tag(project: Path) -> str:
    """The model-store tag that the project's `package` stage promoted."""
    return json.loads((project / "reports/package.json").read_text())["model_tag"]


@pytest.fixture(scope="session")
def served(promoted_project: Path, tmp_path_factory):
    """A real `bentoml serve` of the session's promoted model on 127.0.0.1; the inference log
    lands in the project's monitoring folder, where `vgg2resnet monitor` reads it."""
    from vgg2resnet.serving.server import local_server

    tag = promoted_tag(promoted_project)
    with local_server(
        tag, cwd=promoted_project, project_root=ROOT, params_file=promoted_project / "params.yaml"
    ) as url:
        yield {"url": url, "tag": tag, "project": promoted_project}


@pytest.fixture(scope="session")
def user_folder(tmp_path_factory) -> Path:
    """A user's own photos: nested JPEGs of four colours, junk files and two broken JPEGs."""
    from .userdata import make_user_folder

    return make_user_folder(tmp_path_factory.mktemp("user") / "photos")


@pytest.fixture(scope="session")
def user_teacher(tmp_path_factory) -> dict[str, Path]:
    """A user's plain torchvision vgg16 state_dict and its categories file, in its own output order."""
    import torch

    from .userdata import TEACHER_ORDER, make_colour_teacher

    folder = tmp_path_factory.mktemp("teacher")
    torch.save(make_colour_teacher(TEACHER_ORDER), folder / "vgg16-colours.pt")
    (folder / "categories.json").write_text(json.dumps(TEACHER_ORDER))
    return {"checkpoint": folder / "vgg16-colours.pt", "categories_file": folder / "categories.json"}


def user_params(images: Path, teacher: dict[str, Path], **gate) -> dict:
    """TINY_PARAMS for a user's folder (broken files skipped) and imported teacher."""
    from .userdata import IMAGE_SIZE

    return {
        **TINY_PARAMS,
        "data": {**TINY_PARAMS["data"], "source": str(images), "on_undecodable": "skip"},
        "teacher": {
            **TINY_PARAMS["teacher"],
            "arch": "vgg16",
            "checkpoint": str(teacher["checkpoint"]),
            "categories_file": str(teacher["categories_file"]),
            "image_size": IMAGE_SIZE,
        },
        # Enough steps for the student to learn the colours (100 % test top-1 here), so the
        # repository's gate policy has a real student to promote: 36 steps, about 10 s more.
        "distill": {**TINY_PARAMS["distill"], "image_size": IMAGE_SIZE, "epochs": 6, "max_steps_per_epoch": 6},
        # The session project covers pruning; here the stage takes its prune.enabled: false path.
        "prune": {**TINY_PARAMS["prune"], "enabled": False},
        "gate": {**TINY_PARAMS["gate"], "min_teacher_margin": 20.0, **gate},
    }


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session; every flow call happens inside it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
