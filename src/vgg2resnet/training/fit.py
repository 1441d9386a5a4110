"""`fit`: epochs of train_one_epoch with resume, EMA, validation, best-epoch averaging, dvclive
logging and DDP."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vgg2resnet.data.datasets import SeededViews
from vgg2resnet.data.loaders import EpochItems, make_loader
from vgg2resnet.training.averaging import BestEpochs, average_best, kept_epochs_folder
from vgg2resnet.training.loop import (
    Training,
    Updates,
    build_ema,
    build_optimizer,
    build_scheduler,
    epoch_items,
    evaluate,
    load_state,
    save_state,
    train_one_epoch,
)
from vgg2resnet.training.placement import Placement, ranks_agree

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """Identifies a training run by everything that shapes its result, for safe resume."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunFiles:
    """Where a training run keeps what outlives a process: its resumable state (valid only for
    the same `fingerprint`) and its dvclive metrics."""

    state_path: Path
    fingerprint: str
    live_dir: Path


def fit(
    model: nn.Module, train_views: SeededViews, val_loader: DataLoader, training: Training, files: RunFiles
) -> tuple[nn.Module, dict]:
    """Train and return (the model to save, last epoch's metrics and how the model was chosen).

    The model to save is the EMA copy when enabled, else the last epoch's weights; with
    `training.average` = K, the average of the K best epochs (or the best epoch, if the average
    validates worse). `val_accuracy_final`, `_ema`, `_best_epoch`, `_averaged` and `_selected`
    record the candidates side by side."""
    from dvclive import Live

    params, runtime, placement, distillation = (
        training.params,
        training.runtime,
        training.placement,
        training.distillation,
    )
    model = model.to(placement.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, params, training.backbone_lr_mult)
    per_rank = math.ceil(len(train_views) / placement.world_size)
    steps_per_epoch = math.ceil(per_rank / params.batch_size)
    if params.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_steps_per_epoch)
    updates = Updates(
        optimizer,
        build_scheduler(optimizer, params, steps_per_epoch, training.freeze_epochs),
        build_ema(model, training.ema_decay),
    )

    start_epoch, metrics = 0, {}
    best = (
        BestEpochs(kept_epochs_folder(files.state_path), training.average)
        if training.average and placement.is_main
        else None
    )
    state = load_state(files.state_path, files.fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        updates.scheduler.load_state_dict(state["scheduler"])
        if updates.ema is not None:
            updates.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        start_epoch, metrics = state["epoch"], state["metrics"]
        if best is not None:
            best.kept = state["best"]
        if placement.is_main:
            log.info("resuming from %s after epoch %d of %d", files.state_path, start_epoch, params.epochs)

    trained = DistributedDataParallel(model) if placement.distributed else model
    if runtime.compile and placement.device.type == "cuda":
        trained = torch.compile(trained)  # worth its compile time on a GPU only
    live = (
        Live(str(files.live_dir), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        if placement.is_main
        else None
    )
    items = EpochItems()
    loader = make_loader(train_views, runtime, params.batch_size, items)  # its workers serve every epoch
    for epoch in range(start_epoch, params.epochs):
        items.set_items(epoch_items(len(train_views), epoch, runtime.seed, training.cache_views, placement))
        metrics = train_one_epoch(trained, loader, updates, training, desc=f"epoch {epoch + 1}/{params.epochs}")
        if distillation is not None and distillation.check is not None:
            metrics["cache_max_abs_diff"] = distillation.check(epoch)
        if placement.is_main:
            evaluated = updates.ema.module if updates.ema is not None else model
            metrics.update({f"val_{k}": v for k, v in evaluate(evaluated, val_loader, placement).items()})
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()
            log.info("epoch %d/%d: %s", epoch + 1, params.epochs, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if best is not None:
                best.offer(epoch + 1, metrics["val_accuracy"], evaluated)
            save_state(
                files.state_path,
                epoch=epoch + 1,
                fingerprint=files.fingerprint,
                metrics=metrics,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=updates.scheduler.state_dict(),
                rng=torch.get_rng_state(),
                ema=updates.ema.state_dict() if updates.ema is not None else None,
                best=best.kept if best is not None else None,
            )
            if best is not None:
                best.prune()
        if placement.distributed:
            dist.barrier()
    final = updates.ema.module if updates.ema is not None else model
    if placement.distributed:
        if not ranks_agree(final, placement):
            raise RuntimeError("distributed ranks ended with different weights; do not use this model")
        if placement.is_main:
            log.info("all %d ranks hold identical weights", placement.world_size)
    if live is not None:
        final, chosen = _choose(final, model, metrics, best, train_views, val_loader, training)
        metrics = {**metrics, **chosen}
        for key, value in chosen.items():
            live.summary[key] = value
        live.end()
    return final, metrics


def _choose(
    final: nn.Module,
    raw: nn.Module,
    metrics: dict,
    best: BestEpochs | None,
    train_views: SeededViews,
    val_loader: DataLoader,
    training: Training,
) -> tuple[nn.Module, dict]:
    """The model to save after the last epoch, and every candidate's val accuracy beside it."""
    params, placement = training.params, training.placement
    has_ema = training.ema_decay is not None

    def validate(candidate: nn.Module) -> float:
        return evaluate(candidate, val_loader, placement)["accuracy"]

    chosen = {
        "val_accuracy_final": validate(raw) if has_ema else metrics["val_accuracy"],
        "val_accuracy_ema": metrics["val_accuracy"] if has_ema else None,
        "val_accuracy_best_epoch": None,
        "val_accuracy_averaged": None,
        "selected": "ema" if has_ema else "final",
        "val_accuracy_selected": metrics["val_accuracy"],
    }
    if best is None:
        return final, chosen
    # BatchNorm statistics for the average come from one more seeded pass over the train split.
    items = epoch_items(
        len(train_views),
        params.epochs,
        training.runtime.seed,
        training.cache_views,
        Placement(device=placement.device),
    )
    bn_loader = make_loader(train_views, training.runtime, params.batch_size, items)
    final, averaged = average_best(final, best, bn_loader, params.max_steps_per_epoch, validate, placement.device)
    selected = averaged["val_accuracy_averaged" if averaged["selected"] == "averaged" else "val_accuracy_best_epoch"]
    return final, {**chosen, **averaged, "val_accuracy_selected": selected}


def record_summary(live_dir: Path, metrics: dict) -> None:
    """Metrics of a stage that did not train (an imported model), in the same dvclive layout."""
    from dvclive import Live

    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for key, value in metrics.items():
            live.summary[key] = value
