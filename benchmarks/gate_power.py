"""How often the gate's accuracy checks are wrong: equally good students rejected, and truly
worse ones let through, on simulated paired teacher/student predictions.

    python benchmarks/gate_power.py                        # the configurations below, 200 trials each
    python benchmarks/gate_power.py --configs 100x50 --trials 1000

Runs by hand (CI runs it at 2 trials so that it cannot rot). Each trial draws, per test image,
one of four outcomes (both right, only the teacher right, only the student right, both wrong),
builds the predictions frame the evaluate stage writes, and runs the real policy functions
(`vgg2resnet.gate.policy.category_drops` and `accuracy_parity`) with the repository's gate
settings. The teacher is right on --teacher-top1 of the images, and the two disagree on
--disagreement of them, split evenly both ways. Per configuration (categories x test images
per category) it prints:

- category_drop false_reject_rate: the share of equally accurate students rejected;
- category_drop detect_rate: the share of students that are caught, and the dropped category
  named, when one category truly drops by twice gate.max_category_drop (the extra images
  the student gets wrong there are ones both got right);
- accuracy_parity false_reject_rate, and detect_rate for a student whose overall top-1 is
  twice gate.max_accuracy_drop below the teacher's;
- category_images_for_0.9: the smallest number of test images in the dropped category (of
  those tried, the others as configured) at which the drop is caught 90% of the time.

Goals (issue 37): false_reject_rate <= 0.05 for each check; detect_rate >= 0.9 where the
dropped category has at least 50 test images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vgg2resnet.config import GateParams, load_params
from vgg2resnet.gate.policy import accuracy_parity, category_drops

ROOT = Path(__file__).resolve().parents[1]


def outcome_shares(teacher_top1: float, disagreement: float, drop: float = 0.0) -> np.ndarray:
    """Shares of (both right, only teacher, only student, both wrong); `drop` moves images from
    'both right' to 'only the teacher right'."""
    only = disagreement / 2
    both = teacher_top1 - only - drop
    if both < 0:
        raise SystemExit(f"a teacher at {teacher_top1:.0%} cannot lose {drop:.0%} more: lower the drop")
    return np.array([both, only + drop, only, 1.0 - teacher_top1 - only])


def predictions(counts: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """The evaluate stage's frame from per-category outcome counts (categories x 4)."""
    labels, outcomes = [], []
    for label, row in enumerate(counts):
        labels.append(np.full(row.sum(), label))
        outcomes.append(np.repeat(np.arange(4), row))
    label, outcome = np.concatenate(labels), np.concatenate(outcomes)
    order = rng.permutation(len(label))
    label, outcome = label[order], outcome[order]
    teacher_right, student_right = np.isin(outcome, (0, 1)), np.isin(outcome, (0, 2))
    return pd.DataFrame(
        {
            "label": label,
            "category": [f"c{i:04d}" for i in label],
            "teacher": np.where(teacher_right, label, label + 1),
            "pytorch_fp32": np.where(student_right, label, label + 1),
        }
    )


def draw(
    categories: int,
    images: int,
    shares: np.ndarray,
    rng: np.random.Generator,
    planted: np.ndarray | None = None,
    planted_images: int | None = None,
) -> pd.DataFrame:
    counts = rng.multinomial(images, shares, size=categories)
    if planted is not None:
        counts[0] = rng.multinomial(planted_images or images, planted)
    return predictions(counts, rng)


def rates(
    categories: int, images: int, gate: GateParams, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, float]:
    equal = outcome_shares(args.teacher_top1, args.disagreement)
    category_drop = outcome_shares(args.teacher_top1, args.disagreement, 2 * gate.max_category_drop / 100)
    overall_drop = outcome_shares(args.teacher_top1, args.disagreement, 2 * gate.max_accuracy_drop / 100)
    result = dict.fromkeys(["category_false_reject", "category_detect", "parity_false_reject", "parity_detect"], 0.0)
    for _ in range(args.trials):
        frame = draw(categories, images, equal, rng)
        result["category_false_reject"] += not category_drops(frame, gate).passed
        result["parity_false_reject"] += not accuracy_parity(frame, gate).passed
        check = category_drops(draw(categories, images, equal, rng, category_drop), gate)
        result["category_detect"] += any(row["category"] == "c0000" for row in check.details["failed"])
        result["parity_detect"] += not accuracy_parity(draw(categories, images, overall_drop, rng), gate).passed
    return {name: count / args.trials for name, count in result.items()}


def images_for_detection(
    categories: int, images: int, gate: GateParams, args: argparse.Namespace, rng: np.random.Generator
) -> int | None:
    """The fewest test images in the dropped category (of --planted-images) caught 90% of the time."""
    equal = outcome_shares(args.teacher_top1, args.disagreement)
    planted = outcome_shares(args.teacher_top1, args.disagreement, 2 * gate.max_category_drop / 100)
    for size in args.planted_images:
        caught = sum(
            any(
                row["category"] == "c0000"
                for row in category_drops(draw(categories, images, equal, rng, planted, size), gate).details["failed"]
            )
            for _ in range(args.trials)
        )
        if caught >= 0.9 * args.trials:
            return size
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["10x45", "100x20", "100x50", "1000x50"],
        help="categories x test images per category",
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--disagreement", type=float, default=0.2)
    parser.add_argument("--teacher-top1", type=float, default=0.75)
    parser.add_argument("--planted-images", type=int, nargs="+", default=[50, 100, 150, 200, 300, 400])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gate = load_params(ROOT / "params.yaml").gate
    rng = np.random.default_rng(args.seed)
    print(
        f"gate: max_category_drop {gate.max_category_drop} pt, max_accuracy_drop {gate.max_accuracy_drop} pt, "
        f"confidence {gate.confidence}; teacher top-1 {args.teacher_top1:.0%}, disagreement "
        f"{args.disagreement:.0%}, {args.trials} trials per figure"
    )
    for config in args.configs:
        categories, images = (int(v) for v in config.lower().split("x"))
        start = time.perf_counter()
        found = rates(categories, images, gate, args, rng)
        needed = images_for_detection(categories, images, gate, args, rng)
        print(
            f"{config}: category_drop false_reject_rate={found['category_false_reject']:.3f} "
            f"detect_rate={found['category_detect']:.3f}; accuracy_parity "
            f"false_reject_rate={found['parity_false_reject']:.3f} detect_rate={found['parity_detect']:.3f}; "
            f"category_images_for_0.9={needed if needed is not None else f'>{max(args.planted_images)}'} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
