"""Named image corruptions at severities 1-5, to show the drift monitor reacting."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

CORRUPTIONS = ("brightness", "contrast", "blur", "noise", "rotation", "occlusion")


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if name == "brightness":
        return ImageEnhance.Brightness(image).enhance(1 - 0.14 * severity)  # 5: x0.3
    if name == "contrast":
        return ImageEnhance.Contrast(image).enhance(1 - 0.17 * severity)
    if name == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=0.4 * severity * image.width / 32))
    if name == "noise":
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + np.random.default_rng(seed).normal(0, 12 * severity, pixels.shape)
        return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    if name == "rotation":
        return image.rotate(12 * severity, fillcolor=(255, 255, 255))
    if name == "occlusion":
        occluded = image.copy()
        side = int(image.width * 0.12 * severity)
        left = (image.width - side) // 2
        ImageDraw.Draw(occluded).rectangle([left, left, left + side, left + side], fill=(0, 0, 0))
        return occluded
    raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
