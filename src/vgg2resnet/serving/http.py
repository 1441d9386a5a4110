"""The service's HTTP surface around BentoML's: one error shape for every 4xx and 5xx, the
optional bearer token, and the OpenAPI document that declares both.

BentoML answers errors in several shapes (a list of pydantic errors for a validation error,
a one-item list for its other 4xx, plain text for Starlette's 404 and 405), none of them what
its OpenAPI document declares, so a client generated from that document can parse none.
`ErrorShape` rewrites every error answer into `ErrorBody`, builds the message from the problems
the endpoint reported (`report`), and declares the shape in `/docs.json`. BentoML's own load
shedding (429 beyond serving.max_concurrency, 504 after serving.timeout_s) answers outside any
service middleware, as `{"error": "..."}`: an `ErrorBody` without problems, which the schema
allows for that reason.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
from collections.abc import Collection
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vgg2resnet.config import ServingParams, UserError

OPENAPI_PATH = "/docs.json"
log = logging.getLogger("vgg2resnet.service")


class Problem(BaseModel):
    """One thing wrong with a request."""

    field: str | None = Field(description="the form field or header at fault; null for the request as a whole")
    index: int | None = Field(description="which of the field's files, from 0; null when not one file")
    filename: str | None = Field(description="that file's name as the client sent it")
    reason: str = Field(description="what is wrong and how to fix it")

    def describe(self) -> str:
        where = self.field or "request"
        where += "" if self.index is None else f"[{self.index}]"
        where += "" if self.filename is None else f" {self.filename!r}"
        return f"{where}: {self.reason}"


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the service."""

    error: str = Field(description="a short message for a person")
    problems: list[Problem] = Field(default=[], description="for a program: each problem with the request; "
                                    "empty when the error is not about its content (overload, timeout)")


# What each error means on the inference endpoints, as the OpenAPI document declares it.
ENDPOINT_ERRORS = {
    400: "The request is malformed or a file is not an image this service decodes; nothing was "
         "classified. Each problem names the field, the file's index and filename, and the reason.",
    429: "More requests in flight than serving.max_concurrency: retry with back-off.",
    500: "An internal error; the server's log has the details.",
    503: "The service is starting, or a batch could not be served within serving.max_latency_ms: "
         "retry with back-off.",
    504: "Not answered within serving.timeout_s: retry with back-off.",
}
UNAUTHORIZED = "No valid bearer token: send `Authorization: Bearer <token>`."


def report(request: Request, problems: list[Problem]) -> None:
    """Tell ErrorShape what was wrong with this request (Starlette's per-request state)."""
    request.state.problems = problems


def _message(status: int, scope: Scope, headers: Headers, body: bytes, problems: list[Problem]) -> str:
    if problems:
        return "; ".join(problem.describe() for problem in problems)
    if status == 404:
        return f"no endpoint at {scope['path']}: /docs lists the endpoints"
    if status == 405:
        allowed = headers.get("allow")
        return f"{scope['method']} is not allowed on {scope['path']}" + (f"; use {allowed}" if allowed else "")
    if status == 503:
        return "the service is starting or overloaded: retry with back-off"
    if status >= 500:  # never a traceback or a server path
        return "internal error: the server's log has the details"
    try:  # BentoML's own message for its other 4xx: {"error": ...}, or a list of one
        text = json.loads(body)
        text = (text[0] if isinstance(text, list) and text else text)["error"]
    except (ValueError, TypeError, KeyError, IndexError):
        text = body.decode("utf-8", "replace").strip()
    return str(text) or HTTPStatus(status).phrase


def declare_errors(spec: dict[str, Any], endpoints: Collection[str], secured: bool) -> dict[str, Any]:
    """BentoML's OpenAPI document with ErrorBody as every error answer (and the bearer scheme)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    shape = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(shape.pop("$defs"))
    schemas["ErrorBody"] = shape
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    replaced = set()
    for path, item in spec["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            for code in [c for c in responses if int(c) >= 400]:
                replaced.add(responses.pop(code).get("content", {}).get("application/json", {})
                             .get("schema", {}).get("$ref", "").rpartition("/")[2])
            errors = dict(ENDPOINT_ERRORS) if path in endpoints else {}
            if path in endpoints and secured:
                errors[401] = UNAUTHORIZED
                operation["security"] = [{"bearer": []}]
            responses.update({str(code): {"description": text, "content": ref} for code, text in errors.items()})
            responses["default"] = {"description": "Any other error, in the same shape.", "content": ref}
    for name in replaced - {"", "ErrorBody"}:  # BentoML's error schemas, now unused
        schemas.pop(name, None)
    if secured:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return spec


class ErrorShape:
    """ASGI middleware: every error answer as ErrorBody, and /docs.json declaring it."""

    def __init__(self, app: ASGIApp, endpoints: Collection[str], secured: bool) -> None:
        self.app, self.endpoints, self.secured = app, frozenset(endpoints), secured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            return await self.app(scope, receive, send)
        docs = scope["path"] == OPENAPI_PATH
        held: list[Message] = []
        started = False

        async def rewrite(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 or docs:
                    held.append(message)
                    return
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    await self._send_rewritten(scope, held, send)
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if started:
                raise
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            await self._send(send, 500, [], ErrorBody(error=_message(500, scope, Headers(), b"", [])))

    async def _send_rewritten(self, scope: Scope, held: list[Message], send: Send) -> None:
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        status, headers = start["status"], Headers(raw=start["headers"])
        keep = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        if status < 400:  # the OpenAPI document
            spec = declare_errors(json.loads(body), self.endpoints, self.secured)
            return await self._send(send, status, keep, json.dumps(spec).encode())
        problems = scope.get("state", {}).get("problems", [])
        await self._send(send, status, keep, ErrorBody(error=_message(status, scope, headers, body, problems),
                                                      problems=problems))

    @staticmethod
    async def _send(send: Send, status: int, headers: list, body: ErrorBody | bytes) -> None:
        payload = body.model_dump_json().encode() if isinstance(body, ErrorBody) else body
        await send({"type": "http.response.start", "status": status, "headers": [
            *headers, (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def service_token(serving: ServingParams) -> str | None:
    """The bearer token the service requires, from the environment variable that
    serving.auth_token_env names; None when that is null (auth off, for local use)."""
    name = serving.auth_token_env
    if name is None:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise UserError(f"serving.auth_token_env names ${name}, which is not set or empty: export the "
                        f"token as {name}, or set serving.auth_token_env: null to serve without a token")
    return token


def auth_headers(serving: ServingParams) -> dict[str, str]:
    """What a client of this project's service sends: the bearer token when one is set."""
    token = service_token(serving)
    return {"Authorization": f"Bearer {token}"} if token else {}


class BearerToken:
    """ASGI middleware: the inference endpoints answer 401 without `Authorization: Bearer <token>`;
    the health, metrics and documentation endpoints stay open. The token is read at the first
    request, not at import, so `bentoml build` never needs it; the service checks it is set
    when it starts (an error here, while Starlette builds the app, would not stop the server)."""

    def __init__(self, app: ASGIApp, serving: ServingParams, endpoints: Collection[str]) -> None:
        self.app, self.serving, self.endpoints = app, serving, frozenset(endpoints)

    @functools.cached_property
    def token(self) -> bytes:
        return service_token(self.serving).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.endpoints:
            presented = Headers(scope=scope).get("authorization")
            scheme, _, credentials = (presented or "").partition(" ")
            # compare_digest: the time taken does not tell how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token):
                reason = "the bearer token is not valid" if presented else "send `Authorization: Bearer <token>`"
                scope.setdefault("state", {})["problems"] = [
                    Problem(field="Authorization", index=None, filename=None, reason=reason)]
                response = Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
