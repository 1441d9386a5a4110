"""Stage `gate`: decide whether the student may replace the teacher, and promote it if so.

    vgg2resnet gate              # or: dvc repro gate

Each variant of the student (gate.variants: fp32 PyTorch, fp32 ONNX, int8 ONNX) meets the same
checks; among those that pass, gate.prefer picks the one promoted (the smallest by default).

Exit semantics: the stage exits 0 whatever the decision, so that `dvc repro` records
reports/gate.json; a rejected student is never saved to the model store, and `package`
(and the Prefect flow) stop on it. `vgg2resnet gate --strict` exits 3 on a rejection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from vgg2resnet import atomic
from vgg2resnet.config import VARIANTS, Params
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.errors import UserError
from vgg2resnet.evaluation.metrics import topk_accuracy
from vgg2resnet.gate.policy import Check, choose, evaluate_policy, failed_input
from vgg2resnet.gate.report import render_markdown
from vgg2resnet.lineage import git_revision, recorded_data_version
from vgg2resnet.models.checkpoint import read_meta, sidecar
from vgg2resnet.models.variants import load_runner, predict_logits, variant_path
from vgg2resnet.monitoring.features import fit_projection
from vgg2resnet.monitoring.reference import write_reference
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import open_model_dir
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
        variants = {v: read_meta(variant_path(params.paths.models_dir, v)) for v in VARIANTS}
    except (OSError, ValueError, UserError) as exc:
        raise ValueError(f"evaluation results missing or unreadable ({exc}); run `vgg2resnet evaluate`") from exc
    if report.get("split") != "test":
        raise ValueError(f"evaluation ran on split {report.get('split')!r}, not the held-out test split")
    if report.get("categories") != categories or teacher["categories"] != categories \
            or any(meta["categories"] != categories for meta in variants.values()):
        raise ValueError("teacher, student variants and evaluation do not share the data's categories")
    if report.get("manifest_sha256") != manifest_hash(params):
        raise ValueError("evaluation is from another data version than data/prepared; re-run evaluate")
    evaluated = report.get("candidates", {})
    if report["teacher"].get("sha256") != teacher["sha256"] or any(
            evaluated.get(v, {}).get("sha256") != meta["sha256"] for v, meta in variants.items()):
        raise ValueError("evaluation is of other model files than models/; re-run evaluate")
    if len(predictions) != report.get("images") or not {"label", "teacher", *VARIANTS} <= set(predictions):
        raise ValueError("per-sample predictions do not match the evaluation report")
    return report, predictions, teacher, variants


def _promoted_top1(params: Params, categories: list[str], weights_sha256: str) -> tuple[float | None, object]:
    """Top-1 of the model now in production on today's test split (None when there is none,
    or when it was made from these very weights)."""
    promoted = store.current(params.serving.model_name)
    if promoted is None or promoted.info.metadata.get("weights_sha256") == weights_sha256:
        return None, promoted
    runner, meta = open_model_dir(Path(promoted.path))
    if meta["categories"] != categories:
        log.warning("promoted %s has other categories; it cannot be compared", promoted.tag)
        return None, promoted
    loader = eval_loader(params, "test", categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    return topk_accuracy(predict_logits(runner, loader), loader.dataset.labels, 1), promoted


def _is_promoted(promoted, candidate: dict, variant: str) -> bool:
    metadata = promoted.info.metadata
    return (metadata.get("weights_sha256") == candidate["weights_sha256"]
            and metadata.get("variant", "pytorch_fp32") == variant)


def params_hash() -> str:
    text = Path("params.yaml").read_text() if Path("params.yaml").is_file() else ""
    return hashlib.sha256(json.dumps(yaml.safe_load(text), sort_keys=True).encode()).hexdigest()[:16]


def run(params: Params, strict: bool = False) -> dict:
    categories = data_categories(params)
    promoted, chosen, candidates = None, None, {}
    try:
        report, predictions, teacher, variants = _load_inputs(params, categories)
        promoted_top1, promoted = _promoted_top1(params, categories, variants["pytorch_fp32"]["weights_sha256"])
        checks_of = {v: evaluate_policy(report, predictions, params.gate, promoted_top1, v) for v in VARIANTS}
        candidates = {v: _candidate(v, report["candidates"][v], checks_of[v], params) for v in VARIANTS}
        chosen = choose([v for v, c in candidates.items() if c["passed"]], report["candidates"], params.gate)
        checks = checks_of[chosen] if chosen else [
            Check(f"{v}.{c.name}", c.value, c.threshold, c.passed, c.reason)
            for v in params.gate.variants for c in checks_of[v]]
    except ValueError as exc:
        report, teacher, variants = {}, {}, {}
        checks = [failed_input("inputs", str(exc))]
    failed = [c for c in checks if not c.passed]
    student = variants.get(chosen or "pytorch_fp32", {})
    result = {
        "decision": "promote" if chosen else "reject",
        "variant": chosen,
        "summary": _summary(report, chosen, candidates, failed),
        "candidates": candidates,
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
    if chosen:
        result["promoted_tag"] = _promote(params, chosen, student, result, promoted)
    else:
        served = promoted or store.current(params.serving.model_name)
        log.info("no model promoted: %s", f"{served.tag} stays in production with its own drift reference"
                 if served is not None else "nothing is served or monitored yet")
    paths = gate_paths(params)
    atomic.write_json(paths["json"], result)
    atomic.write_text(paths["markdown"], render_markdown(result))
    for check in checks:
        log.info("%s %s: %s", "pass" if check.passed else "FAIL", check.name, check.reason)
    log.info("gate decision: %s%s (%s)", result["decision"].upper(), f" {chosen}" if chosen else "",
             paths["markdown"])
    if strict and not chosen:
        raise GateRejected(f"the gate rejected the student: {'; '.join(c.reason for c in failed)}")
    return {"decision": result["decision"], "variant": chosen,
            "failed": sorted({c.name.split(".")[-1] for c in failed}), "promoted_tag": result["promoted_tag"]}


def _candidate(variant: str, evaluated: dict, checks: list[Check], params: Params) -> dict:
    """One row of the side-by-side table in the report."""
    return {
        "passed": all(c.passed for c in checks),
        "promotable": variant in params.gate.variants,
        "failed": [c.name for c in checks if not c.passed],
        "top1": evaluated["top1"],
        "size_mb": evaluated["size_mb"],
        "size_ratio": evaluated["size_ratio"],
        "cpu_latency_ms_p50": evaluated["cpu"]["latency_ms_p50"],
        "cpu_throughput_img_s": evaluated["cpu"]["throughput_img_s"],
        "fp32_agreement": evaluated["fp32_agreement"],
        "checks": [c.as_dict() for c in checks],
    }


def _summary(report: dict, chosen: str | None, candidates: dict, failed: list[Check]) -> str:
    if not report:
        return "The gate could not read consistent evaluation results and failed closed."
    teacher = report["teacher"]
    shown = report["candidates"][chosen or "pytorch_fp32"]
    head = (f"Student ({chosen or 'pytorch_fp32'}) top-1 {shown['top1']:.2f}% vs teacher {teacher['top1']:.2f}% "
            f"on {report['images']} test images; size {shown['size_mb']:.1f} MB vs "
            f"{teacher['size_mb']:.1f} MB ({shown['size_ratio']:.3f}x).")
    if shown["top1"] > teacher["top1"]:
        head += " The student beats the teacher."
    if chosen:
        others = [v for v, c in candidates.items() if c["passed"] and v != chosen]
        return head + f" All checks passed; promoting {chosen}" + (
            f" (also passed: {', '.join(others)})." if others else ".")
    return head + f" No promotable variant passed. Failed: {', '.join(c.name for c in failed)}."


def _promote(params: Params, variant: str, student: dict, result: dict, promoted) -> str:
    """Save the chosen variant as the new promoted version, unless it already is the promoted one."""
    if promoted is not None and _is_promoted(promoted, student, variant):
        log.info("the student (%s) is already the promoted model %s", variant, promoted.tag)
        return str(promoted.tag)
    artifact = variant_path(params.paths.models_dir, variant)
    metadata = {
        "variant": variant,
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
    model_file = store.ONNX_FILE if artifact.suffix == ".onnx" else store.MODEL_FILE
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copyfile(artifact, folder / model_file)
        shutil.copyfile(sidecar(artifact), folder / sidecar(Path(model_file)).name)
        torch.save(_fit_projection(params, artifact, student["categories"]), folder / store.PROJECTION_FILE)
        # The drift baseline belongs to this version alone: computed now, by the folder's own
        # classifier, and saved with it.
        write_reference(params, folder)
        return store.save_version(params.serving.model_name, {p.name: p for p in folder.iterdir()}, metadata)


def _fit_projection(params: Params, artifact: Path, categories: list[str]) -> dict[str, torch.Tensor]:
    """The drift embedding: PCA of the promoted variant's penultimate features over the training split."""
    runner, meta = load_runner(artifact, categories)
    loader = eval_loader(params, "train", categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    features = torch.cat([runner(images)[1] for images, *_ in loader])
    return fit_projection(features, params.serving.embedding_dims)
