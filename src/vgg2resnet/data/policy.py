"""The input policy: which images the models learn from and answer for, and how each becomes
RGB. Validation applies it to the user's folder and the service to every upload, from the same
settings (`validation.*`), so the service refuses what training refuses and converts pixels as
training converts them. An answer about an image unlike any the model was trained on would
mean nothing, and an image far from square costs memory out of all proportion to its bytes
(the shorter side is resized to the network's input, the longer one follows).

- **Sides**: `min_side` <= width and height <= `max_side`, in pixels of the upright image.
- **Shape**: the longer side over the shorter is at most `max_aspect_ratio`.
- **Modes**: the file's Pillow mode is one of `allowed_modes` (RGB, L for greyscale, RGBA and
  LA with alpha, P for a palette, CMYK, I;16 for 16-bit greyscale, ...).
- **Conversion to RGB** (`to_rgb`), for every mode the policy admits:
  - 16-bit greyscale (I;16, I;16B, I;16L, I) keeps its 8 most significant bits, as Pillow does
    for 16-bit colour PNGs; converting directly would clip every value above 255 to white;
  - alpha is dropped: the colour stored under each pixel is what the model sees;
  - a palette is looked up; greyscale is repeated into three channels; CMYK and YCbCr are
    converted by Pillow's formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vgg2resnet.config import ValidationParams

SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L", "I"})


@dataclass(frozen=True)
class InputPolicy:
    min_side: int
    max_side: int
    max_aspect_ratio: float
    allowed_modes: frozenset[str]

    @classmethod
    def of(cls, validation: ValidationParams) -> InputPolicy:
        return cls(
            validation.min_side, validation.max_side, validation.max_aspect_ratio, frozenset(validation.allowed_modes)
        )

    def refusals(self, width: int, height: int, mode: str) -> list[str]:
        """Each rule an image of this size and mode breaks, naming the setting; empty when admitted."""
        reasons = []
        shorter, longer = sorted((width, height))
        if shorter < self.min_side:
            reasons.append(
                f"the image is {width}x{height} px, under validation.min_side ({self.min_side} px) "
                "on a side: send a larger image"
            )
        if longer > self.max_side:
            reasons.append(
                f"the image is {width}x{height} px, over validation.max_side ({self.max_side} px) "
                "on a side: downscale it"
            )
        if aspect_ratio(width, height) > self.max_aspect_ratio:
            reasons.append(
                f"the image is {width}x{height} px, its longer side over validation.max_aspect_ratio "
                f"({self.max_aspect_ratio:g}) times its shorter: crop it"
            )
        if mode not in self.allowed_modes:
            reasons.append(
                f"the image's mode is {mode}, not one of validation.allowed_modes "
                f"({', '.join(sorted(self.allowed_modes))}): convert it"
            )
        return reasons


def aspect_ratio(width, height):
    """The longer side over the shorter, of one image or of columns of them: validation's table
    and the service compute it here, so both compare the same number with the bound."""
    return np.maximum(width, height) / np.minimum(width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB by the rules above."""
    if image.mode in SIXTEEN_BIT_GREY:
        high_bits = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(high_bits.astype(np.uint8), mode="L")
    return image.convert("RGB")
