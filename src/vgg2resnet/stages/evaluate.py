"""Stage `evaluate`: the teacher and every variant of the student on the held-out test split,
each through its own preprocessing (read from its metadata) and runtime.

    vgg2resnet evaluate          # or: dvc repro evaluate

The test split is used here only: model selection and EMA use val, int8 calibration uses train.
"""

from __future__ import annotations

import logging

import pandas as pd

from vgg2resnet import atomic
from vgg2resnet.artifacts import CONFUSION_MODELS, Artifacts
from vgg2resnet.config import Params, built_variants
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import load_split
from vgg2resnet.evaluation.candidates import SPLIT, compare_with_teacher, evaluate_teacher, evaluate_variant
from vgg2resnet.lineage import manifest_hash

log = logging.getLogger(__name__)


def run(params: Params) -> dict:
    from dvclive import Live

    categories = data_categories(params)
    teacher, teacher_outcomes = evaluate_teacher(params, categories)
    candidates, outcomes = {}, {}
    for variant in built_variants(params):
        candidates[variant], outcomes[variant] = evaluate_variant(params, variant, categories)
    compare_with_teacher(teacher, teacher_outcomes, candidates, outcomes)
    labels = teacher_outcomes.labels
    report = {
        "split": SPLIT,
        "images": len(labels),
        "categories": categories,
        "manifest_sha256": manifest_hash(params),
        "teacher": teacher,
        "candidates": candidates,
    }
    layout = Artifacts(params)
    atomic.write_json(layout.evaluation_report, report)
    names = [categories[i] for i in labels.tolist()]
    # One row per test image in manifest order, named by its manifest path: the gate report's
    # gallery shows the images on which the models disagree.
    columns = {
        "path": load_split(layout.manifest, SPLIT)["path"].to_numpy(),
        "label": labels.numpy(),
        "category": names,
    }
    for name, values in (("teacher", teacher_outcomes), *outcomes.items()):
        columns[name] = values.predicted.numpy()
        columns[f"{name}_confidence"] = values.confidence.numpy()
    predictions = pd.DataFrame(columns)
    with atomic.atomic_path(layout.predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    with Live(str(layout.evaluation_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for name, model in (("teacher", teacher), *candidates.items()):
            live.summary[name] = {k: model[k] for k in ("top1", "top5", "macro_f1", "ece", "size_mb", "flops")}
            live.summary[name]["cpu_latency_ms_p50"] = model["cpu"]["latency_ms_p50"]
            if name != "teacher":
                live.summary[name].update(
                    {k: model[k] for k in ("agreement", "size_ratio", "flops_ratio", "cpu_latency_ratio")}
                )
            if name in CONFUSION_MODELS:
                live.log_sklearn_plot(
                    "confusion_matrix",
                    names,
                    [categories[i] for i in predictions[name]],
                    name=layout.confusion(name).name,
                )
    log.info(
        "test top-1: teacher %.2f%% (%.1f MB, %.1f ms); %s",
        teacher["top1"],
        teacher["size_mb"],
        teacher["cpu"]["latency_ms_p50"],
        "; ".join(
            f"{v} {c['top1']:.2f}% ({c['size_mb']:.1f} MB, {c['cpu']['latency_ms_p50']:.1f} ms)"
            for v, c in candidates.items()
        ),
    )
    return {
        "teacher_top1": teacher["top1"],
        **{f"{v}_top1": c["top1"] for v, c in candidates.items()},
        **{f"{v}_size_ratio": c["size_ratio"] for v, c in candidates.items()},
    }
