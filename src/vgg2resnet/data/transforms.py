"""The one preprocessing definition (torchvision transforms v2), used by training, evaluation,
the logit cache, the service and the drift reference, so that nothing drifts between them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from vgg2resnet.config import AugmentParams


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Shorter side to image_size, centre crop, normalise: the same at training, serving and drift time."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def train_transform(image_size: int, augment: AugmentParams) -> v2.Compose:
    """Random view of an image; every random draw comes from torch's global RNG, so a seed
    set just before the call regenerates the exact same view (what the logit cache relies on).

    The crop and resize run on uint8, where torch has a vectorised antialiased kernel; the
    rotation and colour jitter run on float, where they cost a third less than on uint8 (each
    uint8 op converts to float and back). The random draws come in the same order either way."""
    steps: list = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=(augment.crop_scale_min, 1.0), antialias=True),
    ]
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment.rotation_degrees > 0:
        steps.append(v2.RandomRotation(augment.rotation_degrees, fill=1.0))  # white corners, as 255 in uint8
    if augment.color_jitter > 0:
        strength = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    steps.append(v2.Normalize(mean=list(augment.mean), std=list(augment.std)))
    return v2.Compose(steps)


def preprocessing_meta(image_size: int, augment: AugmentParams) -> dict:
    """What a model file records so that the service rebuilds eval_transform exactly."""
    return {"image_size": image_size, "mean": list(augment.mean), "std": list(augment.std)}


def transform_from_meta(meta: dict) -> v2.Compose:
    return eval_transform(meta["image_size"], meta["mean"], meta["std"])
