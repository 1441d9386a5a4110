"""The embedded demo data set: scikit-learn's handwritten digits as RGB PNGs, made offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEMO_CATEGORIES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits(out_dir: Path, image_size: int) -> int:
    """Write the 1,797 digits as `<category>/<index>.png`, upscaled to image_size px; return the count."""
    from sklearn.datasets import load_digits  # ships its data inside the package: no download

    digits = load_digits()
    # 0..16 ink levels -> white paper, black ink, like a scanned form.
    pixels = (255 - digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    for name in DEMO_CATEGORIES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        picture = Image.fromarray(image, mode="L").resize((image_size, image_size), Image.BICUBIC)
        picture.convert("RGB").save(out_dir / DEMO_CATEGORIES[target] / f"{index:04d}.png", optimize=False)
    return len(pixels)
