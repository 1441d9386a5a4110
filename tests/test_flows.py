"""Prefect flows under a real test server (prefect_test_harness), on real DVC projects."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store

from .conftest import (
    ROOT,
    TINY_PARAMS,
    make_project,
    promoted_tag,
    repo_params,
    run,
    stale_stages,
    user_params,
    write_params,
)

pytestmark = pytest.mark.slow


def _fresh_project(tmp_path: Path, images: Path, overrides: dict | None = None, **data) -> Path:
    project = make_project(tmp_path / "project", tmp_path / "remote")
    # Pruning is the session project's (tests/test_prune.py); the flows run its disabled path.
    overrides = overrides or {
        **TINY_PARAMS,
        "data": {**TINY_PARAMS["data"], "source": str(images), **data},
        "prune": {**TINY_PARAMS["prune"], "enabled": False},
    }
    write_params(project, {**overrides, "serving": {"model_name": f"flow-{tmp_path.name[-12:].replace('_', '-')}"}})
    return project


def test_migrate_flow_fails_at_validation_and_says_why(prefect_harness, tmp_path: Path, tiny_images: Path):
    from flows.migrate import migrate

    categories = json.loads(
        json.dumps(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])
    )
    project = _fresh_project(tmp_path, tiny_images, categories=categories)
    state = migrate(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "stage 'validate' failed" in state.message and "missing ['ten']" in state.message
    assert not (project / "models" / "teacher.pt").exists()


@pytest.fixture
def gpu_pool(prefect_harness, tmp_path: Path, user_folder: Path, user_teacher: dict[str, Path]):
    """A user's project (their folder, their VGG-16) whose GPU host is stood in for by a real
    `prefect worker` on a `process` pool, in a clone made from the project's bare git remote;
    both share a folder DVC remote. The pool has two deployments of `migrate-stage` from the
    project's prefect.yaml: `gpu`, and `no-cli`, whose host lacks the vgg2resnet command."""
    import prefect.settings

    pool = f"gpu-{tmp_path.name[-12:].replace('_', '-')}"
    project = _fresh_project(tmp_path, user_folder, user_params(user_folder, user_teacher))
    # The hand-off is under test here, not learning or the default list of stages: the tiny
    # recipe, on two stages.
    write_params(
        project,
        {
            "orchestration": {
                "gpu_work_pool": pool,
                "gpu_timeout_s": 600,
                "gpu_poll_s": 1,
                "gpu_stages": ["teacher", "distill"],
            },
            "distill": TINY_PARAMS["distill"],
        },
    )
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "prefect.yaml", project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "flows, and the GPU pool"], project)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["git", "push", "-q", "-u", "origin", "HEAD"], project)
    host = tmp_path / "gpu-host"
    run(["git", "clone", "-q", str(origin), str(host)], tmp_path)

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "VGG2RESNET_PROJECT_DIR": str(host),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    for command in (
        [*prefect, "work-pool", "create", pool, "--type", "process"],
        [*prefect, "deploy", "--name", "gpu", "--pool", pool],
        [
            *prefect,
            "deploy",
            "flows/migrate.py:migrate_stage",
            "--name",
            "no-cli",
            "--pool",
            pool,
            "--job-variable",
            json.dumps({"env": {"PATH": "/usr/bin:/bin"}}),
        ],
    ):
        subprocess.run(command, cwd=host, env=env, check=True, capture_output=True)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [*prefect, "worker", "start", "--pool", pool, "--type", "process"],
        cwd=host,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield {"project": project, "host": host, "log": tmp_path / "worker.log"}
    finally:
        # Killed outright: a worker asked to stop waits for its flow-run processes, and nothing
        # of theirs is kept here.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        log.close()


def _runs_on_the_pool(deployment: str) -> list[tuple[str, str]]:
    """(stage, final state) of every run of a deployment, oldest first, as the server recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.START_TIME_ASC,
        )
    return [(r.parameters["stage"], r.state.type.value) for r in runs]


def test_the_migrate_flow_trains_on_a_real_gpu_pool_worker_and_a_second_run_skips_everything(
    gpu_pool: dict, user_teacher: dict[str, Path], monkeypatch
):
    """The parent cannot train: its `vgg2resnet` refuses teacher and distill. A child that fails on
    the worker fails the parent with the child's reason; the working host then imports the
    user's teacher and distils, the parent checks both out of the run cache and promotes, and
    a second run finds everything up to date."""
    from flows.migrate import migrate

    project, host = gpu_pool["project"], gpu_pool["host"]
    real = shutil.which("vgg2resnet")
    shim = project.parent / "no-gpu-bin"
    shim.mkdir()
    (shim / "vgg2resnet").write_text(
        f'#!/bin/sh\ncase "$1" in teacher|distill) echo "no GPU on this host" >&2; exit 97;; esac\nexec {real} "$@"\n'
    )
    (shim / "vgg2resnet").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")

    write_params(project, {"orchestration": {"gpu_deployment": "migrate-stage/no-cli"}})
    run(["git", "commit", "-qam", "the host without the CLI"], project)
    state = migrate(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "stage 'teacher' on migrate-stage/no-cli ended Failed" in state.message, state.message
    assert "stage 'teacher' failed" in state.message and "vgg2resnet teacher" in state.message
    assert _runs_on_the_pool("migrate-stage/no-cli") == [("teacher", "FAILED")]
    assert not (project / "models/teacher.pt").exists()

    write_params(project, {"orchestration": {"gpu_deployment": "migrate-stage/gpu"}})
    run(["git", "commit", "-qam", "the GPU host"], project)
    start = time.perf_counter()
    ran = migrate(project_dir=str(project))
    first_s = time.perf_counter() - start
    assert list(ran) == [
        "sources",
        "prepare",
        "validate",
        "teacher",
        "distill",
        "compress",
        "prune",
        "evaluate",
        "gate",
        "package",
    ]
    assert not ran["prepare"] and not ran["validate"]  # done by the failed run, and up to date
    assert all(ran[stage] for stage in list(ran)[3:]), ran
    assert _runs_on_the_pool("migrate-stage/gpu") == [("teacher", "COMPLETED"), ("distill", "COMPLETED")]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage, output in (("teacher", "models/teacher.pt"), ("distill", "models/student.pt")):
        trained = (host / output).read_bytes()
        assert (project / output).read_bytes() == trained, output
        [recorded] = [out["md5"] for out in lock[stage]["outs"] if out["path"] == output]
        assert recorded == hashlib.md5(trained).hexdigest(), output
    assert not run(["git", "status", "--porcelain", "--untracked-files=no"], host).stdout  # left as found
    assert "before 'distill' on the GPU pool" in run(["git", "log", "-1", "--format=%s"], project).stdout
    assert stale_stages(project) == {}

    teacher = json.loads((project / "models/teacher.json").read_text())
    assert teacher["init"] == f"user checkpoint {user_teacher['checkpoint']}"
    gate = json.loads((project / "reports/gate.json").read_text())
    name = load_params(project / "params.yaml").serving.model_name
    assert gate["decision"] == "promote" and str(store.current(name).tag) == promoted_tag(project)

    start = time.perf_counter()
    again = migrate(project_dir=str(project))
    again_s = time.perf_counter() - start
    assert not any(ran for stage, ran in again.items() if stage != "sources"), again  # sources: every run
    assert len(_runs_on_the_pool("migrate-stage/gpu")) == 2  # nothing stale: nothing dispatched
    assert again_s < first_s / 2
    print(f"migrate flow on the GPU pool: {first_s:.1f} s, no-op second run {again_s:.1f} s")


def test_the_migrate_flow_on_an_unchanged_folder_retrains_nothing_and_says_there_are_no_new_images(
    prefect_harness, promoted_project: Path
):
    """What the weekly schedule and the drift trigger run, when nobody added an image since."""
    from prefect.artifacts import Artifact

    from flows.migrate import migrate

    ran = migrate(project_dir=str(promoted_project))
    names = list(ran)
    assert names[0] == "sources" and ran["sources"]  # it looks at the folder every time
    assert not any(ran[stage] for stage in names[names.index("prepare") + 1 :]), ran
    outs = yaml.safe_load((promoted_project / "dvc.lock").read_text())["stages"]["prepare"]["outs"]
    [version] = [out["md5"] for out in outs if out["path"] == "data/raw"]
    change = Artifact.get("data-change").data
    assert change.startswith(f"No new images since data version {version}: retraining would reproduce the served model")
    assert "flows.ingest" in change


def test_monitor_flow_emits_the_drift_event_once_per_cool_down(prefect_harness, served, monkeypatch):
    from flows.monitor import monitor

    monkeypatch.chdir(served["project"])
    params = load_params("params.yaml")
    since = datetime.now(UTC)
    send_traffic(params, served["url"], 40, corruption="blur", severity=5)
    summary = monitor(project_dir=str(served["project"]), since=since)
    assert summary["drift_detected"] and summary["event_id"]
    marker = json.loads((served["project"] / params.monitoring.report_dir / "last_event.json").read_text())
    assert marker["event_id"] == summary["event_id"]
    again = monitor(project_dir=str(served["project"]), since=since)
    assert again["drift_detected"] and again["event_id"] is None  # the same episode: no second retraining


def test_monitors_judging_drift_at_once_emit_one_event(prefect_harness, tmp_path: Path, monkeypatch):
    from vgg2resnet.monitoring.monitor import emit_drift_event

    monkeypatch.chdir(tmp_path)
    params = repo_params({"monitoring": {"report_dir": str(tmp_path / "drift")}})
    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(lambda _: emit_drift_event({"model_tag": "at-once:1"}, params), range(6)))
    assert len([event for event in ids if event is not None]) == 1, ids


def test_ingest_twice_makes_one_version_and_a_new_drop_another(prefect_harness, tmp_path: Path, tiny_images: Path):
    from flows.ingest import ingest

    from .conftest import make_image_folder

    project = _fresh_project(tmp_path, tiny_images, source="data/incoming")
    run(["git", "commit", "-qam", "use data/incoming"], project)
    commits = lambda: int(run(["git", "rev-list", "--count", "HEAD"], project).stdout)  # noqa: E731
    before = commits()
    first = ingest(drop=str(tiny_images), project_dir=str(project))
    assert first["new_version"] and first["new_images"] == 120 and first["version"].endswith(".dir")
    assert commits() == before + 1
    assert first["version"] in run(["git", "log", "-1", "--format=%s"], project).stdout
    assert (project / "data/prepared/manifest.parquet").is_file()  # prepare ran on the new version

    again = ingest(drop=str(tiny_images), project_dir=str(project))
    assert again == {"version": first["version"], "new_images": 0, "new_version": False}
    assert commits() == before + 1

    more = make_image_folder(tmp_path / "more", per_category=14)  # 2 new images per category
    third = ingest(drop=str(more), project_dir=str(project))
    assert third["new_version"] and third["new_images"] == 20 and third["version"] != first["version"]
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "data/incoming.dvc"], clone)
    assert sum(1 for p in (clone / "data/incoming").rglob("*.png")) == 140
