"""What one request may cost the service, and the body-size limit that enforces its bytes.

**The limits follow the model's input.** The model reads image_size x image_size pixels, so
an ordinary request costs one decode of an image near that size and one forward pass. An
upload of many times those pixels costs mostly decoding and resizing, which grow with its
pixels and bytes, so its limits are set in multiples of the model's input: with
`serving.max_image_area` 8, a 224-px model takes uploads of up to 401,408 px (731 x 548), a
32-px model up to 90 x 90. A fixed limit would be either far too loose for a small model (a 16 Mpx
upload costs a 32-px model 40 ordinary requests) or too tight for a large one.

**The body limit.** A body is counted while it is read, before the form parser stores any of it (Starlette spools a
large file part to disk), and a body over the limit answers 413 in the error shape. A body that
declares its length is refused from its Content-Length header; one sent in chunks when its
count passes the limit. Either way the rest of the body is read and dropped, not kept: a server
that answered and closed while the client was still sending would reset the connection, and
the client would see that reset instead of the answer (the "lingering close" of HTTP servers).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgg2resnet.config import ServingParams
from vgg2resnet.serving.errors import Problem, report

# Bytes a body may carry beyond its images': multipart framing (a few hundred bytes per file)
# and metadata such as a phone photo's EXIF block (at most 64 KiB per JPEG segment).
FRAMING_BYTES = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    """The pixels of one upload, of one request's uploads, and the bytes of one body, for a
    model reading `image_size` px squares; `describe_*` say where each number comes from."""

    image_size: int
    image_pixels: int
    request_pixels: int
    request_bytes: int

    @classmethod
    def of(cls, serving: ServingParams, image_size: int) -> RequestLimits:
        area = image_size * image_size
        request_pixels = serving.max_request_area * area
        return cls(
            image_size,
            serving.max_image_area * area,
            request_pixels,
            math.ceil(serving.max_bytes_per_pixel * request_pixels) + FRAMING_BYTES,
        )

    def _times_input(self, setting: str, pixels: int) -> str:
        side = self.image_size
        return f"serving.{setting} x the {side}x{side} px the model reads = {pixels:,} px"

    def images_over(self, widths: Sequence[int], heights: Sequence[int]) -> int:
        """How many images of these sizes are over the pixels of one image."""
        pixels = np.asarray(widths, dtype=np.int64) * np.asarray(heights, dtype=np.int64)
        return int((pixels > self.image_pixels).sum())

    def describe_image(self) -> str:
        return self._times_input("max_image_area", self.image_pixels)

    def describe_request(self) -> str:
        return self._times_input("max_request_area", self.request_pixels)

    def describe_bytes(self) -> str:
        return (
            f"serving.max_bytes_per_pixel x {self.request_pixels:,} px + {FRAMING_BYTES:,} for the form "
            f"= {self.request_bytes:,} bytes"
        )


def model_input_size(metadata: dict) -> int:
    """The side of the square a stored version's model reads, from the store's metadata."""
    return int(metadata["preprocessing"]["image_size"])


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passes the limit; the message is for the client."""


FIX = "send fewer or smaller images per request"


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: bodies of `endpoints` over the limits' bytes answer 413."""

    def __init__(self, app: ASGIApp, endpoints: Collection[str], limits: RequestLimits) -> None:
        self.app, self.endpoints = app, frozenset(endpoints)
        self.max_bytes, self.described = limits.request_bytes, limits.describe_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _drain(receive)
            report(
                scope,
                [
                    Problem(
                        field=None,
                        index=None,
                        filename=None,
                        reason=(f"the body is {declared} bytes, over the limit ({self.described}): {FIX}"),
                    )
                ],
            )
            return await Response(status_code=413)(scope, receive, send)
        received, exceeded = 0, False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise BodyTooLarge(f"the body passed the limit ({self.described}) while it was read: {FIX}")
            return message

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start" and exceeded:
                message = {**message, "status": 413}  # the endpoint refused it as a bad form
            await send(message)

        await self.app(scope, counted, answer)
