"""Each model the gate weighs, on the held-out test split: the teacher and every variant of the
student, each through its own preprocessing (read from its metadata) and runtime, with its
metrics, size, FLOPs and latency, and its agreement with the teacher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import FP32_FORM, Params
from vgg2resnet.data.datasets import eval_loader
from vgg2resnet.data.loaders import with_progress
from vgg2resnet.data.transforms import transform_from_meta
from vgg2resnet.evaluation.metrics import Outcomes, classification_report, collect_outcomes, measure_latency
from vgg2resnet.models.builders import count_flops, count_parameters
from vgg2resnet.models.checkpoint import load_model, read_meta
from vgg2resnet.models.variants import TorchRunner, load_runner
from vgg2resnet.training.placement import select_device

SPLIT = "test"  # model selection and EMA use val, int8 calibration uses train
CPU = torch.device("cpu")


def _latency(params: Params, forward: Callable, size: int, device: torch.device) -> dict[str, float]:
    e = params.evaluate
    return measure_latency(
        forward, size, device, batch_size=e.latency_batch_size, warmup=e.latency_warmup, runs=e.latency_runs
    )


def _report(params: Params, path: Path, sidecar: dict, outcomes: Outcomes, categories: list[str]) -> dict:
    return {
        **classification_report(outcomes, categories, params.evaluate.calibration_bins),
        "size_mb": path.stat().st_size / 1e6,
        "sha256": sidecar["sha256"],
    }


def outcomes_on_test_split(params: Params, categories: list[str], forward: Callable, meta: dict, desc: str) -> Outcomes:
    """A model's outcomes on the test split, through its own preprocessing (from its metadata)."""
    loader = eval_loader(
        params, SPLIT, categories, params.evaluate.batch_size, transform_from_meta(meta["preprocessing"])
    )
    return collect_outcomes(forward, with_progress(loader, desc))


def evaluate_teacher(params: Params, categories: list[str]) -> tuple[dict, Outcomes]:
    path = Artifacts(params).teacher
    model, meta = load_model(path, categories)
    outcomes = outcomes_on_test_split(params, categories, model.eval(), meta, "evaluate teacher")
    size = meta["preprocessing"]["image_size"]
    report = {
        **_report(params, path, read_meta(path), outcomes, categories),
        "parameters": count_parameters(model),
        "flops": count_flops(model, size),
        "cpu": _latency(params, model, size, CPU),
    }
    device = select_device(params.runtime)
    if device.type == "cuda":
        report["cuda"] = _latency(params, model.to(device), size, device)
    return report, outcomes


def evaluate_variant(params: Params, variant: str, categories: list[str]) -> tuple[dict, Outcomes]:
    path = Artifacts(params).student(variant)
    runner, meta = load_runner(path, categories, CPU)
    outcomes = outcomes_on_test_split(params, categories, lambda images: runner(images)[0], meta, f"evaluate {variant}")
    size = meta["preprocessing"]["image_size"]
    report = {
        **_report(params, path, read_meta(path), outcomes, categories),
        "variant": variant,
        "cpu": _latency(params, runner, size, CPU),
    }
    # An ONNX form has its network's FLOPs and parameters, counted in PyTorch when it was made.
    if isinstance(runner, TorchRunner):
        report.update(parameters=count_parameters(runner.model), flops=count_flops(runner.model, size))
    else:
        report.update(parameters=meta["parameters"], flops=meta["flops"])
    device = select_device(params.runtime)
    if device.type == "cuda":
        report["cuda"] = _latency(params, load_runner(path, categories, device)[0], size, device)
    return report, outcomes


def agreement(a: Outcomes, b: Outcomes) -> float:
    return 100.0 * (a.predicted == b.predicted).float().mean().item()


def compare_with_teacher(
    teacher: dict, teacher_outcomes: Outcomes, candidates: dict[str, dict], outcomes: dict[str, Outcomes]
) -> None:
    """Add to each candidate's report its agreement with the teacher and with its own fp32 form,
    and its size, FLOPs and CPU latency as ratios of the teacher's."""
    for variant, report in candidates.items():
        report.update(
            {
                "agreement": agreement(teacher_outcomes, outcomes[variant]),
                "fp32_agreement": agreement(outcomes[FP32_FORM[variant]], outcomes[variant]),
                "size_ratio": report["size_mb"] / teacher["size_mb"],
                "flops_ratio": report["flops"] / teacher["flops"],
                "cpu_latency_ratio": report["cpu"]["latency_ms_p50"] / teacher["cpu"]["latency_ms_p50"],
            }
        )
