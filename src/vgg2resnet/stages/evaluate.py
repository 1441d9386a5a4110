"""Stage `evaluate`: teacher and student on the held-out test split, same preprocessing each.

    vgg2resnet evaluate          # or: dvc repro evaluate

The test split is used here only: model selection and EMA use val.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from vgg2resnet import atomic
from vgg2resnet.config import Params
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.distill.loop import predict
from vgg2resnet.evaluation.latency import measure_latency
from vgg2resnet.evaluation.metrics import classification_report
from vgg2resnet.models.builders import count_parameters
from vgg2resnet.models.checkpoint import load_model, read_meta
from vgg2resnet.runtime import Runtime, select_device
from vgg2resnet.stages.training import data_categories, eval_loader, manifest_hash

log = logging.getLogger(__name__)
SPLIT = "test"


def evaluation_paths(params: Params) -> dict:
    root = params.paths.metrics_dir / "evaluate"
    return {"live": root, "report": root / "report.json", "predictions": root / "predictions.parquet"}


def _evaluate_model(params: Params, name: str, categories: list[str]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    path = params.paths.models_dir / f"{name}.pt"
    model, meta = load_model(path, categories)
    e = params.evaluate
    loader = eval_loader(params, SPLIT, categories, e.batch_size, transform_from_meta(meta["preprocessing"]))
    cpu = Runtime(device=torch.device("cpu"))
    logits = predict(model, loader, cpu)
    labels = loader.dataset.labels
    size = meta["preprocessing"]["image_size"]
    report = {
        **classification_report(logits, labels, categories, e.calibration_bins),
        "parameters": count_parameters(model),
        "size_mb": path.stat().st_size / 1e6,
        "sha256": read_meta(path)["sha256"],
        "cpu": measure_latency(model, size, torch.device("cpu"), batch_size=e.latency_batch_size,
                               warmup=e.latency_warmup, runs=e.latency_runs),
    }
    device = select_device(params.runtime)
    if device.type == "cuda":
        report["cuda"] = measure_latency(model, size, device, batch_size=e.latency_batch_size,
                                         warmup=e.latency_warmup, runs=e.latency_runs)
    return report, logits, labels


def run(params: Params) -> dict:
    from dvclive import Live

    categories = data_categories(params)
    teacher, teacher_logits, labels = _evaluate_model(params, "teacher", categories)
    student, student_logits, student_labels = _evaluate_model(params, "student", categories)
    teacher_pred, student_pred = teacher_logits.argmax(1), student_logits.argmax(1)
    report = {
        "split": SPLIT,
        "images": len(labels),
        "categories": categories,
        "manifest_sha256": manifest_hash(params),
        "teacher": teacher,
        "student": student,
        "agreement": 100.0 * (teacher_pred == student_pred).float().mean().item(),
        "size_ratio": student["size_mb"] / teacher["size_mb"],
        "cpu_latency_ratio": student["cpu"]["latency_ms_p50"] / teacher["cpu"]["latency_ms_p50"],
    }
    paths = evaluation_paths(params)
    atomic.write_json(paths["report"], report)
    names = [categories[i] for i in labels.tolist()]
    predictions = pd.DataFrame({
        "label": labels.numpy(), "teacher": teacher_pred.numpy(), "student": student_pred.numpy(),
        "student_confidence": student_logits.softmax(1).max(1).values.numpy(), "category": names,
    })
    with atomic.atomic_path(paths["predictions"]) as tmp:
        predictions.to_parquet(tmp, index=False)
    with Live(str(paths["live"]), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for key in ("agreement", "size_ratio", "cpu_latency_ratio"):
            live.summary[key] = report[key]
        for name, model in (("teacher", teacher), ("student", student)):
            live.summary[name] = {k: model[k] for k in ("top1", "top5", "macro_f1", "ece", "size_mb")}
            live.summary[name]["cpu_latency_ms_p50"] = model["cpu"]["latency_ms_p50"]
            live.log_sklearn_plot("confusion_matrix", [categories[i] for i in labels.tolist()],
                                  [categories[i] for i in predictions[name]], name=f"confusion_{name}.json")
    log.info("test top-1: teacher %.2f%%, student %.2f%% (agreement %.1f%%); size %.1f MB vs %.1f MB "
             "(%.2fx); CPU latency ratio %.2f", teacher["top1"], student["top1"], report["agreement"],
             teacher["size_mb"], student["size_mb"], report["size_ratio"], report["cpu_latency_ratio"])
    return {"teacher_top1": teacher["top1"], "student_top1": student["top1"],
            "size_ratio": report["size_ratio"], "cpu_latency_ratio": report["cpu_latency_ratio"]}
