"""The training loop shared by the teacher fine-tune, the student distillation and the pruned
fine-tune: the `Training` and `Updates` records and plain functions (build the optimizer and
scheduler, train one epoch, evaluate, save/resume state)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vgg2resnet import atomic
from vgg2resnet.config import RuntimeParams, TrainParams, UserError
from vgg2resnet.data.loaders import with_progress
from vgg2resnet.models.builders import head_parameters
from vgg2resnet.training.objective import Distillation, kd_loss
from vgg2resnet.training.placement import Placement

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the weights are garbage from here on."""


def build_optimizer(model: nn.Module, params: TrainParams, backbone_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    head = {id(p) for p in head_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": params.lr * backbone_lr_mult},
        {"params": [p for p in model.parameters() if id(p) in head], "lr": params.lr},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=params.lr, momentum=params.momentum, nesterov=True, weight_decay=params.weight_decay
        )
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    raise ValueError(f"unknown optimizer {params.optimizer!r}; choose one of 'sgd', 'adamw'")


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int, freeze_epochs: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay, per step; the backbone group stays at 0 while frozen."""
    total = params.epochs * steps_per_epoch
    warmup = int(params.warmup_epochs * steps_per_epoch)
    frozen = freeze_epochs * steps_per_epoch

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def backbone(step: int) -> float:
        # A learning rate of 0 freezes the backbone exactly (no update, no weight decay) while
        # keeping the parameter set fixed, which DistributedDataParallel requires.
        return 0.0 if step < frozen else warmup_cosine(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone, warmup_cosine])


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def epoch_items(n: int, epoch: int, seed: int, views: int | None, placement: Placement) -> list[tuple[int, int]]:
    """This rank's (image, view) pairs for an epoch: a seeded shuffle, padded so every rank
    takes the same number of steps, then sharded by rank. views=None: a fresh view per epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    chosen = rng.integers(0, views, size=n) if views else np.full(n, epoch)
    items = [(int(i), int(chosen[i])) for i in order]
    padded = items + items[: (-len(items)) % placement.world_size]
    return padded[placement.rank :: placement.world_size]


@dataclass(frozen=True)
class Training:
    """One training run's settings: the recipe, the runtime settings, where it runs and, for a
    student, the teacher's part of the objective. The knobs below `distillation` are the
    student's (`distill.*`); the teacher's fine-tune and the pruned fine-tune leave them off."""

    params: TrainParams
    runtime: RuntimeParams
    placement: Placement
    distillation: Distillation | None = None
    freeze_epochs: int = 0
    backbone_lr_mult: float = 1.0
    ema_decay: float | None = None
    average: int | None = None

    @property
    def cache_views(self) -> int | None:
        """How many cached views each image draws from; None: a fresh view per epoch."""
        return self.distillation.cache_views if self.distillation is not None else None


@dataclass
class Updates:
    """What one optimisation step changes besides the model."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None = None


def train_one_epoch(
    model: nn.Module, loader: DataLoader, updates: Updates, training: Training, desc: str
) -> dict[str, float]:
    params, placement, distillation = training.params, training.placement, training.distillation
    teacher = distillation.teacher if distillation is not None else None
    temperature, alpha = (distillation.temperature, distillation.alpha) if distillation is not None else (1.0, 0.0)
    channels_last, max_steps = training.runtime.channels_last, params.max_steps_per_epoch
    model.train()
    totals = {"loss": 0.0, "kd_loss": 0.0, "ce_loss": 0.0}
    seen, steps, start = 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not placement.is_main, leave=False)
    for step, (images, labels, indices, views) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        images = images.to(placement.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(placement.device, non_blocking=True)
        teacher_logits = teacher(images, indices, views) if teacher is not None else None
        with placement.autocast():
            logits = model(images)
        loss, kd, ce = kd_loss(logits.float(), teacher_logits, labels, temperature, alpha, params.label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{desc}: loss is {loss.item()} at step {step}; the run is stopped. Lower the learning "
                "rate (lr in params.yaml) or check the input data"
            )
        updates.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip_norm)
        updates.optimizer.step()
        updates.scheduler.step()
        if updates.ema is not None:
            updates.ema.update_parameters(model)
        for key, value in (("loss", loss), ("kd_loss", kd), ("ce_loss", ce)):
            totals[key] += value.item() * len(labels)
        seen += len(labels)
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")
    elapsed = time.perf_counter() - start
    metrics = {key: value / max(seen, 1) for key, value in totals.items()}
    metrics["images_per_s"] = seen * placement.world_size / elapsed if elapsed > 0 else 0.0
    metrics["lr"] = updates.scheduler.get_last_lr()[-1]
    metrics["steps"] = steps
    return metrics


@dataclass(frozen=True)
class Predictions:
    """A model's category for every item of a loader, in order, on the CPU, with the labels and
    the mean cross-entropy."""

    classes: torch.Tensor
    labels: torch.Tensor
    loss: float

    @property
    def accuracy(self) -> float:
        return 100.0 * (self.classes == self.labels).float().mean().item()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, placement: Placement) -> Predictions:
    """The model over every item of the loader, in one pass. Each batch is reduced to its
    categories and summed loss as it comes, into tensors allocated once: holding every batch's
    logits to the end made the process grow with the split (by 1.1 GB over the 15,000 val
    images of a 10^5-image folder), the memory between them never given back."""
    model.eval()
    size = len(loader.dataset)
    classes, labels = torch.empty(size, dtype=torch.long), torch.empty(size, dtype=torch.long)
    seen, loss = 0, 0.0
    batches = with_progress(loader, "predict", leave=False) if placement.is_main else loader
    for images, batch_labels, *_ in batches:
        with placement.autocast():
            logits = model(images.to(placement.device)).float()
        batch_labels = batch_labels.to(logits.device)
        loss += torch.nn.functional.cross_entropy(logits, batch_labels, reduction="sum").item()
        classes[seen : seen + len(logits)] = logits.argmax(1).cpu()
        labels[seen : seen + len(logits)] = batch_labels.cpu()
        seen += len(logits)
    return Predictions(classes[:seen], labels[:seen], loss / max(seen, 1))


def evaluate(model: nn.Module, loader: DataLoader, placement: Placement) -> dict[str, float]:
    predictions = predict(model, loader, placement)
    return {"accuracy": predictions.accuracy, "loss": predictions.loss}


def save_state(path: Path, **state) -> None:
    """Everything needed to resume after the epoch just finished, written atomically."""
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, fingerprint: str) -> dict | None:
    """The saved state if it belongs to this very run (same inputs and params), else None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.info("%s is from a different run (inputs or params changed): starting afresh", path)
        return None
    return state
