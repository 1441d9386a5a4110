"""Stage `gate`: decide whether the student may replace the teacher, and promote it if so.

    vgg2resnet gate              # or: dvc repro gate

Exit semantics: the stage exits 0 whatever the decision, so that `dvc repro` records
reports/gate.json; a rejected student is never saved to the model store, and `package`
(and the Prefect flow) stop on it. `vgg2resnet gate --strict` exits 3 on a rejection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.distill.loop import predict
from vgg2resnet.errors import UserError
from vgg2resnet.evaluation.metrics import topk_accuracy
from vgg2resnet.gate.policy import Check, evaluate_policy, failed_input
from vgg2resnet.gate.report import render_markdown
from vgg2resnet.lineage import git_revision, recorded_data_version
from vgg2resnet.models.checkpoint import load_model, read_meta
from vgg2resnet.monitoring.features import fit_projection, penultimate_features
from vgg2resnet.packaging import store
from vgg2resnet.runtime import Runtime
from vgg2resnet.stages.evaluate import evaluation_paths
from vgg2resnet.stages.training import data_categories, eval_loader, manifest_hash

log = logging.getLogger(__name__)


class GateRejected(UserError):
    """Raised by `gate --strict` when the candidate was not promoted."""

    exit_code = 3


def gate_paths(params: Params) -> dict[str, Path]:
    root = params.paths.reports_dir
    return {"json": root / "gate.json", "markdown": root / "gate.md"}


def _load_inputs(params: Params, categories: list[str]) -> tuple[dict, pd.DataFrame, dict, dict]:
    """Everything the policy reads; any inconsistency raises ValueError (the gate fails closed)."""
    paths = evaluation_paths(params)
    try:
        report = json.loads(paths["report"].read_text())
        predictions = pd.read_parquet(paths["predictions"])
        teacher = read_meta(params.paths.models_dir / "teacher.pt")
        student = read_meta(params.paths.models_dir / "student.pt")
    except (OSError, ValueError, UserError) as exc:
        raise ValueError(f"evaluation results missing or unreadable ({exc}); run `vgg2resnet evaluate`") from exc
    if report.get("split") != "test":
        raise ValueError(f"evaluation ran on split {report.get('split')!r}, not the held-out test split")
    if report.get("categories") != categories or teacher["categories"] != categories \
            or student["categories"] != categories:
        raise ValueError("teacher, student and evaluation do not share the data's categories")
    if report.get("manifest_sha256") != manifest_hash(params):
        raise ValueError("evaluation is from another data version than data/prepared; re-run evaluate")
    if report["teacher"].get("sha256") != teacher["sha256"] or report["student"].get("sha256") != student["sha256"]:
        raise ValueError("evaluation is of other model files than models/; re-run evaluate")
    if len(predictions) != report.get("images") or not {"label", "teacher", "student"} <= set(predictions):
        raise ValueError("per-sample predictions do not match the evaluation report")
    return report, predictions, teacher, student


def _promoted_top1(params: Params, categories: list[str], candidate_sha: str) -> tuple[float | None, object]:
    """Top-1 of the model now in production on today's test split (None when there is none,
    or when it is this very candidate)."""
    promoted = store.current(params.serving.model_name)
    if promoted is None or promoted.info.metadata.get("weights_sha256") == candidate_sha:
        return None, promoted
    model, meta = load_model(Path(promoted.path_of(store.MODEL_FILE)))
    if meta["categories"] != categories:
        log.warning("promoted %s has other categories; it cannot be compared", promoted.tag)
        return None, promoted
    loader = eval_loader(params, "test", categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    logits = predict(model, loader, Runtime(device=torch.device("cpu")))
    return topk_accuracy(logits, loader.dataset.labels, 1), promoted


def params_hash() -> str:
    text = Path("params.yaml").read_text() if Path("params.yaml").is_file() else ""
    return hashlib.sha256(json.dumps(yaml.safe_load(text), sort_keys=True).encode()).hexdigest()[:16]


def run(params: Params, strict: bool = False) -> dict:
    categories = data_categories(params)
    promoted = None
    try:
        report, predictions, teacher, student = _load_inputs(params, categories)
        promoted_top1, promoted = _promoted_top1(params, categories, student["weights_sha256"])
        checks = evaluate_policy(report, predictions, params.gate, promoted_top1)
    except ValueError as exc:
        report, teacher, student = {}, {}, {}
        checks = [failed_input("inputs", str(exc))]
    passed = all(c.passed for c in checks)
    failed = [c for c in checks if not c.passed]
    result = {
        "decision": "promote" if passed else "reject",
        "summary": _summary(report, passed, failed),
        "checks": [c.as_dict() for c in checks],
        "lineage": {
            "data_version": recorded_data_version(params.data.raw_dir),
            "git_revision": git_revision(),
            "params_hash": params_hash(),
            "teacher_sha256": teacher.get("sha256"),
            "student_sha256": student.get("sha256"),
            "student_init": student.get("init"),
        },
        "promoted_tag": None,
    }
    if passed:
        result["promoted_tag"] = _promote(params, student, result, promoted)
    paths = gate_paths(params)
    atomic.write_json(paths["json"], result)
    atomic.write_text(paths["markdown"], render_markdown(result))
    for check in checks:
        log.info("%s %s: %s", "pass" if check.passed else "FAIL", check.name, check.reason)
    log.info("gate decision: %s (%s)", result["decision"].upper(), paths["markdown"])
    if strict and not passed:
        raise GateRejected(f"the gate rejected the student: {'; '.join(c.reason for c in failed)}")
    return {"decision": result["decision"], "failed": [c.name for c in failed],
            "promoted_tag": result["promoted_tag"]}


def _summary(report: dict, passed: bool, failed: list[Check]) -> str:
    if not report:
        return "The gate could not read consistent evaluation results and failed closed."
    head = (f"Student top-1 {report['student']['top1']:.2f}% vs teacher {report['teacher']['top1']:.2f}% "
            f"on {report['images']} test images; size {report['student']['size_mb']:.1f} MB vs "
            f"{report['teacher']['size_mb']:.1f} MB ({report['size_ratio']:.2f}x).")
    if report["student"]["top1"] > report["teacher"]["top1"]:
        head += " The student beats the teacher."
    return head + (" All checks passed." if passed else f" Failed: {', '.join(c.name for c in failed)}.")


def _promote(params: Params, student: dict, result: dict, promoted) -> str:
    """Save the student as the new promoted version, unless it already is the promoted one."""
    if promoted is not None and promoted.info.metadata.get("weights_sha256") == student["weights_sha256"]:
        log.info("the student is already the promoted model %s", promoted.tag)
        return str(promoted.tag)
    models_dir = params.paths.models_dir
    metadata = {
        "model_sha256": student["sha256"],
        "weights_sha256": student["weights_sha256"],
        "arch": student["arch"],
        "categories": student["categories"],
        "preprocessing": student["preprocessing"],
        "init": student["init"],
        "data_version": result["lineage"]["data_version"] or "",
        "git_revision": result["lineage"]["git_revision"],
        "params_hash": result["lineage"]["params_hash"],
        "teacher_sha256": student["teacher_sha256"],
        "gate": {c["name"]: {"value": c["value"], "passed": c["passed"]} for c in result["checks"]},
        "summary": result["summary"],
    }
    with tempfile.TemporaryDirectory() as scratch:
        projection = Path(scratch) / store.PROJECTION_FILE
        torch.save(_fit_projection(params, student["categories"]), projection)
        return store.save_version(params.serving.model_name, {
            store.MODEL_FILE: models_dir / "student.pt",
            "student.json": models_dir / "student.json",
            store.PROJECTION_FILE: projection,
        }, metadata)


def _fit_projection(params: Params, categories: list[str]) -> dict[str, torch.Tensor]:
    """The drift embedding: PCA of the student's penultimate features over the training split."""
    model, meta = load_model(params.paths.models_dir / "student.pt", categories)
    loader = eval_loader(params, "train", categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    with torch.no_grad():
        features = torch.cat([penultimate_features(model, images)[1] for images, *_ in loader])
    return fit_projection(features, params.serving.embedding_dims)
