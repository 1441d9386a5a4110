"""The one image decoder. `prepare` (the user's folder), training and evaluation, the drift
reference, the traffic simulator and every upload to the service decode through it, so one
file gives the same pixels everywhere.

Two decisions live here:
- **Formats: an allow-list.** PNG, JPEG, WebP and BMP, enforced by the decoder itself (Pillow
  only tries those plugins), not by file names: the formats cameras, phones and the web
  produce. Pillow's other plugins (GIF, TIFF, ICO, EPS, ...) are parsers of untrusted bytes
  that the service has no need to expose.
- **EXIF orientation is always applied.** A phone stores its photos sideways with an EXIF
  rotation that every viewer honours; labels were given to the upright picture, so the model
  sees the upright picture too, in training and in serving alike.

An image must decode completely: a file cut short anywhere before its last pixel is refused
rather than classified from what decoded. A file whose pixels are all there but whose trailer
(PNG's closing chunk, JPEG's end marker) is missing decodes.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow format name -> the file suffixes an ImageFolder tree may hold it under.
FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "BMP": (".bmp",)}
SUFFIXES = frozenset(suffix for suffixes in FORMATS.values() for suffix in suffixes)
FORMAT_LIST = f"{', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]}"


class UndecodableImage(ValueError):
    """The bytes are not an image this project decodes; the message says why, for the file's owner."""


def open_image(source: bytes | Path, max_pixels: int | None = None) -> Image.Image:
    """The fully decoded, upright image in its own mode; its size is checked against
    `max_pixels` from the header, before any pixel is decoded."""
    payload = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not payload:
        raise UndecodableImage(f"the file is empty: send a {FORMAT_LIST} image")
    try:
        image = Image.open(io.BytesIO(payload), formats=list(FORMATS))
    except UnidentifiedImageError:
        raise UndecodableImage(f"not a {FORMAT_LIST} image") from None
    except Image.DecompressionBombError as exc:
        raise UndecodableImage(f"the image is too large to decode safely: {exc}") from None
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise UndecodableImage(f"the image header is corrupt ({type(exc).__name__}: {exc})") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise UndecodableImage(f"the image is {image.width}x{image.height} = {image.width * image.height} "
                               f"pixels; the limit is {max_pixels}")
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        raise UndecodableImage(f"the image is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return image


def decode(source: bytes | Path, max_pixels: int | None = None) -> Image.Image:
    """The image as RGB pixels, fully decoded and upright: what every model of this project sees."""
    image = open_image(source, max_pixels)
    try:
        return image.convert("RGB")
    except Exception as exc:  # a mode Pillow cannot convert
        raise UndecodableImage(f"the image's {image.mode} pixels do not convert to RGB ({exc})") from None
