"""The promotion policy: every check records its value, threshold, verdict and a one-line reason.

Every variant of the student (fp32 PyTorch, fp32 ONNX, int8 ONNX, and the pruned network's fp32
and int8 ONNX) is a candidate that meets the same checks on its own predictions, bytes and
latency. Accuracy parity is judged non-inferiority style on the lower bound of a paired bootstrap interval of (candidate -
teacher) top-1 over the same test images, so a lucky small test set cannot pass a worse one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from vgg2resnet.config import FP32_FORM, GateParams
from vgg2resnet.evaluation.metrics import majority_baseline, margin_verdict


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def failed_input(name: str, reason: str) -> Check:
    """A check that could not be computed: the gate fails closed."""
    return Check(name, None, None, False, reason)


def paired_bootstrap(student_correct: np.ndarray, teacher_correct: np.ndarray, samples: int,
                     confidence: float, seed: int, chunk: int = 256) -> tuple[float, float]:
    """(point estimate, one-sided lower bound) of the top-1 difference in points."""
    diff = student_correct.astype(np.int8) - teacher_correct.astype(np.int8)
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        diff[rng.integers(0, len(diff), size=(min(chunk, samples - start), len(diff)))].mean(axis=1)
        for start in range(0, samples, chunk)
    ])
    return 100.0 * float(diff.mean()), 100.0 * float(np.quantile(means, 1 - confidence))


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def check_threshold(name: str, value: float, threshold: float, *, at_most: bool, unit: str,
                    what: str) -> Check:
    if not _finite(value, threshold):
        return failed_input(name, f"{what} is not a finite number ({value}): failing closed")
    passed = value <= threshold if at_most else value >= threshold
    relation = ("<=" if passed else ">") if at_most else (">=" if passed else "<")
    return Check(name, value, threshold, passed, f"{what} {value:.3g}{unit} {relation} {threshold:.3g}{unit}")


def teacher_margin(teacher_top1: float, labels: np.ndarray, min_margin: float) -> Check:
    """Is the teacher clearly better than always answering the most common category? If not,
    parity with it proves nothing, however the student compares."""
    baseline = majority_baseline(labels)
    if not _finite(teacher_top1, baseline):
        return failed_input("teacher_margin", f"teacher top-1 ({teacher_top1}) or the majority-class baseline "
                                              f"({baseline}) is not a finite number: failing closed")
    passed, reason = margin_verdict(teacher_top1, baseline, min_margin, "test")
    return Check("teacher_margin", teacher_top1 - baseline, min_margin, passed, reason)


def accuracy_parity(predictions: pd.DataFrame, gate: GateParams, column: str = "pytorch_fp32") -> Check:
    student = (predictions[column] == predictions["label"]).to_numpy()
    teacher = (predictions["teacher"] == predictions["label"]).to_numpy()
    point, lower = paired_bootstrap(student, teacher, gate.bootstrap_samples, gate.confidence, gate.seed)
    threshold = -gate.max_accuracy_drop
    passed = lower >= threshold
    return Check(
        "accuracy_parity", lower, threshold, passed,
        f"student - teacher top-1: {point:+.2f} pt, {gate.confidence:.0%} lower bound {lower:+.2f} pt "
        f"{'>=' if passed else '<'} {threshold:+.2f} pt over {len(predictions)} paired test images",
    )


def category_drops(teacher: dict, student: dict, gate: GateParams) -> Check:
    drops = {name: teacher["per_category"][name] - acc for name, acc in student["per_category"].items()}
    if not drops or not _finite(*drops.values()):
        return failed_input("category_drop", "per-category accuracy missing or not finite: failing closed")
    worst = max(drops, key=drops.get)
    return check_threshold("category_drop", drops[worst], gate.max_category_drop, at_most=True,
                           unit=" pt", what=f"largest per-category drop ('{worst}')")


def evaluate_policy(report: dict, predictions: pd.DataFrame, gate: GateParams,
                    promoted_top1: float | None, variant: str = "pytorch_fp32") -> list[Check]:
    """The checks of one candidate, the student in form `variant`."""
    student = report["candidates"][variant]
    checks = [] if gate.min_teacher_margin is None else [
        teacher_margin(report["teacher"]["top1"], predictions["label"].to_numpy(), gate.min_teacher_margin)]
    checks += [
        accuracy_parity(predictions, gate, variant),
        category_drops(report["teacher"], student, gate),
        check_threshold("size_mb", student["size_mb"], gate.max_size_mb, at_most=True, unit=" MB",
                        what="student size"),
        check_threshold("size_ratio", student["size_ratio"], gate.max_size_ratio, at_most=True, unit="x",
                        what="student/teacher size"),
        check_threshold("latency_ratio", student["cpu_latency_ratio"], gate.max_latency_ratio, at_most=True,
                        unit="x", what="student/teacher CPU latency at batch 1"),
    ]
    if FP32_FORM[variant] != variant:  # a compression that broke the model shows here first
        network = "student" if FP32_FORM[variant] == "pytorch_fp32" else "pruned network"
        checks.append(check_threshold("fp32_agreement", student["fp32_agreement"], gate.min_variant_agreement,
                                      at_most=False, unit="%", what=f"top-1 agreement with the fp32 {network}"))
    if gate.min_accuracy is not None:
        checks.append(check_threshold("min_accuracy", student["top1"], gate.min_accuracy, at_most=False,
                                      unit="%", what="student top-1"))
    if promoted_top1 is not None:
        checks.append(check_threshold("no_regression", student["top1"], promoted_top1 - gate.max_regression,
                                      at_most=False, unit="%",
                                      what=f"student top-1 vs promoted {promoted_top1:.2f}% - margin"))
    return checks


def choose(passed: list[str], candidates: dict[str, dict], gate: GateParams) -> str | None:
    """The variant to promote: among those that passed and gate.variants allows, by gate.prefer."""
    eligible = [v for v in gate.variants if v in passed]
    if not eligible:
        return None
    if gate.prefer == "smallest":
        return min(eligible, key=lambda v: candidates[v]["size_mb"])
    if gate.prefer == "fastest":
        return min(eligible, key=lambda v: candidates[v]["cpu"]["latency_ms_p50"])
    return eligible[0]
