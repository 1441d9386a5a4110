"""`fit`: epochs of train_one_epoch with resume, EMA, validation, dvclive logging and DDP."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vgg2resnet.config import RuntimeParams, TrainParams
from vgg2resnet.data.datasets import SeededViews
from vgg2resnet.distill.loop import (
    TeacherFn,
    build_ema,
    build_optimizer,
    build_scheduler,
    epoch_items,
    evaluate,
    load_state,
    save_state,
    train_one_epoch,
)
from vgg2resnet.runtime import Runtime

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """Identifies a training run by everything that shapes its result, for safe resume."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Distillation:
    """The teacher's part of the objective; absent for plain supervised training."""

    teacher: TeacherFn
    temperature: float
    alpha: float
    cache_views: int | None = None  # draw views from the K cached ones; None: a fresh view per epoch
    check: Callable[[int], float] | None = None  # per-epoch cache check, returns the worst difference


def fit(model: nn.Module, train_views: SeededViews, val_loader: DataLoader, params: TrainParams,
        runtime: Runtime, runtime_params: RuntimeParams, *, state_path: Path, fingerprint: str,
        live_dir: Path, distillation: Distillation | None = None, freeze_epochs: int = 0,
        backbone_lr_mult: float = 1.0, ema_decay: float | None = None) -> tuple[nn.Module, dict]:
    """Train and return (the model to save: the EMA copy when enabled, last epoch's metrics)."""
    from dvclive import Live

    model = model.to(runtime.device)
    if runtime_params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, params, backbone_lr_mult)
    per_rank = math.ceil(len(train_views) / runtime.world_size)
    steps_per_epoch = math.ceil(per_rank / params.batch_size)
    if params.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, params, steps_per_epoch, freeze_epochs)
    ema = build_ema(model, ema_decay)

    start_epoch, metrics = 0, {}
    state = load_state(state_path, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        start_epoch, metrics = state["epoch"], state["metrics"]
        if runtime.is_main:
            log.info("resuming from %s after epoch %d of %d", state_path, start_epoch, params.epochs)

    trained = DistributedDataParallel(model) if runtime.distributed else model
    if runtime_params.compile and runtime.device.type == "cuda":
        trained = torch.compile(trained)  # worth its compile time on a GPU only
    live = Live(str(live_dir), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None,
                report=None) if runtime.is_main else None
    pin = runtime_params.pin_memory and runtime.device.type == "cuda"
    for epoch in range(start_epoch, params.epochs):
        items = epoch_items(len(train_views), epoch, runtime_params.seed,
                            distillation.cache_views if distillation else None, runtime)
        loader = DataLoader(train_views, sampler=items, batch_size=params.batch_size,
                            num_workers=runtime_params.num_workers, pin_memory=pin)
        metrics = train_one_epoch(
            trained, loader, optimizer, scheduler, runtime,
            teacher=distillation.teacher if distillation else None,
            temperature=distillation.temperature if distillation else 1.0,
            alpha=distillation.alpha if distillation else 0.0,
            label_smoothing=params.label_smoothing, grad_clip_norm=params.grad_clip_norm, ema=ema,
            channels_last=runtime_params.channels_last, max_steps=params.max_steps_per_epoch,
            desc=f"epoch {epoch + 1}/{params.epochs}",
        )
        if distillation is not None and distillation.check is not None:
            metrics["cache_max_abs_diff"] = distillation.check(epoch)
        if runtime.is_main:
            evaluated = ema.module if ema is not None else model
            metrics.update({f"val_{k}": v for k, v in evaluate(evaluated, val_loader, runtime).items()})
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()
            log.info("epoch %d/%d: %s", epoch + 1, params.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            save_state(state_path, epoch=epoch + 1, fingerprint=fingerprint, metrics=metrics,
                       model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), rng=torch.get_rng_state(),
                       ema=ema.state_dict() if ema is not None else None)
        if runtime.distributed:
            dist.barrier()
    if live is not None:
        live.end()
    return (ema.module if ema is not None else model), metrics


def record_summary(live_dir: Path, metrics: dict) -> None:
    """Metrics of a stage that did not train (an imported model), in the same dvclive layout."""
    from dvclive import Live

    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for key, value in metrics.items():
            live.summary[key] = value
