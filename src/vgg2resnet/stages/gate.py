"""Stage `gate`: decide whether the student may replace the teacher. It only judges: its
outputs are reports/gate.json, gate.md and gate.html (the page to look at), and it reads the
model store only to compare with the model in production (`no_regression`); `package`
promotes what it chose.

    vgg2resnet gate              # or: dvc repro gate

Each variant of the student (fp32 PyTorch, fp32 ONNX, int8 ONNX, and the pruned network's fp32
and int8 ONNX when prune.enabled) meets the same checks; among those that pass and
gate.variants lists, gate.prefer picks the one to promote (the smallest by default).

Exit semantics: the stage exits 0 whatever the decision, so that `dvc repro` records
reports/gate.json; a rejected student is never saved to the model store, and `package`
(and the Prefect flow) stop on it. `vgg2resnet gate --strict` exits 3 on a rejection.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError, built_variants
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader
from vgg2resnet.data.loaders import with_progress
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.evaluation.metrics import collect_outcomes
from vgg2resnet.gate.html import gallery_counts, render_html
from vgg2resnet.gate.policy import Check, choose, evaluate_policy, failed_input
from vgg2resnet.gate.report import render_markdown
from vgg2resnet.lineage import git_revision, manifest_hash, params_hash, recorded_data_version
from vgg2resnet.models.checkpoint import read_meta
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import open_model_dir

log = logging.getLogger(__name__)


class GateRejected(UserError):
    """Raised by `gate --strict` when the candidate was not promoted."""

    exit_code = 3


def _load_inputs(params: Params, categories: list[str]) -> tuple[dict, pd.DataFrame, dict, dict]:
    """Everything the policy reads; any inconsistency raises ValueError (the gate fails closed)."""
    layout = Artifacts(params)
    try:
        report = json.loads(layout.evaluation_report.read_text())
        predictions = pd.read_parquet(layout.predictions)
        teacher = read_meta(layout.teacher)
        variants = {v: read_meta(layout.student(v)) for v in built_variants(params)}
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
    needed = {"path", "label", "category", "teacher", "teacher_confidence", *variants,
              *(f"{v}_confidence" for v in variants)}
    if len(predictions) != report.get("images") or not needed <= set(predictions):
        raise ValueError("per-sample predictions do not match the evaluation report")
    return report, predictions, teacher, variants


def _promoted_top1(params: Params, categories: list[str], weights_sha256: str) -> float | None:
    """Top-1 of the model now in production on today's test split (None when there is none,
    or when it was made from these very weights)."""
    promoted = store.current(params.serving.model_name)
    if promoted is None or promoted.info.metadata.get("weights_sha256") == weights_sha256:
        return None
    runner, meta = open_model_dir(Path(promoted.path))
    if meta["categories"] != categories:
        log.warning("promoted %s has other categories; it cannot be compared", promoted.tag)
        return None
    loader = eval_loader(params, "test", categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    outcomes = collect_outcomes(lambda images: runner(images)[0], with_progress(loader, f"evaluate {promoted.tag}"))
    return 100.0 * outcomes.correct.float().mean().item()


def run(params: Params, strict: bool = False) -> dict:
    categories = data_categories(params)
    chosen, candidates = None, {}
    try:
        report, predictions, teacher, variants = _load_inputs(params, categories)
        promoted_top1 = _promoted_top1(params, categories, variants["pytorch_fp32"]["weights_sha256"])
        checks_of = {v: evaluate_policy(report, predictions, params.gate, promoted_top1, v) for v in variants}
        candidates = {v: _candidate(v, report["candidates"][v], checks_of[v], params) for v in variants}
        chosen = choose([v for v, c in candidates.items() if c["passed"]], report["candidates"], params.gate)
        checks = checks_of[chosen] if chosen else [
            replace(c, name=f"{v}.{c.name}") for v in params.gate.variants if v in variants for c in checks_of[v]]
    except ValueError as exc:
        report, predictions, teacher, variants = {}, None, {}, {}
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
            "params_hash": params_hash(params),
            "teacher_sha256": teacher.get("sha256"),
            "student_sha256": student.get("sha256"),
            "student_init": student.get("init"),
        },
    }
    if predictions is not None:
        result["disagreements"] = gallery_counts(predictions, chosen or "pytorch_fp32")
    layout = Artifacts(params)
    atomic.write_json(layout.gate_json, result)
    atomic.write_text(layout.gate_markdown, render_markdown(result))
    atomic.write_text(layout.gate_html, render_html(result, report, predictions, categories, layout.raw_dir,
                                                    params.report))
    for check in checks:
        log.info("%s %s: %s", "pass" if check.passed else "FAIL", check.name, check.reason)
    log.info("gate decision: %s%s (%s; to look at: %s)", result["decision"].upper(),
             f" {chosen}" if chosen else "", layout.gate_markdown, layout.gate_html)
    if strict and not chosen:
        raise GateRejected(f"the gate rejected the student: {'; '.join(c.reason for c in failed)}")
    return {"decision": result["decision"], "variant": chosen,
            "failed": sorted({c.name.split(".")[-1] for c in failed})}


def _candidate(variant: str, evaluated: dict, checks: list[Check], params: Params) -> dict:
    """One row of the side-by-side table in the report."""
    return {
        "passed": all(c.passed for c in checks),
        "promotable": variant in params.gate.variants,
        "failed": [c.name for c in checks if not c.passed],
        "top1": evaluated["top1"],
        "size_mb": evaluated["size_mb"],
        "size_ratio": evaluated["size_ratio"],
        "flops": evaluated["flops"],
        "flops_ratio": evaluated["flops_ratio"],
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

