"""A label-free health signal: on images the service kept (opt-in), does the teacher still
agree with the student as often as it did on the test split? A drop means the student has
left the teacher's behaviour on today's inputs, drift or not."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import binomtest

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params
from vgg2resnet.data.images import decode
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.models.checkpoint import load_model


def teacher_agreement(rows: pd.DataFrame, params: Params) -> dict | None:
    """Agreement (%) of the teacher with the logged student predictions on kept images; None if none."""
    if "retained_image" not in rows or not rows["retained_image"].fillna("").astype(bool).any():
        return None
    kept = rows[rows["retained_image"].fillna("").astype(bool)]
    paths = [params.monitoring.retained_dir / name for name in kept["retained_image"]]
    present = [i for i, p in enumerate(paths) if Path(p).is_file()]
    if not present:
        return None
    layout = Artifacts(params)
    teacher, meta = load_model(layout.teacher)
    transform = transform_from_meta(meta["preprocessing"])
    with torch.no_grad():
        batch = torch.stack([transform(decode(paths[i])) for i in present])
        predicted = [meta["categories"][i] for i in teacher(batch).argmax(1).tolist()]
    logged = kept["prediction"].iloc[present].tolist()
    agreed = sum(t == s for t, s in zip(predicted, logged))
    agreement = 100.0 * agreed / len(present)
    # A window of n kept images measures agreement to within about 100 * sqrt(p(1-p)/n) points,
    # so the alert asks whether even the window's one-sided upper bound (Wilson) falls more than
    # max_agreement_drop below the test split: a thin window cannot raise it by chance.
    m = params.monitoring
    upper = 100.0 * float(
        binomtest(agreed, len(present))
        .proportion_ci(confidence_level=2 * m.agreement_confidence - 1, method="wilson")
        .high
    )
    report = layout.evaluation_report
    baseline = _test_split_agreement(report, kept) if report.is_file() else None
    drop = None if baseline is None else baseline - agreement
    return {
        "sampled": len(present),
        "agreement": agreement,
        "agreement_upper_bound": upper,
        "test_split_agreement": baseline,
        "drop": drop,
        "alert": baseline is not None and baseline - upper > m.max_agreement_drop,
    }


def _test_split_agreement(report: Path, kept: pd.DataFrame) -> float | None:
    """The teacher agreement on the test split of the variant that served the kept images."""
    import bentoml
    from bentoml.exceptions import NotFound

    candidates = json.loads(report.read_text()).get("candidates", {})
    try:
        variant = bentoml.models.get(kept["model_tag"].iloc[-1]).info.metadata.get("variant", "pytorch_fp32")
    except (NotFound, KeyError):
        variant = "pytorch_fp32"
    return candidates.get(variant, {}).get("agreement")
