"""Images uploaded as files: form fields and the request's pixel budget checked before BentoML
parses the form, and each file checked against the input policy (vgg2resnet.data.policy) and
decoded (vgg2resnet.data.images.decode) while the request is parsed. Every problem found is
reported with its field, index and filename, and the request answers 400: a batch holding
one bad file classifies nothing."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Annotated, Any, ClassVar, get_origin

from bentoml import IODescriptor
from PIL import Image
from pydantic import ConfigDict, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from vgg2resnet.data.formats import FORMATS
from vgg2resnet.data.images import UndecodableImage, decode
from vgg2resnet.data.policy import InputPolicy
from vgg2resnet.serving.errors import Problem, report
from vgg2resnet.serving.limits import BodyTooLarge, RequestLimits

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def image_file(policy: InputPolicy) -> Any:
    """A field type BentoML documents and parses as a file upload (a `Path`), whose validator
    decodes the upload straight from the form buffer instead of BentoML's file schema, which
    would first copy it to a temporary file. A bad file is thus rejected before adaptive batching
    merges its request with other clients' (which must not fail with it), and the endpoint
    receives decoded images, so nothing is decoded twice."""

    def decoded(upload: Any, _file_schema: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(upload, UploadFile):
            raise PydanticCustomError("not_a_file", "send the image as a multipart/form-data file upload")
        try:
            # The pixels were checked from the headers before BentoML validates (Uploads.over_budget).
            return decode(upload.file.read(), policy=policy)
        except UndecodableImage as exc:
            raise PydanticCustomError("undecodable_image", "{reason}", {"reason": str(exc)}) from None

    return Annotated[Path, WrapValidator(decoded)]


class Uploads(IODescriptor):
    """An endpoint's input that takes its images as uploaded files, checked before BentoML parses
    the form: BentoML answers 500 to a malformed form or a file under an unknown name, and
    fetches a text value of a file field as a URL, a request made on the client's behalf (as
    after `curl -F image=digit.png`, without the @). Each of those is a 400 here, like a body
    that is not a form at all, several files sent to a one-file field, an image over its pixel
    limit or images over the request's (`limits`, from their headers, before any is decoded), and
    any other bad upload. The schema declares the form's fields as the only ones (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid")
    limits: ClassVar[RequestLimits]  # set by the service, from the model it serves

    @classmethod
    def _takes_several(cls, field: str) -> bool:
        return get_origin(cls.model_fields[field].annotation) is list

    @classmethod
    def over_budget(cls, form: FormData) -> list[Problem]:
        """Each upload over the limits' pixels, or the request's over its budget, from the
        headers: nothing is decoded."""
        uploads = [
            (name, number, value) for name in cls.multipart_fields for number, value in enumerate(form.getlist(name))
        ]
        sizes = [_declared_pixels(upload.file) for _, _, upload in uploads]
        limits, problems = cls.limits, []
        for (name, number, upload), size in zip(uploads, sizes):
            if size > limits.image_pixels:
                index = number if cls._takes_several(name) else None
                problems.append(
                    _problem(
                        name,
                        f"the image holds {size:,} px, over {limits.describe_image()}: downscale it",
                        index,
                        upload.filename,
                    )
                )
        if not problems and sum(sizes) > limits.request_pixels:
            problems.append(
                _problem(
                    None,
                    f"the images hold {sum(sizes):,} px together, over {limits.describe_request()}: "
                    "send fewer or smaller images per request",
                )
            )
        return problems

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> IODescriptor:
        content_type = request.headers.get("content-type", "")
        example = " ".join(f"-F {name}=@photo.jpg" for name in cls.multipart_fields)
        if not content_type.lower().startswith(FORM_TYPES):
            raise _refuse(
                request,
                cls,
                [
                    _problem(
                        None,
                        f"the body is {content_type or 'untyped'}, not "
                        f"multipart/form-data: upload the image as a file (curl {example})",
                    )
                ],
            )
        try:
            form = await request.form()  # parsed once: starlette keeps it for BentoML's parser
        except HTTPException as exc:
            raise _refuse(request, cls, [_problem(None, f"the body is not a valid form: {exc.detail}")]) from None
        except BodyTooLarge as exc:  # answered 413 by BodyLimit
            raise _refuse(request, cls, [_problem(None, str(exc))]) from None
        fields = " and ".join(repr(name) for name in cls.model_fields)
        problems = [
            _problem(name, f"unknown field: this endpoint takes {fields}")
            for name in form
            if name not in cls.model_fields
        ]
        text = f"this part is text, not a file: upload the image as a file (curl {example})"
        problems += [
            _problem(name, text, number)
            for name in cls.multipart_fields
            for number, value in enumerate(form.getlist(name))
            if isinstance(value, str)
        ]
        # BentoML would classify the first of several files sent to a one-file field, silently.
        problems += [
            _problem(
                name, f"{len(form.getlist(name))} files sent; this endpoint takes one (classify_batch takes several)"
            )
            for name in cls.multipart_fields
            if not cls._takes_several(name) and len(form.getlist(name)) > 1
        ]
        if not problems:
            problems = cls.over_budget(form)
        if problems:
            raise _refuse(request, cls, problems)
        try:
            return await super().from_http_request(request, serde)
        except ValidationError as exc:
            raise _refuse(request, cls, [_from_pydantic(error, form) for error in exc.errors()]) from None


def _declared_pixels(file: IO[bytes]) -> int:
    """Width x height from an upload's header; 0 for one that does not parse, which the decoder
    then refuses with its reason."""
    try:
        with Image.open(file, formats=list(FORMATS)) as image:
            return image.width * image.height
    except Exception:  # noqa: BLE001 - Pillow's plugins raise many types on malformed headers
        return 0
    finally:
        file.seek(0)


def _problem(field: str | None, reason: str, index: int | None = None, filename: str | None = None) -> Problem:
    return Problem(field=field, index=index, filename=filename, reason=reason)


def _from_pydantic(error: dict, form: FormData) -> Problem:
    """A validation error as a problem, naming the file it is about."""
    loc = error["loc"]
    field = str(loc[0]) if loc else None
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    files = form.getlist(field) if field is not None else []
    # A single-file field's error has no index: the file is the field's only one.
    upload = files[index] if index is not None else files[0] if len(files) == 1 else None
    filename = upload.filename if isinstance(upload, UploadFile) else None
    reason = error["msg"]
    if error["type"] == "missing":
        reason = f"missing: send the image as a file in the multipart field {field!r}"
    return _problem(field, reason, index, filename)


def _refuse(request: Request, model: type, problems: list[Problem]) -> ValidationError:
    """Report the problems and return the error BentoML answers with a 400 (and logs)."""
    report(request.scope, problems)
    return ValidationError.from_exception_data(
        model.__name__,
        [
            {
                "type": "value_error",
                "loc": (p.field or "request",),
                "input": None,
                "ctx": {"error": ValueError(p.describe())},
            }
            for p in problems
        ],
    )
