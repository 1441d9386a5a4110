"""The promotion policy: every check records its value, threshold, verdict and a one-line reason.

Every variant of the student (fp32 PyTorch, fp32 ONNX, int8 ONNX, and the pruned network's fp32
and int8 ONNX) is a candidate that meets the same checks on its own predictions, bytes and
latency. The two accuracy checks put the burden of proof where its error hurts most:
- accuracy parity (non-inferiority) passes only on the lower bound of a paired bootstrap
  interval of (candidate - teacher) top-1, so a lucky small test set cannot pass a worse one;
- the per-category check fails only on a drop that is significant after correcting for the
  number of categories, so chance alone does not fail a good student on a data set of 1,000
  categories. `benchmarks/gate_power.py` measures both checks' error rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
from scipy.stats import binom
from statsmodels.stats.proportion import proportion_confint

from vgg2resnet.config import FP32_FORM, GateParams
from vgg2resnet.evaluation.metrics import majority_baseline, margin_verdict


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str
    details: dict | None = None  # a check's own numbers (per-category tests), for gate.json and the page

    def as_dict(self) -> dict:
        return asdict(self)


def failed_input(name: str, reason: str) -> Check:
    """A check that could not be computed: the gate fails closed."""
    return Check(name, None, None, False, reason)


def paired_bootstrap(
    student_correct: np.ndarray, teacher_correct: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """(point estimate, one-sided lower bound) of the top-1 difference in points.

    A resample's mean depends only on how many of its images only the student got right and
    how many only the teacher did, so each resample is drawn as those two counts (multinomial:
    the same distribution as resampling the images), and memory and time stay flat in the
    number of test images (resampled indices of 250,000 images are 2 MB per resample)."""
    diff = student_correct.astype(np.int8) - teacher_correct.astype(np.int8)
    n = len(diff)
    shares = [np.count_nonzero(diff == 1) / n, np.count_nonzero(diff == -1) / n]
    counts = np.random.default_rng(seed).multinomial(n, [*shares, max(0.0, 1 - sum(shares))], size=samples)
    means = (counts[:, 0] - counts[:, 1]) / n
    return 100.0 * float(diff.mean()), 100.0 * float(np.quantile(means, 1 - confidence))


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def check_threshold(name: str, value: float, threshold: float, *, at_most: bool, unit: str, what: str) -> Check:
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
        return failed_input(
            "teacher_margin",
            f"teacher top-1 ({teacher_top1}) or the majority-class baseline "
            f"({baseline}) is not a finite number: failing closed",
        )
    passed, reason = margin_verdict(teacher_top1, baseline, min_margin, "test")
    return Check("teacher_margin", teacher_top1 - baseline, min_margin, passed, reason)


def accuracy_parity(predictions: pd.DataFrame, gate: GateParams, column: str = "pytorch_fp32") -> Check:
    """Non-inferiority: the lower confidence bound of (student - teacher) top-1 must clear
    -gate.max_accuracy_drop. The burden of proof is on the student, so a small test split
    rejects good students too: the details say how often, and what split size would not."""
    student = (predictions[column] == predictions["label"]).to_numpy()
    teacher = (predictions["teacher"] == predictions["label"]).to_numpy()
    point, lower = paired_bootstrap(student, teacher, gate.bootstrap_samples, gate.confidence, gate.seed)
    threshold = -gate.max_accuracy_drop
    passed = lower >= threshold
    details = parity_resolution(float(np.mean(student != teacher)), len(predictions), gate)
    hint = (
        f"; at this split's {100 * details['disagreement']:.1f}% disagreement an equally accurate student "
        f"passes about {details['equal_student_passes']:.0%} of the time"
        + (
            f" (about {details['images_for_confidence']} paired test images would make it {gate.confidence:.0%})"
            if details["equal_student_passes"] < gate.confidence
            else ""
        )
    )
    return Check(
        "accuracy_parity",
        lower,
        threshold,
        passed,
        f"student - teacher top-1: {point:+.2f} pt, {gate.confidence:.0%} lower bound {lower:+.2f} pt "
        f"{'>=' if passed else '<'} {threshold:+.2f} pt over {len(predictions)} paired test images" + hint,
        details,
    )


def parity_resolution(disagreement: float, images: int, gate: GateParams) -> dict:
    """How well a test split resolves the parity margin (normal approximation): the chance that a
    student exactly as accurate as the teacher passes, and the paired test images that would
    make that chance gate.confidence. An image's paired difference is -1, 0 or 1, so with equal
    accuracy its variance is the share of images on which exactly one model is right."""
    z = NormalDist().inv_cdf(gate.confidence)
    margin = gate.max_accuracy_drop / 100.0
    if disagreement == 0:
        return {"disagreement": 0.0, "equal_student_passes": 1.0, "images_for_confidence": 1}
    passes = NormalDist().cdf(margin / math.sqrt(disagreement / images) - z)
    needed = math.ceil(disagreement * (2 * z / margin) ** 2) if margin > 0 else None
    return {"disagreement": disagreement, "equal_student_passes": passes, "images_for_confidence": needed}


def category_drops(predictions: pd.DataFrame, gate: GateParams, column: str = "pytorch_fp32") -> Check:
    """Does the student lose some category, for real and by more than gate.max_category_drop?

    With many categories of a few test images each, the largest of the raw per-category drops
    is large by chance alone, so the raw drop cannot be the verdict. Per category, on the paired
    test images: b images only the teacher gets right, c only the student gets right, and the
    drop is (b - c) / n. McNemar's exact test (McNemar, 1947; conditional on the b + c
    discordant images, b ~ Binomial(b + c, 1/2) when the two are equally good there) gives a
    one-sided p-value for "the student is worse on this category". Holm's step-down procedure
    (Holm, 1979) adjusts the p-values across categories. A category fails when its adjusted
    p-value is at most 1 - gate.confidence and its observed drop is above the threshold.

    Guarantee: a student no worse than the teacher on every category fails this check with
    probability at most 1 - gate.confidence, however many categories there are (Holm controls
    the family-wise error; the exact test holds at any sample size). The price is power: a
    category can fail only when it has enough test images (`too_few_images` lists those where
    not even losing every image the teacher gets right could be told from chance).
    """
    alpha = 1.0 - gate.confidence
    teacher = (predictions["teacher"] == predictions["label"]).to_numpy()
    student = (predictions[column] == predictions["label"]).to_numpy()
    frame = pd.DataFrame(
        {
            "category": predictions["category"].to_numpy(),
            "n": 1,
            "teacher_right": teacher,
            "b": teacher & ~student,
            "c": student & ~teacher,
        }
    )
    per = frame.groupby("category", sort=True).sum()
    if per.empty:
        return failed_input("category_drop", "no test predictions per category: failing closed")
    n, b, c = (per[k].to_numpy() for k in ("n", "b", "c"))
    drop = 100.0 * (b - c) / n
    p_value = binom.sf(b - 1, b + c, 0.5)  # P(X >= b), X ~ Binomial(b + c, 1/2); 1 when b + c = 0
    p_holm = holm(p_value)
    failing = (p_holm <= alpha) & (drop > gate.max_category_drop)
    # Simultaneous intervals (Bonferroni): Clopper-Pearson for b / (b + c), times the discordant share.
    low, high = proportion_confint(b, np.maximum(b + c, 1), alpha=alpha / len(per), method="beta")
    share = (b + c) / n
    # + 0.0: a category without disagreements has the interval [0, 0], not [-0, 0].
    rows = [
        {
            "category": str(name),
            "test_images": int(n[i]),
            "drop_pt": float(drop[i]),
            "interval_pt": [100.0 * share[i] * (2 * low[i] - 1) + 0.0, 100.0 * share[i] * (2 * high[i] - 1) + 0.0],
            "p_value": float(p_value[i]),
            "p_holm": float(p_holm[i]),
        }
        for i, name in enumerate(per.index)
    ]
    details = {
        "method": "McNemar's exact test per category, one-sided; Holm across categories",
        "confidence": gate.confidence,
        "categories": len(per),
        "failed": [row for row, f in zip(rows, failing) if f],
        "too_few_images": _too_few_images(per, alpha, gate.max_category_drop),
        "largest_drops": sorted(rows, key=lambda r: -r["drop_pt"])[:5],
    }
    worst = details["largest_drops"][0]
    if failing.any():
        named = "; ".join(
            f"'{r['category']}' {r['drop_pt']:.1f} pt (interval {r['interval_pt'][0]:.1f} to "
            f"{r['interval_pt'][1]:.1f} pt, Holm p = {r['p_holm']:.2g})"
            for r in details["failed"]
        )
        reason = (
            f"{len(details['failed'])} of {len(per)} categories dropped beyond {gate.max_category_drop:.3g} pt "
            f"at {gate.confidence:.0%} confidence after Holm's correction: {named}"
        )
    else:
        reason = (
            f"no category's drop is both beyond {gate.max_category_drop:.3g} pt and significant at "
            f"{gate.confidence:.0%} after Holm's correction over {len(per)} categories (largest observed: "
            f"'{worst['category']}' {worst['drop_pt']:.1f} pt, Holm p = {worst['p_holm']:.2g})"
        )
    if details["too_few_images"]:
        reason += f"; {len(details['too_few_images'])} categories have too few test images to judge"
    return Check("category_drop", worst["drop_pt"], gate.max_category_drop, not failing.any(), reason, details)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: the i-th smallest p-value times the number of
    hypotheses not yet rejected (m - i + 1), made non-decreasing, capped at 1; rejecting where
    the adjusted value is <= alpha controls the family-wise error at alpha. (statsmodels'
    `multipletests` gives the same values, but collects garbage on every call: 0.16 s in a
    process that holds torch.)"""
    order = np.argsort(p_values, kind="stable")
    ranked = p_values[order] * (len(p_values) - np.arange(len(p_values)))
    adjusted = np.empty(len(p_values))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(ranked))
    return adjusted


def _too_few_images(per: pd.DataFrame, alpha: float, threshold: float) -> list[dict]:
    """Categories where even a student wrong on every test image the teacher gets right could not
    fail: that loss's p-value, 2^-t for t such images, must clear Holm's first step, alpha / K,
    and its drop must exceed the threshold. `needed` is the test images that would do at the
    teacher's accuracy there (None when that accuracy is at or below the threshold itself)."""
    bits = math.log2(len(per) / alpha)  # a loss of t images is significant at step one when t > bits
    short = []
    for name, row in per.iterrows():
        accuracy = row["teacher_right"] / row["n"]
        if row["teacher_right"] > bits and 100.0 * accuracy > threshold:
            continue
        needed = math.floor(bits / accuracy) + 1 if 100.0 * accuracy > threshold else None
        short.append(
            {"category": str(name), "test_images": int(row["n"]), "teacher_top1": 100.0 * accuracy, "needed": needed}
        )
    return short


def evaluate_policy(
    report: dict,
    predictions: pd.DataFrame,
    gate: GateParams,
    promoted_top1: float | None,
    variant: str = "pytorch_fp32",
) -> list[Check]:
    """The checks of one candidate, the student in form `variant`."""
    student = report["candidates"][variant]
    checks = (
        []
        if gate.min_teacher_margin is None
        else [teacher_margin(report["teacher"]["top1"], predictions["label"].to_numpy(), gate.min_teacher_margin)]
    )
    checks += [
        accuracy_parity(predictions, gate, variant),
        category_drops(predictions, gate, variant),
        check_threshold("size_mb", student["size_mb"], gate.max_size_mb, at_most=True, unit=" MB", what="student size"),
        check_threshold(
            "size_ratio",
            student["size_ratio"],
            gate.max_size_ratio,
            at_most=True,
            unit="x",
            what="student/teacher size",
        ),
        check_threshold(
            "latency_ratio",
            student["cpu_latency_ratio"],
            gate.max_latency_ratio,
            at_most=True,
            unit="x",
            what="student/teacher CPU latency at batch 1",
        ),
    ]
    if FP32_FORM[variant] != variant:  # a compression that broke the model shows here first
        network = "student" if FP32_FORM[variant] == "pytorch_fp32" else "pruned network"
        checks.append(
            check_threshold(
                "fp32_agreement",
                student["fp32_agreement"],
                gate.min_variant_agreement,
                at_most=False,
                unit="%",
                what=f"top-1 agreement with the fp32 {network}",
            )
        )
    if gate.min_accuracy is not None:
        checks.append(
            check_threshold(
                "min_accuracy", student["top1"], gate.min_accuracy, at_most=False, unit="%", what="student top-1"
            )
        )
    if promoted_top1 is not None:
        checks.append(
            check_threshold(
                "no_regression",
                student["top1"],
                promoted_top1 - gate.max_regression,
                at_most=False,
                unit="%",
                what=f"student top-1 vs promoted {promoted_top1:.2f}% - margin",
            )
        )
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
