"""Small valid image files and facts about them read from the formats' own specifications, not
from the decoder under test: how much of a file must be there, and how an EXIF orientation
turns the stored pixels upright."""

from __future__ import annotations

import io
import struct

import numpy as np
from hypothesis import strategies as st
from PIL import Image

FILE_TYPES = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
    "BMP": ("bmp", "image/bmp"),
}
EXIF_ORIENTATION = 0x0112


def noise(width: int = 16, height: int = 12, seed: int = 0) -> Image.Image:
    """An RGB image with no symmetry, so any flip or rotation changes it."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def shortest_decodable(fmt: str, data: bytes) -> int:
    """The length of the shortest prefix of the file that decodes completely. Only a PNG
    decodes without its end, once every pixel is in: the zlib stream's Adler-32, the chunk's
    CRC and the IEND chunk are checksums and trailer. This holds for incompressible pixels
    (`noise`), which zlib stores verbatim, with no end-of-block code after the last pixel.
    The other formats need the whole file, JPEG its end marker included."""
    if fmt != "PNG":
        return len(data)
    position, end = 8, 0  # 8-byte signature, then chunks of length, type, data, CRC
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        if data[position + 4 : position + 8] == b"IDAT":
            end = position + 8 + length - 4
        position += 12 + length
    return end


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


def sideways_photo() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A phone photo stored sideways: a 24x40 JPEG with EXIF orientation 6; the pixels as stored
    (plain Pillow applies no EXIF); and the upright picture a viewer shows, those pixels turned
    90 degrees clockwise."""
    rotated = with_orientation(np.asarray(noise(width=40, height=24)), 6, "JPEG")
    stored = np.asarray(Image.open(io.BytesIO(rotated)).convert("RGB"))
    return rotated, stored, np.rot90(stored, -1)


# Pillow modes an upload or a user's file may come in; CMYK is a JPEG, the others PNGs.
MODES = ("RGB", "L", "RGBA", "LA", "P", "1", "CMYK", "I;16")


def in_mode(mode: str, width: int, height: int, seed: int = 0) -> bytes:
    """A file of noise in `mode` (16-bit greyscale spanning the full 16-bit range)."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return encoded(Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)), "PNG")
    image = noise(width, height, seed)
    image = image.convert("RGBA").convert(mode) if mode in ("RGBA", "LA") else image.convert(mode)
    return encoded(image, "JPEG" if mode == "CMYK" else "PNG")


@st.composite
def policy_cases(draw) -> tuple[str, int, int]:
    """A mode and a size around the input policy's bounds: tiny sides and shapes far from square."""
    shorter = draw(st.integers(1, 24))
    longer = draw(st.integers(shorter, 14 * shorter))
    wide = draw(st.booleans())
    return draw(st.sampled_from(MODES)), *((longer, shorter) if wide else (shorter, longer))
