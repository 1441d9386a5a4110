"""Images uploaded as files: form fields checked before BentoML parses the form, and each file
decoded while the request is parsed, its size checked from the header before any pixel is
decoded, and a truncated file refused instead of classifying whatever part of it decoded."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

from bentoml import IODescriptor
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


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


def image_file(max_pixels: int) -> Any:
    """A field type BentoML documents and parses as a file upload (a `Path`), whose validator
    decodes the upload straight from the form buffer instead of BentoML's file schema, which
    would first copy it to a temporary file. A bad file is thus rejected before adaptive batching
    merges its request with other clients' (which must not fail with it), and the endpoint
    receives decoded images, so nothing is decoded twice."""

    def decoded(upload: Any, _file_schema: ValidatorFunctionWrapHandler) -> Image.Image:
        if not isinstance(upload, UploadFile):
            # A ValueError, not a TypeError: pydantic turns only the former into a 400.
            raise ValueError("send the image as a multipart/form-data file upload")  # noqa: TRY004
        try:
            return decode_image(upload.file.read(), max_pixels)
        except InvalidImage as exc:
            raise ValueError(str(exc)) from None

    return Annotated[Path, WrapValidator(decoded)]


class Uploads(IODescriptor):
    """An endpoint's input that takes its images as uploaded files, checked before BentoML parses
    the form: BentoML answers 500 to a malformed form or a file under an unknown name, and
    fetches a text value of a file field as a URL, a request made on the client's behalf (as
    after `curl -F image=digit.png`, without the @). Each of those is a 400 here, like any other
    bad upload."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> IODescriptor:
        if request.headers.get("content-type", "").startswith(FORM_TYPES):
            try:
                form = await request.form()  # parsed once: starlette keeps it for BentoML's parser
            except HTTPException as exc:
                raise _invalid(cls, [((), f"the body is not a valid form: {exc.detail}")]) from None
            fields = " and ".join(repr(name) for name in cls.model_fields)
            problems = [((name,), f"unknown field {name!r}: this endpoint takes {fields}")
                        for name in form if name not in cls.model_fields]
            text = "this part is text, not a file: send the image as a file (curl -F {}=@image.png)"
            problems += [((name, number), text.format(name)) for name in cls.multipart_fields
                         for number, value in enumerate(form.getlist(name)) if isinstance(value, str)]
            if problems:
                raise _invalid(cls, problems)
        return await super().from_http_request(request, serde)


def _invalid(model: type, problems: list[tuple[tuple, str]]) -> ValidationError:
    """The error BentoML answers with a 400 listing each problem, as for a failed validator."""
    return ValidationError.from_exception_data(model.__name__, [
        {"type": "value_error", "loc": loc, "input": None, "ctx": {"error": ValueError(message)}}
        for loc, message in problems])
