"""Decoding untrusted uploads: size checked from the header before any pixel is decoded,
truncated files refused instead of classifying whatever part of them decoded."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError


class InvalidImage(ValueError):
    """The upload is not an image this service can classify; the message says why."""


def decode_image(payload: bytes, max_pixels: int) -> Image.Image:
    if not payload:
        raise InvalidImage("the upload is empty: send an image file (png, jpeg, webp, bmp)")
    try:
        image = Image.open(io.BytesIO(payload))
    except UnidentifiedImageError:
        raise InvalidImage("the upload is not a recognised image (png, jpeg, webp, bmp)") from None
    except Image.DecompressionBombError:
        raise InvalidImage(f"the image has more than {max_pixels} pixels") from None
    if image.width * image.height > max_pixels:
        raise InvalidImage(f"the image is {image.width}x{image.height} = {image.width * image.height} "
                           f"pixels; the limit is {max_pixels}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise InvalidImage("the image is truncated or corrupt") from None
    return image.convert("RGB")
