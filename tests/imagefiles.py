"""Small valid image files and facts about them read from the formats' own specifications, not
from the decoder under test: where the last pixel byte lies, and how an EXIF orientation turns
the stored pixels upright."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp"),
           "BMP": ("bmp", "image/bmp")}
EXIF_ORIENTATION = 0x0112


def noise(width: int = 16, height: int = 12, seed: int = 0) -> Image.Image:
    """An RGB image with no symmetry, so any flip or rotation changes it."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixels_end(fmt: str, data: bytes) -> int:
    """The offset just past the last byte that carries pixels: a file cut before it cannot
    decode completely. After it come only checksums and trailers (PNG's zlib Adler-32, chunk
    CRC and IEND chunk; JPEG's end marker). For PNG this holds for incompressible pixels
    (`noise`), which zlib stores verbatim, with no end-of-block code after the last pixel."""
    if fmt == "PNG":  # 8-byte signature, then chunks of length, type, data, CRC
        position, end = 8, 0
        while position < len(data):
            (length,) = struct.unpack(">I", data[position:position + 4])
            if data[position + 4:position + 8] == b"IDAT":
                end = position + 8 + length - 4  # the zlib stream ends with its Adler-32
            position += 12 + length
        return end
    if fmt == "JPEG":
        return data.rindex(b"\xff\xd9")  # EOI
    if fmt == "WEBP":  # RIFF header, then one image chunk of declared size
        (size,) = struct.unpack("<I", data[16:20])
        return 20 + size
    if fmt == "BMP":  # pixel data offset, then rows padded to 4 bytes
        (offset,) = struct.unpack("<I", data[10:14])
        width, height = struct.unpack("<ii", data[18:26])
        (bits,) = struct.unpack("<H", data[28:30])
        return offset + abs(height) * ((width * bits // 8 + 3) // 4 * 4)
    raise ValueError(fmt)


# EXIF orientation -> the stored pixels of an upright picture U (TIFF 6.0 / EXIF 2.3: e.g. 6
# means "row 0 is the visual right side", so the viewer turns the stored image 90 degrees
# clockwise; storing U turned 90 degrees anticlockwise displays U).
STORED = {
    1: lambda u: u,
    2: np.fliplr,
    3: lambda u: np.rot90(u, 2),
    4: np.flipud,
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),
}


def with_orientation(upright: np.ndarray, orientation: int, fmt: str, **options) -> bytes:
    """A file whose stored pixels display as `upright` under the EXIF orientation tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    return encoded(stored, fmt, exif=exif.tobytes(), **options)
