"""Stage `evaluate`: the teacher and every variant of the student on the held-out test split,
each through its own preprocessing (read from its metadata) and runtime.

    vgg2resnet evaluate          # or: dvc repro evaluate

The test split is used here only: model selection and EMA use val, int8 calibration uses train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from vgg2resnet import atomic
from vgg2resnet.artifacts import CONFUSION_MODELS, Artifacts
from vgg2resnet.config import FP32_FORM, Params, built_variants
from vgg2resnet.data.categories import data_categories
from vgg2resnet.data.datasets import eval_loader, load_split
from vgg2resnet.data.loaders import with_progress
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.evaluation.metrics import (
    Outcomes,
    classification_report,
    collect_outcomes,
    measure_latency,
)
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.models.builders import count_flops, count_parameters
from vgg2resnet.models.checkpoint import load_model, read_meta
from vgg2resnet.models.variants import TorchRunner, load_runner
from vgg2resnet.runtime import select_device

log = logging.getLogger(__name__)
SPLIT = "test"
CPU = torch.device("cpu")


def _latency(params: Params, forward: Callable, size: int, device: torch.device) -> dict[str, float]:
    e = params.evaluate
    return measure_latency(forward, size, device, batch_size=e.latency_batch_size, warmup=e.latency_warmup,
                           runs=e.latency_runs)


def _report(params: Params, path: Path, sidecar: dict, outcomes: Outcomes, categories: list[str]) -> dict:
    return {
        **classification_report(outcomes, categories, params.evaluate.calibration_bins),
        "size_mb": path.stat().st_size / 1e6,
        "sha256": sidecar["sha256"],
    }


def evaluate_teacher(params: Params, categories: list[str]) -> tuple[dict, Outcomes]:
    path = Artifacts(params).teacher
    model, meta = load_model(path, categories)
    loader = eval_loader(params, SPLIT, categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    outcomes = collect_outcomes(model.eval(), with_progress(loader, "evaluate teacher"))
    size = meta["preprocessing"]["image_size"]
    report = {**_report(params, path, read_meta(path), outcomes, categories),
              "parameters": count_parameters(model), "flops": count_flops(model, size),
              "cpu": _latency(params, model, size, CPU)}
    device = select_device(params.runtime)
    if device.type == "cuda":
        report["cuda"] = _latency(params, model.to(device), size, device)
    return report, outcomes


def evaluate_variant(params: Params, variant: str, categories: list[str]) -> tuple[dict, Outcomes]:
    path = Artifacts(params).student(variant)
    runner, meta = load_runner(path, categories, CPU)
    loader = eval_loader(params, SPLIT, categories, params.evaluate.batch_size,
                         transform_from_meta(meta["preprocessing"]))
    outcomes = collect_outcomes(lambda images: runner(images)[0], with_progress(loader, f"evaluate {variant}"))
    size = meta["preprocessing"]["image_size"]
    report = {**_report(params, path, read_meta(path), outcomes, categories),
              "variant": variant, "cpu": _latency(params, runner, size, CPU)}
    # An ONNX form has its network's FLOPs and parameters, counted in PyTorch when it was made.
    if isinstance(runner, TorchRunner):
        report.update(parameters=count_parameters(runner.model), flops=count_flops(runner.model, size))
    else:
        report.update(parameters=meta["parameters"], flops=meta["flops"])
    device = select_device(params.runtime)
    if device.type == "cuda":
        report["cuda"] = _latency(params, load_runner(path, categories, device)[0], size, device)
    return report, outcomes


def _agreement(a: Outcomes, b: Outcomes) -> float:
    return 100.0 * (a.predicted == b.predicted).float().mean().item()


def run(params: Params) -> dict:
    from dvclive import Live

    categories = data_categories(params)
    teacher, teacher_outcomes = evaluate_teacher(params, categories)
    candidates, outcomes = {}, {}
    for variant in built_variants(params):
        candidates[variant], outcomes[variant] = evaluate_variant(params, variant, categories)
    for variant, report in candidates.items():
        report.update({
            "agreement": _agreement(teacher_outcomes, outcomes[variant]),
            "fp32_agreement": _agreement(outcomes[FP32_FORM[variant]], outcomes[variant]),
            "size_ratio": report["size_mb"] / teacher["size_mb"],
            "flops_ratio": report["flops"] / teacher["flops"],
            "cpu_latency_ratio": report["cpu"]["latency_ms_p50"] / teacher["cpu"]["latency_ms_p50"],
        })
    labels = teacher_outcomes.labels
    report = {"split": SPLIT, "images": len(labels), "categories": categories,
              "manifest_sha256": manifest_hash(params), "teacher": teacher, "candidates": candidates}
    layout = Artifacts(params)
    atomic.write_json(layout.evaluation_report, report)
    names = [categories[i] for i in labels.tolist()]
    # One row per test image in manifest order, named by its manifest path: the gate report's
    # gallery shows the images on which the models disagree.
    columns = {"path": load_split(layout.manifest, SPLIT)["path"].to_numpy(), "label": labels.numpy(),
               "category": names}
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
                live.summary[name].update({k: model[k] for k in ("agreement", "size_ratio", "flops_ratio",
                                                                  "cpu_latency_ratio")})
            if name in CONFUSION_MODELS:
                live.log_sklearn_plot("confusion_matrix", names, [categories[i] for i in predictions[name]],
                                      name=layout.confusion(name).name)
    log.info("test top-1: teacher %.2f%% (%.1f MB, %.1f ms); %s", teacher["top1"], teacher["size_mb"],
             teacher["cpu"]["latency_ms_p50"],
             "; ".join(f"{v} {c['top1']:.2f}% ({c['size_mb']:.1f} MB, {c['cpu']['latency_ms_p50']:.1f} ms)"
                       for v, c in candidates.items()))
    return {"teacher_top1": teacher["top1"], **{f"{v}_top1": c["top1"] for v, c in candidates.items()},
            **{f"{v}_size_ratio": c["size_ratio"] for v, c in candidates.items()}}
