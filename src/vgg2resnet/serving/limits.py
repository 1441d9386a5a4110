"""The body-size limit of the inference endpoints (serving.max_request_bytes).

A body is counted while it is read, before the form parser stores any of it (Starlette spools a
large file part to disk), and a body over the limit answers 413 in the error shape. A body that
declares its length is refused from its Content-Length header; one sent in chunks when its
count passes the limit. Either way the rest of the body is read and dropped, not kept: a server
that answered and closed while the client was still sending would reset the connection, and
the client would see that reset instead of the answer (the "lingering close" of HTTP servers).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgg2resnet.serving.errors import Problem, report


class BodyTooLarge(Exception):
    """Raised from `receive` once a body passes the limit; the message is for the client."""


FIX = "send fewer or smaller images per request"


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: bodies of `endpoints` over `max_bytes` answer 413."""

    def __init__(self, app: ASGIApp, endpoints: Collection[str], max_bytes: int) -> None:
        self.app, self.endpoints, self.max_bytes = app, frozenset(endpoints), max_bytes

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
                        reason=(
                            f"the body is {declared} bytes, over serving.max_request_bytes ({self.max_bytes}): {FIX}"
                        ),
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
                    raise BodyTooLarge(
                        f"the body passed serving.max_request_bytes ({self.max_bytes}) while it was read: {FIX}"
                    )
            return message

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start" and exceeded:
                message = {**message, "status": 413}  # the endpoint refused it as a bad form
            await send(message)

        await self.app(scope, counted, answer)
