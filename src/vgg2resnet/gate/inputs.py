"""What the gate reads: the evaluation's report and per-sample predictions, the model files'
metadata, all checked against each other (any inconsistency is a ValueError and the gate fails
closed), and the top-1 of the model now in production for the no-regression check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, UserError, built_variants
from vgg2resnet.evaluation.candidates import outcomes_on_test_split
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.checkpoint import read_meta
from vgg2resnet.packaging import store
from vgg2resnet.serving.classifier import open_model_dir

log = logging.getLogger(__name__)


def load_inputs(params: Params, categories: list[str]) -> tuple[dict, pd.DataFrame, dict, dict]:
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
    if (
        report.get("categories") != categories
        or teacher["categories"] != categories
        or any(meta["categories"] != categories for meta in variants.values())
    ):
        raise ValueError("teacher, student variants and evaluation do not share the data's categories")
    if report.get("manifest_sha256") != manifest_hash(params):
        raise ValueError("evaluation is from another data version than data/prepared; re-run evaluate")
    evaluated = report.get("candidates", {})
    if report["teacher"].get("sha256") != teacher["sha256"] or any(
        evaluated.get(v, {}).get("sha256") != meta["sha256"] for v, meta in variants.items()
    ):
        raise ValueError("evaluation is of other model files than models/; re-run evaluate")
    needed = {
        "path",
        "label",
        "category",
        "teacher",
        "teacher_confidence",
        *variants,
        *(f"{v}_confidence" for v in variants),
    }
    if len(predictions) != report.get("images") or not needed <= set(predictions):
        raise ValueError("per-sample predictions do not match the evaluation report")
    return report, predictions, teacher, variants


def promoted_top1(params: Params, categories: list[str], weights_sha256: str) -> float | None:
    """Top-1 of the model now in production on today's test split (None when there is none,
    or when it was made from these very weights)."""
    promoted = store.current(params.serving.model_name)
    if promoted is None or promoted.info.metadata.get("weights_sha256") == weights_sha256:
        return None
    runner, meta = open_model_dir(Path(promoted.path))
    if meta["categories"] != categories:
        log.warning("promoted %s has other categories; it cannot be compared", promoted.tag)
        return None
    outcomes = outcomes_on_test_split(
        params, categories, lambda images: runner(images)[0], meta, f"evaluate {promoted.tag}"
    )
    return 100.0 * outcomes.correct.float().mean().item()
