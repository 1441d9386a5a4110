"""Classification metrics computed from logits and labels."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()


def per_category_accuracy(predicted: np.ndarray, labels: np.ndarray, categories: list[str]) -> dict[str, float]:
    return {name: float(100.0 * (predicted[labels == i] == i).mean()) if (labels == i).any() else float("nan")
            for i, name in enumerate(categories)}


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| per confidence bin, weighted by bin size."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item())
    return 100.0 * ece


def classification_report(logits: torch.Tensor, labels: torch.Tensor, categories: list[str],
                          calibration_bins: int) -> dict:
    predicted = logits.argmax(dim=1)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "macro_f1": 100.0 * float(f1_score(labels.numpy(), predicted.numpy(), average="macro",
                                           labels=list(range(len(categories))), zero_division=0)),
        "ece": expected_calibration_error(logits.softmax(dim=1), labels, calibration_bins),
        "per_category": per_category_accuracy(predicted.numpy(), labels.numpy(), categories),
    }
