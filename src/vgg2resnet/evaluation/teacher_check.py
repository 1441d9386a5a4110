"""The teacher on the val split before hours of distillation: top-1, the majority-class
baseline and per-category top-1, with a warning when the margin is below
gate.min_teacher_margin or a category scores at or below chance (what a categories file in the
wrong order looks like)."""

from __future__ import annotations

import logging

from torch import nn
from torch.utils.data import DataLoader

from vgg2resnet.config import Params
from vgg2resnet.evaluation.metrics import (
    LIKELY_CAUSES,
    at_or_below_chance,
    majority_baseline,
    margin_verdict,
    per_category_accuracy,
)
from vgg2resnet.training.loop import predict
from vgg2resnet.training.placement import Placement

log = logging.getLogger(__name__)


def teacher_check(
    model: nn.Module, val: DataLoader, placement: Placement, params: Params, categories: list[str], imported: bool
) -> dict:
    """The teacher on the val split: top-1, the majority-class baseline, per-category top-1; warns
    when the margin is below gate.min_teacher_margin or a category is at or below chance."""
    predictions = predict(model, val, placement)
    labels, predicted = predictions.labels.numpy(), predictions.classes.numpy()
    top1 = float(100.0 * (predicted == labels).mean())
    per_category = per_category_accuracy(predicted, labels, categories)
    baseline = majority_baseline(labels)
    result = {"val_accuracy": top1, "val_majority_baseline": baseline, "val_per_category": per_category}
    if params.gate.min_teacher_margin is not None:
        passed, reason = margin_verdict(top1, baseline, params.gate.min_teacher_margin, "val")
        if not passed:
            log.warning("the gate will refuse this teacher: %s", reason)
    weak = at_or_below_chance(per_category)
    if weak:
        shown = ", ".join(f"'{name}' {per_category[name]:.1f}%" for name in weak)
        hint = (
            "a categories file in the wrong order looks exactly like this; " + LIKELY_CAUSES
            if imported
            else "it has not learned them: train longer or start from teacher.pretrained_weights"
        )
        log.warning(
            "the teacher scores at or below chance (%.1f%%) on the val split for %d categor%s: %s; %s",
            100.0 / len(categories),
            len(weak),
            "y" if len(weak) == 1 else "ies",
            shown,
            hint,
        )
    result["val_at_or_below_chance"] = weak
    return result
