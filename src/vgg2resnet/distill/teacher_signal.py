"""What the student learns from: the teacher's logits for the exact view the student sees,
either computed live or read from a cache built once for K seeded views per image
(`logit_cache`: on disk, chunked, fp16 or top-k).

The cache (FKD-style, Shen & Xing 2022) pays where the teacher's forward dominates a step:
VGG-16 costs about 3.8x the FLOPs of a ResNet-50 forward at 224 px.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch
from torch import nn

from vgg2resnet.artifacts import Artifacts
from vgg2resnet.config import Params, RuntimeParams, UserError
from vgg2resnet.data.datasets import SeededViews
from vgg2resnet.data.loaders import make_loader
from vgg2resnet.distill.logit_cache import CacheLayout, LogitCache, build_cache
from vgg2resnet.lineage import manifest_hash
from vgg2resnet.training.objective import Distillation
from vgg2resnet.training.placement import Placement

log = logging.getLogger(__name__)


class StaleCacheError(UserError):
    """Cached logits no longer match what the live teacher computes for the same view."""


class LiveTeacher:
    """Runs the teacher on the student's batch: eval mode (BatchNorm statistics must not move), no grad."""

    def __init__(self, model: nn.Module, placement: Placement) -> None:
        self.model = model.eval().to(placement.device)
        self.placement = placement

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        with self.placement.autocast():
            return self.model(images).float()


class CachedTeacher:
    """Looks up logits[i, view] in the on-disk cache; `check` re-runs a sample of views through
    the live teacher."""

    def __init__(self, cache: LogitCache, live: LiveTeacher, tolerance: float) -> None:
        self.cache = cache
        self.live = live
        self.tolerance = tolerance

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.cache[indices, views].to(images.device, non_blocking=True)

    def check(self, views: SeededViews, fraction: float, seed: int, batch_size: int, runtime: RuntimeParams) -> float:
        """Recompute a random share of the cached (image, view) pairs; fail loudly if any differ
        by more than the tolerance plus what cache_dtype's rounding accounts for. Returns the
        largest difference beyond that rounding."""
        n, k, _ = self.cache.shape
        count = max(1, round(n * k * fraction))
        pairs = np.random.default_rng(seed).choice(n * k, size=min(count, n * k), replace=False)
        items = [(int(p // k), int(p % k)) for p in pairs]
        worst = 0.0
        for images, _, indices, view_ids in make_loader(views, runtime, batch_size, items):
            fresh = self.live(images.to(self.live.placement.device), indices, view_ids).cpu()
            stored, ids = self.cache.stored(indices, view_ids)
            if ids is not None:
                fresh = fresh.gather(1, ids)
            beyond = (fresh - stored).abs() - self.cache.rounding(stored)
            worst = max(worst, beyond.max().clamp(min=0).item())
        if worst > self.tolerance:
            raise StaleCacheError(
                f"cached teacher logits differ from the live teacher by {worst:.3g} "
                f"(> distill.cache_tolerance {self.tolerance}); delete {self.cache.folder} and re-run"
            )
        return worst


def cache_key(**parts) -> str:
    """Everything the cached logits depend on: teacher weights, data, augmentation, views, seed,
    and the cache's own layout."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_signal(
    params: Params, placement: Placement, teacher: nn.Module, teacher_weights: str, views: SeededViews, categories: int
) -> Distillation:
    """The KD objective of a student trained on `views` (distill.* settings): the cached logits
    of these very views when distill.logit_cache (built on first use, every rank its share, and
    reused by every later training on the same teacher, data and views, as `prune` does), else
    the live teacher."""
    d = params.distill
    live = LiveTeacher(teacher, placement)
    if not d.logit_cache:
        return Distillation(live, d.temperature, d.alpha)
    layout = CacheLayout(
        images=len(views),
        views=d.cache_views,
        categories=categories,
        dtype=d.cache_dtype,
        top_k=d.cache_top_k,
        chunk_images=d.cache_chunk_images,
    )
    key = cache_key(
        teacher=teacher_weights,
        manifest=manifest_hash(params),
        augment=params.augment,
        image_size=d.image_size,
        seed=params.runtime.seed,
        layout=layout,
    )
    cache = build_cache(
        Artifacts(params).logit_cache(key),
        layout,
        live,
        views,
        params.evaluate.batch_size,
        params.runtime,
        placement,
        show_progress=True,
    )
    cached = CachedTeacher(cache, live, d.cache_tolerance)

    def check(epoch: int) -> float:
        return cached.check(
            views,
            d.cache_check_fraction,
            seed=params.runtime.seed * 1000 + epoch,
            batch_size=params.evaluate.batch_size,
            runtime=params.runtime,
        )

    return Distillation(cached, d.temperature, d.alpha, cache_views=d.cache_views, check=check)
