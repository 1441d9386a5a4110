"""The promotion gate: each check on constructed predictions, fail-closed inputs, and promotion
into a real BentoML model store (the test session's own BENTOML_HOME)."""

import ast
import contextlib
import hashlib
import html
import inspect
import io
import json
import math
import re
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import vgg2resnet
from vgg2resnet.artifacts import Artifacts, StoreLayout
from vgg2resnet.cli import app
from vgg2resnet.config import FP32_FORM, VARIANTS, GateParams, UserError, load_params
from vgg2resnet.gate.policy import (
    accuracy_parity,
    category_drops,
    evaluate_policy,
    holm,
    paired_bootstrap,
    teacher_margin,
)
from vgg2resnet.packaging import store
from vgg2resnet.stages import gate, package

from .conftest import ROOT, dvc_directory_md5, promoted_tag, repo_params, run, write_params
from .userdata import stored_images


def gate_params(**overrides) -> GateParams:
    """The repository's gate policy, with the drop limits these constructed cases were sized for."""
    return repo_params({"gate": {"max_accuracy_drop": 1.0, "max_category_drop": 10.0, **overrides}}).gate


GATE = gate_params(bootstrap_samples=1000)


def _predictions(n: int, teacher_right: int, student_right: int) -> pd.DataFrame:
    """Two balanced categories; each model is right on its first *_right images."""
    labels = np.arange(n) % 2
    teacher = np.where(np.arange(n) < teacher_right, labels, 1 - labels)
    student = np.where(np.arange(n) < student_right, labels, 1 - labels)
    return pd.DataFrame(
        {"label": labels, "category": np.where(labels == 0, "a", "b"), "teacher": teacher, "pytorch_fp32": student}
    )


def _report(student_top1=95.0, teacher_top1=95.0, size_mb=94.0, teacher_mb=537.0, latency=0.5) -> dict:
    return {
        "teacher": {"top1": teacher_top1, "size_mb": teacher_mb},
        "candidates": {
            "pytorch_fp32": {
                "top1": student_top1,
                "size_mb": size_mb,
                "fp32_agreement": 100.0,
                "size_ratio": size_mb / teacher_mb,
                "cpu_latency_ratio": latency,
            }
        },
    }


def _by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_accuracy_parity_passes_an_equal_student_on_a_large_test_set():
    check = accuracy_parity(_predictions(2000, 1900, 1900), GATE)
    assert check.passed and check.value == pytest.approx(0.0, abs=1e-9)


def test_accuracy_parity_fails_a_clearly_worse_student():
    check = accuracy_parity(_predictions(2000, 1900, 1800), GATE)
    assert not check.passed and "-5.00 pt" in check.reason


def test_bootstrap_bound_rejects_a_lucky_point_estimate_on_a_tiny_test_set():
    # 20 images, student one image worse: point -5 pt is within a 10 pt allowance, but with
    # 20 paired samples the 95% lower bound is far below it.
    predictions = _predictions(20, 19, 18)
    point, lower = paired_bootstrap(
        (predictions.pytorch_fp32 == predictions.label).to_numpy(),
        (predictions.teacher == predictions.label).to_numpy(),
        1000,
        0.95,
        0,
    )
    assert point == pytest.approx(-5.0)
    check = accuracy_parity(predictions, gate_params(max_accuracy_drop=10.0, bootstrap_samples=1000))
    assert lower < -10.0 and not check.passed


@given(
    n=st.integers(50, 600),
    student_only=st.floats(0, 0.3),
    teacher_only=st.floats(0, 0.2),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
@settings(max_examples=15)
def test_the_bootstrap_bound_is_that_of_resampling_the_images(
    n: int, student_only: float, teacher_only: float, confidence: float
):
    """Drawn as counts, the resamples have the distribution of resampled images: the bounds of
    both ways agree within their Monte-Carlo error and one step of the mean (1/n)."""
    rng = np.random.default_rng(n)
    kinds = rng.choice(4, n, p=[student_only, teacher_only, 0.5, 0.5 - student_only - teacher_only])
    student, teacher = np.isin(kinds, [0, 2]), np.isin(kinds, [1, 2])
    _, lower = paired_bootstrap(student, teacher, 20_000, confidence, seed=1)
    diff = student.astype(float) - teacher
    means = diff[rng.integers(0, n, size=(20_000, n))].mean(axis=1)
    assert lower == pytest.approx(
        100 * np.quantile(means, 1 - confidence), abs=100 * (0.2 * diff.std() / n**0.5 + 1 / n)
    )


def test_parity_says_how_often_an_equal_student_passes_on_this_split_and_what_split_would_do():
    """2,000 paired images, 200 on which exactly one model is right (10%), margin 1 pt: the
    difference's standard error is sqrt(0.1 / 2000) = 0.71 pt, so an equal student passes with
    P(Z > 1.645 - 1 / 0.71) = 41%; 0.1 x (2 x 1.645 / 0.01)^2 = 10,823 images would make it 95%."""
    check = accuracy_parity(
        _predictions(2000, 1900, 1900).assign(
            pytorch_fp32=lambda f: np.where(np.arange(2000) < 100, 1 - f.label, f.label)
        ),
        GATE,
    )
    assert check.details["disagreement"] == pytest.approx(0.1)
    assert check.details["equal_student_passes"] == pytest.approx(0.41, abs=0.01)
    assert check.details["images_for_confidence"] == 10823
    assert "passes about 41% of the time (about 10823 paired test images would make it 95%)" in check.reason


def test_a_student_better_than_the_teacher_is_said_to_be():
    check = accuracy_parity(_predictions(500, 400, 450), GATE)
    assert check.passed and "+10.00 pt" in check.reason


@pytest.mark.parametrize(
    "report, failing",
    [
        (_report(), set()),
        (_report(size_mb=130.0, teacher_mb=1000.0), {"size_mb"}),
        (_report(size_mb=100.0, teacher_mb=200.0), {"size_ratio"}),
        (_report(latency=1.5), {"latency_ratio"}),
        (_report(size_mb=float("nan")), {"size_mb", "size_ratio"}),
    ],
)
def test_each_threshold_check(report, failing):
    checks = evaluate_policy(report, _predictions(500, 450, 450), GATE, promoted_top1=None)
    assert {c.name for c in checks if not c.passed} == failing
    for check in checks:
        assert check.reason  # every check says why


# Per-category drops on generated paired predictions. Each image is one of four outcomes:
# both right, only the teacher right, only the student right, both wrong.
OUTCOMES = {"both": (True, True), "teacher": (True, False), "student": (False, True), "neither": (False, False)}


def _paired(categories: dict[str, list[str]]) -> pd.DataFrame:
    """Predictions with, per category name, the given outcomes (a wrong answer is another label)."""
    rows = []
    for label, (name, outcomes) in enumerate(categories.items()):
        for outcome in outcomes:
            teacher_right, student_right = OUTCOMES[outcome]
            rows.append(
                {
                    "label": label,
                    "category": name,
                    "teacher": label if teacher_right else label + 1,
                    "pytorch_fp32": label if student_right else label + 1,
                }
            )
    return pd.DataFrame(rows)


def _outcome_lists(outcomes=tuple(OUTCOMES), max_images=40):
    return st.lists(st.sampled_from(outcomes), min_size=1, max_size=max_images)


def _category_sets(outcomes=tuple(OUTCOMES)):
    return st.dictionaries(
        st.text("abcdefghij", min_size=1, max_size=6), _outcome_lists(outcomes), min_size=1, max_size=12
    )


def _failed(check) -> set[str]:
    return {row["category"] for row in check.details["failed"]}


@settings(max_examples=60)
@given(categories=_category_sets(("both", "neither")))
def test_a_student_identical_to_the_teacher_never_fails_a_category(categories):
    check = category_drops(_paired(categories), GATE)
    assert check.passed and not _failed(check)


@settings(max_examples=60)
@given(others=_category_sets(), extra=st.integers(0, 30), data=st.data())
def test_a_student_that_loses_a_whole_large_category_always_fails_and_it_is_named(others, extra, data):
    """Wrong on every image of one category that the teacher gets right; the category is large
    enough that the loss is significant even at Holm's first step (2^-n < alpha / K)."""
    lost = data.draw(st.text("klmnop", min_size=1, max_size=6))
    count = len(others) + 1
    images = math.floor(math.log2(count / (1 - GATE.confidence))) + 1 + extra
    check = category_drops(_paired({**others, lost: ["teacher"] * images}), GATE)
    assert not check.passed and lost in _failed(check) and lost in check.reason
    assert all(row["drop_pt"] > GATE.max_category_drop for row in check.details["failed"])


@settings(max_examples=60)
@given(categories=_category_sets(), seed=st.integers(0, 2**16))
def test_the_per_category_verdict_does_not_depend_on_the_order_of_categories(categories, seed):
    names = list(categories)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    first = category_drops(_paired(categories), GATE)
    second = category_drops(_paired({name: categories[name] for name in shuffled}), GATE)
    assert first.passed == second.passed and _failed(first) == _failed(second)
    assert first.value == second.value


@settings(max_examples=60)
@given(categories=_category_sets(), agreeing=_category_sets(("both", "neither")))
def test_categories_where_both_models_agree_never_turn_a_pass_into_a_fail(categories, agreeing):
    before = category_drops(_paired(categories), GATE)
    extra = {f"agree-{name}": outcomes for name, outcomes in agreeing.items()}
    after = category_drops(_paired({**categories, **extra}), GATE)
    assert after.passed or not before.passed
    assert _failed(after) <= _failed(before)


@settings(max_examples=100)
@given(p_values=st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_holm_adjusts_p_values_as_statsmodels_does(p_values):
    from unittest import mock

    from statsmodels.stats.multitest import multipletests

    # multipletests ends with gc.collect(), a fifth of a second per call in a worker's heap of
    # models; skipping it changes no value.
    with mock.patch("gc.collect", return_value=0):
        expected = multipletests(p_values, method="holm")[1]
    assert holm(np.array(p_values)) == pytest.approx(expected, abs=1e-12)


def test_a_category_too_small_to_judge_is_listed_with_the_images_it_would_need():
    # 10 categories, alpha 0.05: a loss is significant at Holm's first step only past
    # log2(10 / 0.05) = 7.6 images the teacher gets right.
    categories = {f"c{i}": ["both"] * 30 for i in range(9)}
    categories["small"] = ["teacher"] * 4  # lost entirely, but only 4 images
    check = category_drops(_paired(categories), GATE)
    assert check.passed and "too few test images" in check.reason
    [short] = check.details["too_few_images"]
    assert short == {"category": "small", "test_images": 4, "teacher_top1": 100.0, "needed": 8}
    categories["small"] = ["teacher"] * 8
    assert _failed(category_drops(_paired(categories), GATE)) == {"small"}


def test_nan_metric_fails_closed_with_a_reason():
    checks = _by_name(evaluate_policy(_report(latency=math.nan), _predictions(50, 45, 45), GATE, None))
    assert not checks["latency_ratio"].passed and "not a finite number" in checks["latency_ratio"].reason


@pytest.mark.parametrize(
    "teacher_top1, share, margin, passes",
    [
        (28.0, 0.10, 20.0, False),  # a teacher near chance on ten balanced categories
        (31.0, 0.10, 20.0, True),
        (85.0, 0.75, 20.0, False),  # an imbalanced set: 85% is only 10 pt over always answering 'majority'
        (85.0, 0.75, 5.0, True),
    ],
)
def test_the_teacher_must_beat_the_majority_class_baseline(teacher_top1, share, margin, passes):
    n = 1000
    labels = np.where(np.arange(n) < share * n, 0, 1 + np.arange(n) % 9)  # one category holds `share`
    check = teacher_margin(teacher_top1, labels, margin)
    assert check.passed == passes
    assert check.value == pytest.approx(teacher_top1 - 100.0 * max(share, (1 - share) / 9))
    if not passes:
        for cause in ("teacher.checkpoint", "teacher.categories_file", "teacher.image_size", "augment.mean"):
            assert cause in check.reason


def test_a_meaningless_teacher_fails_every_candidate_and_null_turns_the_check_off():
    report = _report(student_top1=52.0, teacher_top1=51.0)
    predictions = _predictions(500, 255, 260)  # both at chance on two balanced categories
    checks = _by_name(evaluate_policy(report, predictions, GATE, promoted_top1=None))
    assert not checks["teacher_margin"].passed and checks["accuracy_parity"].passed
    off = gate_params(bootstrap_samples=1000, min_teacher_margin=None)
    assert "teacher_margin" not in _by_name(evaluate_policy(report, predictions, off, promoted_top1=None))


def test_min_accuracy_and_regression_against_the_promoted_model():
    policy = gate_params(min_accuracy=96.0, max_regression=1.0, bootstrap_samples=200)
    checks = _by_name(evaluate_policy(_report(student_top1=95.0), _predictions(50, 45, 45), policy, promoted_top1=97.0))
    assert not checks["min_accuracy"].passed
    assert not checks["no_regression"].passed and "promoted 97.00%" in checks["no_regression"].reason
    checks = _by_name(evaluate_policy(_report(student_top1=96.5), _predictions(50, 45, 45), policy, promoted_top1=97.0))
    assert checks["min_accuracy"].passed and checks["no_regression"].passed


@pytest.mark.slow
def test_dvc_repro_promotes_the_gates_choice_with_lineage(promoted_project: Path):
    """What the promoted version says of itself, held to facts read elsewhere: its file's own
    sha256, DVC's hash of data/raw computed here from the files, git's HEAD, the data's folders.
    (The session's policy is permissive, so that it promotes: the decision is a precondition
    here; test_the_repositorys_gate_policy_on_the_session_project judges with the real one.)"""
    report = json.loads((promoted_project / "reports/gate.json").read_text())
    assert report["decision"] == "promote"
    assert set(report["candidates"]) == set(VARIANTS)
    assert all({"value", "threshold", "passed", "reason"} <= set(c) for c in report["checks"])
    assert "PROMOTE" in (promoted_project / "reports/gate.md").read_text()
    promoted = store.current("vgg2resnet-classifier")
    assert str(promoted.tag) == promoted_tag(promoted_project)
    meta = promoted.info.metadata
    assert meta["variant"] == report["variant"]
    artifact = promoted_project / Artifacts(load_params(promoted_project / "params.yaml")).student(report["variant"])
    stored = Path(promoted.path_of(StoreLayout.model_file(artifact)))
    assert (
        meta["model_sha256"]
        == hashlib.sha256(artifact.read_bytes()).hexdigest()
        == hashlib.sha256(stored.read_bytes()).hexdigest()
        == report["lineage"]["student_sha256"]
    )
    raw = promoted_project / "data/raw"
    assert meta["data_version"] == dvc_directory_md5(raw) == report["lineage"]["data_version"]
    head = run(["git", "rev-parse", "HEAD"], promoted_project).stdout.strip()
    edited = run(["git", "diff", "--name-only", "HEAD"], promoted_project).stdout.split()
    assert edited == ["params.yaml"]  # the session's settings, written after the commit
    assert meta["git_revision"] == f"{head}-dirty" == report["lineage"]["git_revision"]
    assert meta["categories"] == sorted({path.split("/")[0] for path in stored_images(raw)})  # the folders'


def _gate_params(project: Path, tmp_path: Path, **gate_overrides):
    params = load_params(project / "params.yaml")
    return params.model_copy(
        update={
            "gate": params.gate.model_copy(update=gate_overrides),
            "paths": params.paths.model_copy(update={"reports_dir": tmp_path / "reports"}),
        }
    )


@pytest.mark.slow
def test_rejected_candidate_leaves_the_store_unchanged(promoted_project: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(promoted_project)
    before = [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")]
    params = _gate_params(promoted_project, tmp_path, max_size_mb=1.0, min_variant_agreement=0.0)
    result = gate.run(params)
    assert result["decision"] == "reject" and result["failed"] == ["size_mb"]
    assert package.promote(params)[1] is None
    assert [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")] == before
    assert "REJECT" in (tmp_path / "reports/gate.md").read_text()
    with pytest.raises(gate.GateRejected, match="student size"):
        gate.run(params, strict=True)


def _evaluated_as(project: Path, metrics_dir: Path, student, teacher=None) -> pd.DataFrame:
    """A copy of the session's evaluation in which every form of the student answers
    student(predictions) instead (and the teacher teacher(predictions), when given), top-1 and
    fp32 agreement recomputed to match: the same model files, judged on other answers."""
    source = project / "metrics" / "evaluate"
    report = json.loads((source / "report.json").read_text())
    predictions = pd.read_parquet(source / "predictions.parquet")
    if teacher is not None:
        predictions["teacher"], predictions["teacher_confidence"] = teacher(predictions)
        report["teacher"]["top1"] = 100.0 * float((predictions["teacher"] == predictions["label"]).mean())
    for variant in report["candidates"]:
        predictions[variant], predictions[f"{variant}_confidence"] = student(predictions)
    for variant, row in report["candidates"].items():
        # Latencies measured once on a loaded host would make the verdict depend on the load: each
        # form answers in half the teacher's time, the smaller forms a little faster.
        row["cpu"]["latency_ms_p50"] = report["teacher"]["cpu"]["latency_ms_p50"] * (0.5 - row["size_ratio"] / 100)
        row["cpu_latency_ratio"] = row["cpu"]["latency_ms_p50"] / report["teacher"]["cpu"]["latency_ms_p50"]
        row["top1"] = 100.0 * float((predictions[variant] == predictions["label"]).mean())
        row["fp32_agreement"] = 100.0 * float((predictions[variant] == predictions[FP32_FORM[variant]]).mean())
    (metrics_dir / "evaluate").mkdir(parents=True)
    predictions.to_parquet(metrics_dir / "evaluate" / "predictions.parquet", index=False)
    (metrics_dir / "evaluate" / "report.json").write_text(json.dumps(report))
    return predictions


@pytest.mark.slow
def test_the_repositorys_gate_policy_on_the_session_project(promoted_project: Path, tmp_path: Path, monkeypatch):
    """The gate.* settings of the repository's params.yaml, not the session's permissive ones,
    on the session's real model files, judged on two sets of answers: a student giving the
    teacher's very answers is promoted exactly when the teacher's margin over the majority class,
    computed here, clears gate.min_teacher_margin (the session's teacher, trained two steps, is at
    chance, so it is rejected for that and for nothing else); a student wrong on every image fails
    accuracy parity; with a teacher right on every image, a student as good is promoted.
    (Promotion of a trained student under the real policy: tests/test_user_path.py.)"""
    monkeypatch.chdir(promoted_project)
    session = load_params("params.yaml")
    real = load_params(ROOT / "params.yaml").gate
    assert real != session.gate

    def judged(name: str, student, teacher=None) -> tuple[dict, pd.DataFrame]:
        params = session.model_copy(
            update={
                "gate": real,
                "paths": session.paths.model_copy(
                    update={"metrics_dir": tmp_path / name / "metrics", "reports_dir": tmp_path / name / "reports"}
                ),
                # Nothing in production under this name: no regression check against what other tests promoted.
                "serving": session.serving.model_copy(update={"model_name": f"real-policy-{name}"}),
            }
        )
        predictions = _evaluated_as(promoted_project, tmp_path / name / "metrics", student, teacher)
        result = gate.run(params)
        report = json.loads(Artifacts(params).gate_json.read_text())
        return {"result": result, **report}, predictions

    equal, predictions = judged("equal", lambda p: (p["teacher"], p["teacher_confidence"]))
    # The teacher's margin over always answering the commonest category, computed here.
    teacher_right = int((predictions["teacher"] == predictions["label"]).sum())
    margin = 100.0 * (teacher_right / len(predictions) - predictions["label"].value_counts(normalize=True).max())
    meaningful = margin >= real.min_teacher_margin
    assert teacher_right > 0  # this session's teacher is at chance (not meaningful), right on a few test images
    assert equal["decision"] == ("promote" if meaningful else "reject")
    for variant, candidate in equal["candidates"].items():
        checks = {c["name"]: c for c in candidate["checks"]}
        assert checks["teacher_margin"]["passed"] == meaningful, variant
        assert checks["teacher_margin"]["value"] == pytest.approx(margin, abs=1e-4), variant
        assert checks["accuracy_parity"]["passed"] and checks["category_drop"]["passed"], variant
    # Nothing else stands in the way of a student as good as the teacher, its size and speed its own.
    assert equal["candidates"]["onnx_fp32"]["failed"] == ([] if meaningful else ["teacher_margin"])

    categories = predictions["label"].max() + 1
    wrong, _ = judged("wrong", lambda p: ((p["label"] + 1) % categories, p["teacher_confidence"]))
    assert wrong["decision"] == "reject"
    for variant, candidate in wrong["candidates"].items():
        assert "accuracy_parity" in candidate["failed"], variant
    parity = next(c for c in wrong["candidates"]["onnx_fp32"]["checks"] if c["name"] == "accuracy_parity")
    assert f"student - teacher top-1: {-100.0 * teacher_right / len(predictions):+.2f} pt" in parity["reason"]
    assert parity["value"] < -real.max_accuracy_drop

    # A teacher that knows every test image and a student as good: the real policy promotes, on
    # the real files' sizes and measured latencies, the form gate.prefer picks among those passing.
    def right(p: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return p["label"], p["teacher_confidence"]

    knowing, _ = judged("knowing", right, teacher=right)
    assert knowing["decision"] == "promote", knowing["summary"]
    passing = [v for v, c in knowing["candidates"].items() if c["passed"] and v in real.variants]
    smallest = min(passing, key=lambda v: knowing["candidates"][v]["size_mb"])
    assert real.prefer == "smallest" and knowing["variant"] == smallest


def _reorder_categories(report: dict, predictions: pd.DataFrame) -> None:
    report["categories"] = list(reversed(report["categories"]))


def _other_data_version(report: dict, predictions: pd.DataFrame) -> None:
    report["manifest_sha256"] = "0" * 64


def _other_student_file(report: dict, predictions: pd.DataFrame) -> None:
    report["candidates"]["onnx_int8"]["sha256"] = "0" * 64


def _other_teacher_file(report: dict, predictions: pd.DataFrame) -> None:
    report["teacher"]["sha256"] = "0" * 64


def _a_row_short(report: dict, predictions: pd.DataFrame) -> None:
    predictions.drop(predictions.index[-1], inplace=True)


def _a_variant_column_missing(report: dict, predictions: pd.DataFrame) -> None:
    predictions.drop(columns=["onnx_fp32"], inplace=True)


def _a_gallery_column_missing(report: dict, predictions: pd.DataFrame) -> None:
    predictions.drop(columns=["teacher_confidence"], inplace=True)  # an evaluation from before the page


def _other_split(report: dict, predictions: pd.DataFrame) -> None:
    report["split"] = "val"


# Every way the evaluation can disagree with what the gate is asked to judge, and the reason it gives.
DAMAGE = {
    "missing": (None, "missing or unreadable"),
    "malformed": (None, "missing or unreadable"),
    "other_split": (_other_split, "not the held-out test split"),
    "category_order": (_reorder_categories, "do not share the data's categories"),
    "data_version": (_other_data_version, "another data version"),
    "student_file": (_other_student_file, "other model files"),
    "teacher_file": (_other_teacher_file, "other model files"),
    "row_count": (_a_row_short, "do not match the evaluation report"),
    "variant_column": (_a_variant_column_missing, "do not match the evaluation report"),
    "gallery_column": (_a_gallery_column_missing, "do not match the evaluation report"),
}


@contextlib.contextmanager
def raise_sites():
    """Where each ValueError raised by the package's own code while this block runs was raised:
    (code object, line, message), from the interpreter's trace hook, not from the source text."""
    package = str(Path(vgg2resnet.__file__).parent)
    sites: list[tuple] = []

    def local(frame, event, arg):
        if event == "exception" and isinstance(arg[1], ValueError) and arg[2].tb_next is None:
            sites.append((frame.f_code, arg[2].tb_lineno, str(arg[1])))  # raised here, not passing through
        return local

    def calls(frame, event, arg):
        if frame.f_code.co_filename.startswith(package):
            frame.f_trace_lines = False
            return local
        return None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield sites
    finally:
        sys.settrace(previous)


@pytest.fixture(scope="module")
def damaged_gates(promoted_project: Path, tmp_path_factory) -> dict:
    """The real gate stage over each damaged copy of the session's evaluation: its result, its
    report and page, and where the ValueError behind its verdict was raised."""
    runs = {}
    with contextlib.chdir(promoted_project):
        source = promoted_project / "metrics" / "evaluate"
        for damage, (edit, _) in DAMAGE.items():
            tmp_path = tmp_path_factory.mktemp(f"gate-{damage}")
            metrics = tmp_path / "metrics" / "evaluate"
            metrics.mkdir(parents=True)
            if damage != "missing":
                report = json.loads((source / "report.json").read_text())
                predictions = pd.read_parquet(source / "predictions.parquet")
                if edit is not None:
                    edit(report, predictions)
                predictions.to_parquet(metrics / "predictions.parquet", index=False)
                text = json.dumps(report)
                (metrics / "report.json").write_text(text[: len(text) // 2] if damage == "malformed" else text)
            params = _gate_params(promoted_project, tmp_path)
            params = params.model_copy(
                update={"paths": params.paths.model_copy(update={"metrics_dir": tmp_path / "metrics"})}
            )
            with raise_sites() as sites:
                result = gate.run(params)
            runs[damage] = {
                "result": result,
                "report": json.loads((tmp_path / "reports" / "gate.json").read_text()),
                "page": (tmp_path / "reports" / "gate.html").read_text(),
                "sites": sites,
            }
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_gate_fails_closed_on_evaluation_results_that_do_not_match(damaged_gates: dict, damage: str):
    run_ = damaged_gates[damage]
    assert run_["result"] == {"decision": "reject", "variant": None, "failed": ["inputs"]}
    [check] = run_["report"]["checks"]
    reason = DAMAGE[damage][1]
    assert reason in check["reason"]
    assert html.escape(reason) in run_["page"]  # the page says so too


def _raised_value_errors(code) -> set[int]:
    """The lines of a function's `raise ValueError(...)` statements, read from its syntax tree."""
    lines, first = inspect.getsourcelines(code)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    return {
        first + node.lineno - 1
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "ValueError"
    }


@pytest.mark.slow
def test_every_input_check_of_the_gate_fails_it_on_some_damaged_input(damaged_gates: dict):
    """Run, not read: each damaged input makes the gate reject with a reason that one
    `raise ValueError` of its input checks gave (found by tracing the stage, wherever that code
    lives), and every such statement of the functions that hold them is one of those."""
    fired: dict = {}
    for damage, run_ in damaged_gates.items():
        [check] = run_["report"]["checks"]
        raised = [(code, line) for code, line, message in run_["sites"] if message == check["reason"]]
        assert raised, (damage, check["reason"], run_["sites"])
        code, line = raised[-1]
        fired.setdefault(code, set()).add(line)
    for code, lines in fired.items():  # the function(s) holding the checks
        assert _raised_value_errors(code) == lines, f"{code.co_name} in {code.co_filename}"


def test_promoting_again_keeps_the_previous_version_and_rollback_restores_it(tmp_path: Path):
    name = "rollback-test"
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    first.write_bytes(b"first weights")
    second.write_bytes(b"second weights")
    tag1 = store.save_version(name, {StoreLayout.MODEL: first}, {"model_sha256": "one"})
    tag2 = store.save_version(name, {StoreLayout.MODEL: second}, {"model_sha256": "two"})
    assert [str(m.tag) for m in store.promoted_versions(name)] == [tag2, tag1]

    result = CliRunner().invoke(app, ["rollback", "--params", str(_params_with_name(tmp_path, name))])
    assert result.exit_code == 0, result.output
    restored = store.current(name)
    assert str(restored.tag) not in (tag1, tag2)
    assert restored.info.metadata["restored_from"] == tag1
    assert Path(restored.path_of(StoreLayout.MODEL)).read_bytes() == b"first weights"
    assert len(store.promoted_versions(name)) == 3  # nothing deleted or overwritten

    store.rollback(name, tag2)
    assert Path(store.current(name).path_of(StoreLayout.MODEL)).read_bytes() == b"second weights"


def _params_with_name(tmp_path: Path, name: str) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return write_params(tmp_path, {"serving": {"model_name": name}})


def test_rollback_with_nothing_promoted_is_a_clear_error(tmp_path: Path):
    result = CliRunner().invoke(app, ["rollback", "--params", str(_params_with_name(tmp_path, "never-saved"))])
    assert result.exit_code == 2 and "nothing to roll back" in result.output


@pytest.mark.slow
def test_promoting_the_promoted_student_again_saves_nothing_new(promoted_project: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(promoted_project)
    before = [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")]
    params = _gate_params(promoted_project, tmp_path)
    assert gate.run(params)["decision"] == "promote"
    _, tag, new_version = package.promote(params)
    assert tag == before[0] and not new_version
    assert [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")] == before


@pytest.mark.slow
def test_package_refuses_a_model_file_other_than_the_one_the_gate_judged(
    promoted_project: Path, tmp_path: Path, monkeypatch
):
    """A student retrained (or replaced) after the gate ran is not promoted on the old verdict."""
    monkeypatch.chdir(promoted_project)
    params = _gate_params(promoted_project, tmp_path)
    before = [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")]
    assert gate.run(params)["decision"] == "promote"
    judged = Artifacts(params).gate_json
    report = json.loads(judged.read_text())
    report["lineage"]["student_sha256"] = "0" * 64
    judged.write_text(json.dumps(report))
    with pytest.raises(UserError, match="is not the file the gate judged"):
        package.promote(params)
    assert [str(m.tag) for m in store.promoted_versions("vgg2resnet-classifier")] == before


@pytest.mark.slow
def test_package_warns_of_the_images_the_service_would_refuse_for_their_pixels(
    promoted_project: Path, monkeypatch, caplog
):
    """Clients sending images like the training ones learn before serving that they must
    downscale them. The session's images are 32 x 32 px: over one 31-px input's pixels, within
    one 32-px input's. Counted from the image files themselves, not from the manifest."""
    monkeypatch.chdir(promoted_project)
    params = load_params(promoted_project / "params.yaml")
    params = params.model_copy(update={"serving": params.serving.model_copy(update={"max_image_area": 1})})
    sizes = [Image.open(io.BytesIO(image)).size for image in stored_images(Artifacts(params).raw_dir).values()]
    assert sizes and all(w * h == 32 * 32 for w, h in sizes)
    for side, expected in ((31, len(sizes)), (32, 0)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert package.warn_of_images_over_serving_limit(params, side) == expected
        assert (f"{expected} of your {len(sizes)} images are over serving.max_image_area" in caplog.text) == (
            expected > 0
        )


def test_the_gate_power_benchmark_runs_on_the_real_policy():
    """benchmarks/gate_power.py at 2 trials, so that it cannot rot; its goals stay in the benchmark."""
    output = run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gate_power.py"),
            "--trials",
            "2",
            "--configs",
            "12x30",
            "--planted-images",
            "30",
            "60",
        ],
        ROOT,
    ).stdout
    figures = re.search(
        r"12x30: category_drop false_reject_rate=([\d.]+) detect_rate=([\d.]+); accuracy_parity "
        r"false_reject_rate=([\d.]+) detect_rate=([\d.]+); category_images_for_0.9=(\d+|>60)",
        output,
    )
    assert figures, output
    assert all(0.0 <= float(value) <= 1.0 for value in figures.groups()[:4])
