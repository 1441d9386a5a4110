"""What the student learns from: the teacher's logits for the exact view the student sees,
either computed live or read from a cache built once for K seeded views per image.

The cache (FKD-style, Shen & Xing 2022) pays where the teacher's forward dominates a step:
VGG-16 costs about 3.8x the FLOPs of a ResNet-50 forward at 224 px.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vgg2resnet import atomic
from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, RuntimeParams, UserError
from vgg2resnet.data.datasets import SeededViews
from vgg2resnet.data.loaders import make_loader
from vgg2resnet.distill.fit import Distillation
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.runtime import Runtime

log = logging.getLogger(__name__)


class StaleCacheError(UserError):
    """Cached logits no longer match what the live teacher computes for the same view."""


class LiveTeacher:
    """Runs the teacher on the student's batch: eval mode (BatchNorm statistics must not move), no grad."""

    def __init__(self, model: nn.Module, runtime: Runtime) -> None:
        self.model = model.eval().to(runtime.device)
        self.runtime = runtime

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            return self.model(images).float()


class CachedTeacher:
    """Looks up logits[i, view]; `check` re-runs a sample of views through the live teacher."""

    def __init__(self, logits: torch.Tensor, live: LiveTeacher, tolerance: float) -> None:
        self.logits = logits
        self.live = live
        self.tolerance = tolerance

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.logits[indices, views].to(images.device)

    def check(self, views: SeededViews, fraction: float, seed: int, batch_size: int,
              loading: RuntimeParams) -> float:
        """Recompute a random share of the cached (image, view) pairs; fail loudly if any differ."""
        n, k, _ = self.logits.shape
        count = max(1, int(round(n * k * fraction)))
        pairs = np.random.default_rng(seed).choice(n * k, size=min(count, n * k), replace=False)
        items = [(int(p // k), int(p % k)) for p in pairs]
        worst = 0.0
        for images, _, indices, view_ids in make_loader(views, loading, batch_size, items):
            fresh = self.live(images.to(self.live.runtime.device), indices, view_ids).cpu()
            worst = max(worst, (fresh - self.logits[indices, view_ids]).abs().max().item())
        if worst > self.tolerance:
            raise StaleCacheError(
                f"cached teacher logits differ from the live teacher by {worst:.3g} "
                f"(> distill.cache_tolerance {self.tolerance}); delete the cache folder and re-run"
            )
        return worst


def cache_key(**parts) -> str:
    """Everything the cached logits depend on: teacher weights, data, augmentation, views, seed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_or_load_cache(path: Path, live: LiveTeacher, views: SeededViews, num_views: int,
                        batch_size: int, loading: RuntimeParams, show_progress: bool) -> torch.Tensor:
    """Logits of shape (images, views, categories); built once per key and reused after."""
    if path.is_file():
        log.info("teacher logit cache: reusing %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    n = len(views)
    logits: torch.Tensor | None = None
    items = [(i, v) for i in range(n) for v in range(num_views)]
    loader = make_loader(views, loading, batch_size, items)
    for images, _, indices, view_ids in tqdm(loader, desc="teacher logit cache", unit="batch",
                                             disable=not show_progress):
        out = live(images.to(live.runtime.device), indices, view_ids).cpu()
        if logits is None:
            logits = torch.empty(n, num_views, out.shape[1])
        logits[indices, view_ids] = out
    with atomic.atomic_path(path) as tmp:
        torch.save(logits, tmp)
    log.info("teacher logit cache: %d images x %d views written to %s", n, num_views, path)
    return logits


def teacher_signal(params: Params, runtime: Runtime, teacher: nn.Module, teacher_weights: str,
                   views: SeededViews) -> Distillation:
    """The KD objective of a student trained on `views` (distill.* settings): the cached logits
    of these very views when distill.logit_cache (built on first use, reused by every later
    training on the same teacher, data and views, as `prune` does), else the live teacher."""
    d = params.distill
    live = LiveTeacher(teacher, runtime)
    if not d.logit_cache:
        return Distillation(live, d.temperature, d.alpha)
    key = cache_key(teacher=teacher_weights, manifest=manifest_hash(params), augment=params.augment,
                    image_size=d.image_size, views=d.cache_views, seed=params.runtime.seed)
    path = Artifacts(params).logit_cache(key)
    logits = None
    if runtime.is_main:  # one rank builds, the others wait and read it
        logits = build_or_load_cache(path, live, views, d.cache_views, params.evaluate.batch_size,
                                     params.runtime, True)
    if runtime.distributed:
        dist.barrier()
    if logits is None:
        logits = torch.load(path, map_location="cpu", weights_only=True)
    cached = CachedTeacher(logits, live, d.cache_tolerance)

    def check(epoch: int) -> float:
        return cached.check(views, d.cache_check_fraction, seed=params.runtime.seed * 1000 + epoch,
                            batch_size=params.evaluate.batch_size, loading=params.runtime)

    return Distillation(cached, d.temperature, d.alpha, cache_views=d.cache_views, check=check)
