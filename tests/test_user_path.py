"""The path every user takes first: their own image folder and their own VGG-16, through `dvc repro`
from a fresh repository, exactly as docs/distillation.md ("Bring your own VGG-16") and docs/data.md say."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from vgg2resnet.config import load_params
from vgg2resnet.monitoring.health import teacher_agreement
from vgg2resnet.monitoring.monitor import read_inference_log
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store

from .conftest import make_project, run, stale_stages, user_params, write_params
from .userdata import BROKEN_FILES, TEACHER_ORDER, content_hashes, shuffled, stored_images

pytestmark = pytest.mark.slow
MODEL_NAME = "user-path"
SHIFT = ("contrast", 5)  # colours washed out to grey: the one thing these categories are made of


@pytest.fixture(scope="module")
def user_project(tmp_path_factory, user_folder: Path, user_teacher: dict[str, Path]) -> dict:
    """`dvc repro` of a fresh project on the user's folder and teacher, with the default gate policy."""
    base = tmp_path_factory.mktemp("user-path")
    project = make_project(base / "project", base / "remote")
    defaults = yaml.safe_load((project / "params.yaml").read_text())["gate"]
    write_params(
        project,
        {
            **user_params(user_folder, user_teacher, **{**defaults, "bootstrap_samples": 200}),
            "serving": {"model_name": MODEL_NAME},
        },
    )
    before = content_hashes(user_folder)
    repro = run(["dvc", "repro"], project)
    return {"project": project, "repro": repro.stdout, "before": before}


def test_every_stage_runs_on_the_users_folder_and_teacher(user_project: dict, user_teacher: dict[str, Path]):
    project = user_project["project"]
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in user_project["repro"], stage
    assert stale_stages(project) == {}

    teacher = json.loads((project / "models/teacher.json").read_text())
    assert teacher["init"] == f"user checkpoint {user_teacher['checkpoint']}" and teacher["arch"] == "vgg16"
    # The data's categories follow the teacher's outputs, not the folder listing.
    assert teacher["categories"] == TEACHER_ORDER != sorted(TEACHER_ORDER)
    saved = torch.load(project / "models/teacher.pt", weights_only=True)["state_dict"]
    given = torch.load(user_teacher["checkpoint"], weights_only=True)
    assert saved.keys() == given.keys() and all(torch.equal(saved[k], given[k]) for k in given)
    metrics = json.loads((project / "metrics/teacher/metrics.json").read_text())
    assert metrics["val_accuracy"] == 100.0 and metrics["val_majority_baseline"] < 40.0
    assert not (project / "metrics/teacher/plots").exists()  # imported: no curves, and none faked


def test_broken_files_are_skipped_and_named_by_their_path_in_the_users_folder(user_project: dict, user_folder: Path):
    project = user_project["project"]
    expected = {str(user_folder / name) for name in BROKEN_FILES}
    assert {entry["path"] for entry in json.loads((project / "data/prepared/skipped.json").read_text())} == expected
    result = json.loads((project / "reports/validation/result.json").read_text())
    assert result["summary"]["passed"] and result["summary"]["warnings"] >= 1
    [skipped] = [p for p in result["summary"]["problems"] if p["check"] == "skipped_undecodable"]
    assert skipped["severity"] == "warn" and set(skipped["offending"]) == expected
    docs = "".join(p.read_text(errors="replace") for p in (project / "reports/validation/docs").rglob("*.html"))
    assert all(path in docs for path in expected)
    raw = {path for path in stored_images(project / "data/raw") if path.endswith(".jpg")}
    assert not raw & BROKEN_FILES and len(raw) == 4 * 24


def test_the_users_folder_is_unchanged(user_project: dict, user_folder: Path):
    assert content_hashes(user_folder) == user_project["before"]


def test_the_repositorys_policy_promotes_a_student_that_learnt_and_it_serves_what_it_scored(
    user_project: dict, monkeypatch
):
    """Promotion under the repository's own gate policy, of a student well above chance, HTTP
    answers equal to the offline evaluation on a model whose answers mean something, and the
    teacher-agreement alert firing when the answers stop agreeing with the teacher."""
    from vgg2resnet.serving.server import local_server

    from .conftest import ROOT, classify_files

    project = user_project["project"]
    gate = json.loads((project / "reports/gate.json").read_text())
    assert gate["decision"] == "promote", [c for c in gate["checks"] if not c["passed"]]
    assert all(c["reason"] for c in gate["checks"])
    metrics = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert metrics[gate["variant"]]["top1"] >= 90.0  # four categories: chance is 25 %
    margin = next(c for c in gate["checks"] if c["name"].endswith("teacher_margin"))
    assert margin["passed"] and margin["value"] >= 50.0
    package = json.loads((project / "reports/package.json").read_text())
    assert package["packaged"] and package["variant"] == gate["variant"]
    assert [str(m.tag) for m in store.promoted_versions(MODEL_NAME)] == [package["model_tag"]]

    manifest = pd.read_parquet(project / "data/prepared/manifest.parquet")
    test = manifest[manifest["split"] == "test"].sort_values("path")
    categories = json.loads((project / "data/prepared/categories.json").read_text())
    offline = pd.read_parquet(project / "metrics/evaluate/predictions.parquet")[gate["variant"]]
    since = datetime.now(UTC)
    with local_server(package["model_tag"], cwd=project, project_root=ROOT, params_file=project / "params.yaml") as url:
        served = [answer["category"] for answer in classify_files(url, project / "data/raw", test["path"])]
        shifted = datetime.now(UTC)
        monkeypatch.chdir(project)
        params = load_params("params.yaml")
        send_traffic(params, url, len(test), corruption=SHIFT[0], severity=SHIFT[1])
    assert served == [categories[i] for i in offline]
    assert (pd.Series(served).to_numpy() == test["category"].to_numpy()).mean() >= 0.9

    # The teacher-agreement alert on what the service kept (retain_fraction 1.0 in the tests),
    # judged by the repository's policy: quiet on the clean window, firing on the shifted one,
    # and firing for a model that answers the next category every time (never the teacher's).
    kept = read_inference_log(params.monitoring.log_dir, since=since, until=shifted).rows
    assert len(kept) == len(test) and kept["retained_image"].astype(bool).all()
    honest = teacher_agreement(kept, params)
    assert honest["agreement"] >= 90.0 and not honest["alert"], honest
    corrupted = teacher_agreement(read_inference_log(params.monitoring.log_dir, since=shifted).rows, params)
    print(f"teacher agreement: clean {honest['agreement']:.1f} %, {SHIFT} {corrupted['agreement']:.1f} %")
    assert corrupted["sampled"] == len(test) and corrupted["alert"], corrupted
    following = {c: categories[(i + 1) % len(categories)] for i, c in enumerate(categories)}
    wrong = teacher_agreement(kept.assign(prediction=kept["prediction"].map(following)), params)
    assert wrong["agreement"] <= 10.0 and wrong["drop"] > params.monitoring.max_agreement_drop
    assert wrong["alert"], wrong


def _stage(project: Path, stage: str) -> tuple[dict, str]:
    result = run(["vgg2resnet", stage], project)
    return json.loads(result.stdout), result.stderr


def test_a_categories_file_in_the_wrong_order_is_named_before_distillation(
    user_project: dict, user_teacher: dict[str, Path], tmp_path: Path
):
    project = user_project["project"]
    swapped = list(TEACHER_ORDER)
    swapped[0], swapped[2] = swapped[2], swapped[0]
    (tmp_path / "categories.json").write_text(json.dumps(swapped))
    write_params(project, {"teacher": {"categories_file": str(tmp_path / "categories.json")}})
    try:
        _stage(project, "prepare")
        result, log = _stage(project, "teacher")
        assert set(result["val_at_or_below_chance"]) == {TEACHER_ORDER[0], TEACHER_ORDER[2]}
        text = " ".join(log.split())  # the log handler wraps long lines
        warning = text[text.index("at or below chance") : text.index("wrong order")]
        assert set(re.findall(r"'(\w+)' [\d.]+%", warning)) == {TEACHER_ORDER[0], TEACHER_ORDER[2]}
    finally:
        write_params(project, {"teacher": {"categories_file": str(user_teacher["categories_file"])}})


def test_a_teacher_that_knows_nothing_makes_the_gate_fail_closed(
    user_project: dict, user_teacher: dict[str, Path], tmp_path: Path
):
    project = user_project["project"]
    torch.save(shuffled(torch.load(user_teacher["checkpoint"], weights_only=True)), tmp_path / "shuffled.pt")
    write_params(project, {"teacher": {"checkpoint": str(tmp_path / "shuffled.pt")}})
    before = [str(m.tag) for m in store.promoted_versions(MODEL_NAME)]
    try:
        _stage(project, "prepare")
        _, log = _stage(project, "teacher")
        assert "the gate will refuse this teacher" in " ".join(log.split())
        _stage(project, "evaluate")
        result, _ = _stage(project, "gate")
        packaged, _ = _stage(project, "package")
    finally:
        write_params(project, {"teacher": {"checkpoint": str(user_teacher["checkpoint"])}})
    assert result["decision"] == "reject" and "teacher_margin" in result["failed"]
    assert not packaged["packaged"] and packaged["model_tag"] is None
    gate = json.loads((project / "reports/gate.json").read_text())
    reasons = [c["reason"] for c in gate["checks"] if c["name"].endswith("teacher_margin")]
    assert reasons and all("majority-class baseline" in r and "teacher.categories_file" in r for r in reasons)
    assert [str(m.tag) for m in store.promoted_versions(MODEL_NAME)] == before
