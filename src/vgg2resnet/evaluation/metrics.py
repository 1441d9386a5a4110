"""What the evaluation measures: classification metrics from logits and labels; whether a
teacher is worth comparing with at all; and latency and throughput of any model.

A wrong checkpoint, a categories file in the wrong order, the wrong input size or
normalisation all make a good teacher look near chance once it is inside the pipeline, and
accuracy parity with such a teacher proves nothing: `majority_baseline` and `margin_verdict`
are what the teacher stage warns with and the gate fails closed on.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

LIKELY_CAUSES = (
    "check that teacher.checkpoint is the model you meant, that teacher.categories_file lists "
    "its categories in the order of its outputs, and that teacher.image_size and augment.mean/std "
    "are the input size and normalisation it was trained with"
)


@dataclass(frozen=True)
class Outcomes:
    """What the metrics need of each image's logits, kept in their place: a few bytes per image
    whatever the number of categories (the logits of 250,000 test images over 1,000 categories
    are 1 GB per model)."""

    labels: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor  # the softmax's largest probability
    top5: torch.Tensor  # whether the label is among the five largest logits

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> Outcomes:
        logits = logits.float()
        k = min(5, logits.shape[1])
        return cls(
            labels=labels,
            predicted=logits.argmax(dim=1),
            confidence=logits.softmax(dim=1).max(dim=1).values,
            top5=(logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1),
        )

    @classmethod
    def join(cls, parts: Iterable[Outcomes]) -> Outcomes:
        parts = list(parts)
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels


@torch.no_grad()
def collect_outcomes(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable) -> Outcomes:
    """The outcomes of `forward` (images to logits) over (images, labels, ...) batches."""
    return Outcomes.join(Outcomes.of(forward(images), labels) for images, labels, *_ in batches)


def per_category_accuracy(predicted: np.ndarray, labels: np.ndarray, categories: list[str]) -> dict[str, float]:
    return {
        name: float(100.0 * (predicted[labels == i] == i).mean()) if (labels == i).any() else float("nan")
        for i, name in enumerate(categories)
    }


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| per confidence bin, weighted by bin size."""
    correct = correct.float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item())
    return 100.0 * ece


def classification_report(outcomes: Outcomes, categories: list[str], calibration_bins: int) -> dict:
    labels, predicted = outcomes.labels.numpy(), outcomes.predicted.numpy()
    return {
        "top1": 100.0 * outcomes.correct.float().mean().item(),
        "top5": 100.0 * outcomes.top5.float().mean().item(),
        "macro_f1": 100.0
        * float(f1_score(labels, predicted, average="macro", labels=list(range(len(categories))), zero_division=0)),
        "ece": expected_calibration_error(outcomes.confidence, outcomes.correct, calibration_bins),
        "per_category": per_category_accuracy(predicted, labels, categories),
    }


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
    reason = (
        f"teacher {split} top-1 {top1:.2f}% is {margin:+.2f} pt over the majority-class baseline "
        f"{baseline:.2f}% ({'>=' if passed else '<'} {min_margin:.3g} pt)"
    )
    if not passed:
        reason += f": comparing a student with this teacher proves nothing; {LIKELY_CAUSES}"
    return passed, reason


@torch.no_grad()
def measure_latency(
    model: Callable[[torch.Tensor], Any],
    image_size: int,
    device: torch.device,
    *,
    batch_size: int,
    warmup: int,
    runs: int,
) -> dict[str, float]:
    """`model` must already be on `device` (and in eval mode)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timings(batch: int, count: int) -> np.ndarray:
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
        return np.array(times)

    single = timings(1, runs) * 1000
    batched = timings(batch_size, max(1, runs // 4))
    return {
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "throughput_img_s": float(batch_size / np.median(batched)),
        "throughput_batch_size": batch_size,
    }
