"""`fit`: epochs of train_one_epoch with resume, EMA, validation, best-epoch averaging, dvclive
logging and DDP."""

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
from vgg2resnet.data.loaders import EpochItems, make_loader
from vgg2resnet.distill.averaging import BestEpochs, average_best, kept_epochs_folder
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
from vgg2resnet.runtime import Runtime, ranks_agree

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
        backbone_lr_mult: float = 1.0, ema_decay: float | None = None,
        average: int | None = None) -> tuple[nn.Module, dict]:
    """Train and return (the model to save, last epoch's metrics and how the model was chosen).

    The model to save is the EMA copy when enabled, else the last epoch's weights; with
    `average` = K, the average of the K best epochs (or the best epoch, if the average
    validates worse). `val_accuracy_final`, `_ema`, `_best_epoch`, `_averaged` and `_selected`
    record the candidates side by side."""
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
    best = BestEpochs(kept_epochs_folder(state_path), average) if average and runtime.is_main else None
    state = load_state(state_path, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        start_epoch, metrics = state["epoch"], state["metrics"]
        if best is not None:
            best.kept = state["best"]
        if runtime.is_main:
            log.info("resuming from %s after epoch %d of %d", state_path, start_epoch, params.epochs)

    trained = DistributedDataParallel(model) if runtime.distributed else model
    if runtime_params.compile and runtime.device.type == "cuda":
        trained = torch.compile(trained)  # worth its compile time on a GPU only
    live = Live(str(live_dir), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None,
                report=None) if runtime.is_main else None
    items = EpochItems()
    loader = make_loader(train_views, runtime_params, params.batch_size, items)  # its workers serve every epoch
    for epoch in range(start_epoch, params.epochs):
        items.set_items(epoch_items(len(train_views), epoch, runtime_params.seed,
                                    distillation.cache_views if distillation else None, runtime))
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
            if best is not None:
                best.offer(epoch + 1, metrics["val_accuracy"], evaluated)
            save_state(state_path, epoch=epoch + 1, fingerprint=fingerprint, metrics=metrics,
                       model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), rng=torch.get_rng_state(),
                       ema=ema.state_dict() if ema is not None else None,
                       best=best.kept if best is not None else None)
            if best is not None:
                best.prune()
        if runtime.distributed:
            dist.barrier()
    final = ema.module if ema is not None else model
    if runtime.distributed:
        if not ranks_agree(final, runtime):
            raise RuntimeError("distributed ranks ended with different weights; do not use this model")
        if runtime.is_main:
            log.info("all %d ranks hold identical weights", runtime.world_size)
    if live is not None:
        final, chosen = _choose(final, model, ema is not None, metrics, best, train_views, val_loader,
                                params, runtime, runtime_params, distillation)
        metrics = {**metrics, **chosen}
        for key, value in chosen.items():
            live.summary[key] = value
        live.end()
    return final, metrics


def _choose(final: nn.Module, raw: nn.Module, has_ema: bool, metrics: dict, best: BestEpochs | None,
            train_views: SeededViews, val_loader: DataLoader, params: TrainParams, runtime: Runtime,
            runtime_params: RuntimeParams, distillation: Distillation | None) -> tuple[nn.Module, dict]:
    """The model to save after the last epoch, and every candidate's val accuracy beside it."""
    def validate(candidate: nn.Module) -> float:
        return evaluate(candidate, val_loader, runtime)["accuracy"]

    chosen = {"val_accuracy_final": validate(raw) if has_ema else metrics["val_accuracy"],
              "val_accuracy_ema": metrics["val_accuracy"] if has_ema else None,
              "val_accuracy_best_epoch": None, "val_accuracy_averaged": None,
              "selected": "ema" if has_ema else "final", "val_accuracy_selected": metrics["val_accuracy"]}
    if best is None:
        return final, chosen
    # BatchNorm statistics for the average come from one more seeded pass over the train split.
    items = epoch_items(len(train_views), params.epochs, runtime_params.seed,
                        distillation.cache_views if distillation else None, Runtime(device=runtime.device))
    bn_loader = make_loader(train_views, runtime_params, params.batch_size, items)
    final, averaged = average_best(final, best, bn_loader, params.max_steps_per_epoch, validate, runtime.device)
    selected = averaged["val_accuracy_averaged" if averaged["selected"] == "averaged" else "val_accuracy_best_epoch"]
    return final, {**chosen, **averaged, "val_accuracy_selected": selected}


def record_summary(live_dir: Path, metrics: dict) -> None:
    """Metrics of a stage that did not train (an imported model), in the same dvclive layout."""
    from dvclive import Live

    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for key, value in metrics.items():
            live.summary[key] = value
