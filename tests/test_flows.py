"""Prefect flows under a real test server (prefect_test_harness), on real DVC projects."""

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store

from .conftest import TINY_PARAMS, make_project, promoted_tag, run, user_params, write_params

pytestmark = pytest.mark.slow


def _fresh_project(tmp_path: Path, images: Path, overrides: dict | None = None, **data) -> Path:
    project = make_project(tmp_path / "project", tmp_path / "remote")
    overrides = overrides or {**TINY_PARAMS, "data": {**TINY_PARAMS["data"], "source": str(images), **data}}
    write_params(project, {**overrides, "serving": {"model_name": f"flow-{tmp_path.name[-12:].replace('_', '-')}"}})
    return project


def test_migrate_flow_brings_the_users_teacher_to_a_promoted_model_and_a_second_run_skips_everything(
        prefect_harness, tmp_path: Path, user_folder: Path, user_teacher: dict[str, Path]):
    from flows.migrate import migrate

    project = _fresh_project(tmp_path, user_folder, user_params(user_folder, user_teacher))
    start = time.perf_counter()
    first = migrate(project_dir=str(project))
    first_s = time.perf_counter() - start
    assert list(first) == ["prepare", "validate", "teacher", "distill", "compress", "evaluate", "gate", "package"]
    assert all(first.values())
    teacher = json.loads((project / "models/teacher.json").read_text())
    assert teacher["init"] == f"user checkpoint {user_teacher['checkpoint']}"
    gate = json.loads((project / "reports/gate.json").read_text())
    name = load_params(project / "params.yaml").serving.model_name
    assert gate["decision"] == "promote" and str(store.current(name).tag) == promoted_tag(project)
    assert "changed" not in run(["dvc", "status"], project).stdout.lower()

    start = time.perf_counter()
    second = migrate(project_dir=str(project))
    second_s = time.perf_counter() - start
    assert not any(second.values()), second
    assert second_s < first_s / 2
    print(f"migrate flow: first run {first_s:.1f} s, no-op second run {second_s:.1f} s")


def test_migrate_flow_fails_at_validation_and_says_why(prefect_harness, tmp_path: Path, tiny_images: Path):
    from flows.migrate import migrate

    categories = json.loads(json.dumps(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                        "eight", "nine", "ten"]))
    project = _fresh_project(tmp_path, tiny_images, categories=categories)
    state = migrate(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "stage 'validate' failed" in state.message and "missing ['ten']" in state.message
    assert not (project / "models" / "teacher.pt").exists()


def test_a_gpu_stage_runs_on_a_worker_checkout_and_comes_back_through_dvc(prefect_harness, monkeypatch,
                                                                          tmp_path: Path, tiny_images: Path):
    """No GPU work pool can run here, so run_deployment (the hand-off to the pool) is replaced by a
    stand-in that does what a process worker would: it runs the GPU deployment's own flow,
    `migrate-stage`, as a real Prefect flow run in a separate clone of the repository (on the
    CPU). Everything else is real: the parent's push of upstream outputs and commit of
    dvc.lock, the worker's checkout, pull, training and push, and the parent taking the result
    from DVC's run cache, with `vgg2resnet` taken off its PATH so that it cannot train itself."""
    import flows.migrate as module

    project = _fresh_project(tmp_path, tiny_images)
    run(["git", "commit", "-qam", "params"], project)
    worker = tmp_path / "worker"
    run(["git", "clone", "-q", str(project), str(worker)], tmp_path)
    for stage in ("prepare", "validate"):
        assert module.run_stage.fn(stage, str(project))
    calls = []

    def stand_in(name: str, parameters: dict, timeout: int, poll_interval: int):
        calls.append({"name": name, "parameters": parameters})
        state = module.migrate_stage(**parameters, project_dir=str(worker), return_state=True)
        bin_dir = str(Path(sys.executable).parent)
        monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir))
        return SimpleNamespace(state=state)

    monkeypatch.setattr(module, "run_deployment", stand_in)
    assert module.run_stage_on_gpu.fn("teacher", str(project), "migrate-stage/gpu", 3600)
    revision = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert calls == [{"name": "migrate-stage/gpu", "parameters": {"stage": "teacher", "revision": revision}}]
    assert "before 'teacher' on the GPU pool" in run(["git", "log", "-1", "--format=%s"], project).stdout
    assert run(["git", "rev-parse", "HEAD"], worker).stdout.strip() == revision
    assert (project / "models/teacher.pt").read_bytes() == (worker / "models/teacher.pt").read_bytes()
    lock, worker_lock = (yaml.safe_load((p / "dvc.lock").read_text())["stages"]["teacher"] for p in (project, worker))
    assert lock == worker_lock


def test_monitor_flow_emits_the_drift_event_once_per_cool_down(prefect_harness, served, monkeypatch):
    from flows.monitor import monitor

    monkeypatch.chdir(served["project"])
    params = load_params("params.yaml")
    since = datetime.now(timezone.utc)
    send_traffic(params, served["url"], 40, corruption="blur", severity=5)
    summary = monitor(project_dir=str(served["project"]), since=since)
    assert summary["drift_detected"] and summary["event_id"]
    marker = json.loads((served["project"] / params.monitoring.report_dir / "last_event.json").read_text())
    assert marker["event_id"] == summary["event_id"]
    again = monitor(project_dir=str(served["project"]), since=since)
    assert again["drift_detected"] and again["event_id"] is None  # the same episode: no second retraining


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
