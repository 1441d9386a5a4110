"""Is the teacher worth comparing with? A wrong checkpoint, a categories file in the wrong order,
the wrong input size or normalisation all make a good model look near chance once it is inside
the pipeline, and accuracy parity with such a teacher proves nothing."""

from __future__ import annotations

import math

import numpy as np

LIKELY_CAUSES = ("check that teacher.checkpoint is the model you meant, that teacher.categories_file lists "
                 "its categories in the order of its outputs, and that teacher.image_size and augment.mean/std "
                 "are the input size and normalisation it was trained with")


def majority_baseline(labels: np.ndarray) -> float:
    """Top-1 (%) of always answering the most common category: what a model must clearly beat."""
    labels = np.asarray(labels)
    return float(100.0 * np.bincount(labels).max() / len(labels)) if len(labels) else math.nan


def at_or_below_chance(per_category: dict[str, float]) -> list[str]:
    """Categories whose top-1 is no better than guessing uniformly among all of them."""
    chance = 100.0 / len(per_category)
    return [name for name, accuracy in per_category.items() if accuracy <= chance]


def margin_verdict(top1: float, baseline: float, min_margin: float, split: str) -> tuple[bool, str]:
    """(passed, reason) of `top1 - baseline >= min_margin`; the reason names the likely causes of a failure."""
    margin = top1 - baseline
    passed = margin >= min_margin
    reason = (f"teacher {split} top-1 {top1:.2f}% is {margin:+.2f} pt over the majority-class baseline "
              f"{baseline:.2f}% ({'>=' if passed else '<'} {min_margin:.3g} pt)")
    if not passed:
        reason += f": comparing a student with this teacher proves nothing; {LIKELY_CAUSES}"
    return passed, reason
