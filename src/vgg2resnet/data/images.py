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

An image must decode completely: a file cut short is refused rather than classified from
what decoded. One exception: a PNG whose pixel data is complete but whose trailing checksums
or closing chunk are missing decodes (Pillow stops reading once it has every pixel). A JPEG
needs its end marker.

Training reads the images `prepare` accepted many times over, so `pixels` gives them as uint8
tensors and decodes a JPEG with torchvision's libjpeg-turbo, without Pillow's image object:
the pixels are the same as `decode` gives (a test holds them equal for every orientation).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import (  # noqa: F401 - registers the four decoders; see below
    BmpImagePlugin,
    ExifTags,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)
from torchvision.transforms.v2.functional import pil_to_tensor

from vgg2resnet.data.formats import FORMAT_LIST, FORMATS
from vgg2resnet.data.policy import InputPolicy, to_rgb

try:  # deprecated since torchvision 0.29 in favour of TorchCodec; Pillow decodes when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:
    decode_jpeg = None

# EXIF orientation -> the turn that shows the stored pixels upright (EXIF 2.3, tag 0x0112).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# The same turns on a (..., height, width) tensor.
TENSOR_UPRIGHT = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda t: t.flip(-1),
    Image.Transpose.ROTATE_180: lambda t: t.flip((-2, -1)),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda t: t.flip(-2),
    Image.Transpose.TRANSPOSE: lambda t: t.transpose(-2, -1),
    Image.Transpose.ROTATE_270: lambda t: t.rot90(-1, (-2, -1)),
    Image.Transpose.TRANSVERSE: lambda t: t.transpose(-2, -1).flip((-2, -1)),
    Image.Transpose.ROTATE_90: lambda t: t.rot90(1, (-2, -1)),
}
JPEG_MAGIC = b"\xff\xd8\xff"
# The four plugins above are imported here, not on first use: Pillow preloads BMP, JPEG and PNG
# but not WebP, and the first WebP it meets makes it import every plugin it has (tens of ms,
# paid by whichever request comes first).


class UndecodableImage(ValueError):
    """The bytes are not an image this project decodes, or one the input policy refuses; the
    message says why, for the file's owner."""


def open_image(source: bytes | Path, max_pixels: int | None = None, policy: InputPolicy | None = None) -> Image.Image:
    """The fully decoded, upright image in its own mode; its size is checked against
    `max_pixels`, and its size and mode against `policy`, from the header, before any pixel
    is decoded."""
    payload = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not payload:
        raise UndecodableImage(f"the file is empty: send a {FORMAT_LIST} image")
    try:
        image = Image.open(io.BytesIO(payload), formats=list(FORMATS))
    except UnidentifiedImageError:
        raise UndecodableImage(f"not a {FORMAT_LIST} image") from None
    except Image.DecompressionBombError as exc:
        raise UndecodableImage(f"the image is too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on malformed headers
        raise UndecodableImage(f"the image header is corrupt ({type(exc).__name__}: {exc})") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise UndecodableImage(
            f"the image is {image.width}x{image.height} = {image.width * image.height} "
            f"pixels; the limit is {max_pixels}"
        )
    refusals = policy.refusals(image.width, image.height, image.mode) if policy is not None else []
    if refusals:
        raise UndecodableImage("; ".join(refusals))
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        raise UndecodableImage(f"the image is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return upright(image)


def upright_turn(image: Image.Image) -> Image.Transpose | None:
    """The turn that shows the image upright, from its EXIF orientation. EXIF that does not
    parse leaves the pixels as stored: metadata never refuses a photo."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF: Pillow raises from its TIFF parser
        return None
    return UPRIGHT.get(orientation)


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. Not ImageOps.exif_transpose: it also
    rewrites the EXIF block, which fails on some real phone photos, and only pixels matter here."""
    turn = upright_turn(image)
    return image if turn is None else image.transpose(turn)


def decode(source: bytes | Path, max_pixels: int | None = None, policy: InputPolicy | None = None) -> Image.Image:
    """The image as RGB pixels (vgg2resnet.data.policy.to_rgb), fully decoded and upright: what
    every model of this project sees."""
    image = open_image(source, max_pixels, policy)
    try:
        return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - a mode Pillow cannot convert
        raise UndecodableImage(f"the image's {image.mode} pixels do not convert to RGB ({exc})") from None


def pixels(source: bytes | Path | str) -> torch.Tensor:
    """The RGB pixels of an image `prepare` accepted (its bytes, or a file), as a uint8
    (3, height, width) tensor equal to `pil_to_tensor(decode(source))`. A YCbCr or greyscale
    JPEG, what cameras and the web produce, is decoded by torchvision (1.5x faster, and no PIL
    image to convert); anything else by `decode`."""
    payload = source if isinstance(source, bytes) else Path(source).read_bytes()
    if decode_jpeg is not None and payload.startswith(JPEG_MAGIC):
        header = Image.open(io.BytesIO(payload), formats=["JPEG"])  # reads the header, not the pixels
        if header.mode in ("RGB", "L"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the deprecation above, once per image
                tensor = decode_jpeg(torch.frombuffer(bytearray(payload), dtype=torch.uint8), mode=ImageReadMode.RGB)
            turn = upright_turn(header)
            return tensor if turn is None else TENSOR_UPRIGHT[turn](tensor).contiguous()
    return pil_to_tensor(decode(payload))
