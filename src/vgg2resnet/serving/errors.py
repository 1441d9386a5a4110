"""One error shape for every 4xx and 5xx of the service, and the OpenAPI document declaring it.

BentoML answers errors in several shapes (`{"error", "detail": [...]}` for a validation
error, a one-item list for its other 4xx, plain text for Starlette's 404 and 405), none of
them what its OpenAPI document declares, so a client generated from that document can parse
none. `ErrorShape` rewrites every error answer into `ErrorBody`, with the problems the
endpoint or the token check reported (`report`), and declares the shape in `/docs.json`.
BentoML's own load shedding (429 beyond serving.max_concurrency, 504 after
serving.timeout_s) answers outside any service middleware, as `{"error": "..."}`: an
`ErrorBody` without problems, which the schema allows for that reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPENAPI_PATH = "/docs.json"
INTERNAL = "internal error: the server's log has the details"
_PROBLEMS = "vgg2resnet.problems"  # the key in Starlette's per-request state
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
    problems: list[Problem] = Field(
        default=[],
        description="for a program: each problem with the request; "
        "empty when the error is not about its content (overload, timeout)",
    )


# What each error means on the inference endpoints, as the OpenAPI document declares it.
ENDPOINT_ERRORS = {
    400: "The request is malformed or a file is not an image this service decodes; nothing was "
    "classified. Each problem names the field, the file's index and filename, and the reason.",
    413: "The body is larger than the byte limit (serving.max_bytes_per_pixel); nothing was classified.",
    429: "More requests in flight than serving.max_concurrency: retry with back-off.",
    500: "An internal error; the server's log has the details.",
    503: "The service is starting, or a batch could not be served within serving.max_latency_ms: retry with back-off.",
    504: "Not answered within serving.timeout_s: retry with back-off.",
}
UNAUTHORIZED = "No valid bearer token: send `Authorization: Bearer <token>`."


def report(scope: Scope, problems: list[Problem]) -> None:
    """Tell ErrorShape what was wrong with this request (a Request's `.scope`)."""
    scope.setdefault("state", {})[_PROBLEMS] = problems


def _message(status: int, scope: Scope, headers: Headers, body: bytes, problems: list[Problem]) -> str:
    if problems:
        return "; ".join(problem.describe() for problem in problems)
    if status == 404:
        return f"no endpoint at {scope['path']}: {OPENAPI_PATH} lists the endpoints"
    if status == 405:
        allowed = headers.get("allow")
        return f"{scope['method']} is not allowed on {scope['path']}" + (f"; use {allowed}" if allowed else "")
    if status == 503:
        return "the service is starting or overloaded: retry with back-off"
    if status >= 500:  # never a traceback or a server path
        return INTERNAL
    try:  # BentoML's own message for its other 4xx: {"error": ...}, or a list of one
        text = json.loads(body)
        text = (text[0] if isinstance(text, list) and text else text)["error"]
    except (ValueError, TypeError, KeyError, IndexError):
        text = body.decode("utf-8", "replace").strip()
    return str(text) or HTTPStatus(status).phrase


def in_openapi_30_terms(node: Any) -> Any:
    """The document spelt in the OpenAPI 3.0 it declares: BentoML types uploads "file" (Swagger
    2.0's word; 3.0 says a binary string) and pydantic writes an optional value as
    `anyOf: [X, {type: null}]` (3.1's way; 3.0 says `nullable`)."""
    if isinstance(node, list):
        return [in_openapi_30_terms(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: in_openapi_30_terms(value) for key, value in node.items()}
    if node.get("type") == "file":
        node.update(type="string", format="binary")
    options = node.get("anyOf", [])
    others = [option for option in options if option != {"type": "null"}]
    if len(others) == 1 and len(options) == 2:
        # 3.0 ignores a reference's siblings, so a nullable reference is wrapped in allOf
        value = {"allOf": others} if "$ref" in others[0] else others[0]
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **value, "nullable": True}
    return node


def declare_errors(spec: dict[str, Any], endpoints: Collection[str], secured: bool) -> dict[str, Any]:
    """BentoML's OpenAPI document with ErrorBody as every error answer (and the bearer scheme),
    in the terms of the OpenAPI version it declares."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    shape = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(shape.pop("$defs"))
    schemas["ErrorBody"] = shape
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    replaced = set()
    for path, item in spec["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            for code in [c for c in responses if str(c)[0] in "45"]:
                replaced.add(
                    responses.pop(code)
                    .get("content", {})
                    .get("application/json", {})
                    .get("schema", {})
                    .get("$ref", "")
                    .rpartition("/")[2]
                )
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
    return in_openapi_30_terms(spec)


class ErrorShape:
    """ASGI middleware: every error answer as ErrorBody, and /docs.json declaring it."""

    def __init__(self, app: ASGIApp, endpoints: Collection[str], secured: bool) -> None:
        self.app, self.endpoints, self.secured = app, frozenset(endpoints), secured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"] == OPENAPI_PATH and scope["method"] == "GET"  # HEAD has no body to patch
        held: list[Message] = []
        forwarded = False  # whether anything reached the client: after that, no other answer can

        async def rewrite(message: Message) -> None:
            nonlocal forwarded
            if message["type"] == "http.response.start" and (message["status"] >= 400 or docs):
                held.append(message)
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    answer = self._rewritten(scope, held)  # may raise, while nothing is sent yet
                    forwarded = True
                    await self._send(scope, send, *answer)
            else:
                forwarded = True
                await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if forwarded:
                raise
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            await self._send(scope, send, 500, [], ErrorBody(error=INTERNAL))
            return
        if held and not forwarded:  # an answer that ended without its last body message
            await self._send(scope, send, *self._rewritten(scope, held))

    def _rewritten(self, scope: Scope, held: list[Message]) -> tuple[int, list, ErrorBody | bytes]:
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        status, headers = start["status"], Headers(raw=start["headers"])
        keep = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        if status < 400:  # the OpenAPI document
            return status, keep, json.dumps(declare_errors(json.loads(body), self.endpoints, self.secured)).encode()
        problems = scope.get("state", {}).get(_PROBLEMS, [])
        return status, keep, ErrorBody(error=_message(status, scope, headers, body, problems), problems=problems)

    @staticmethod
    async def _send(scope: Scope, send: Send, status: int, headers: list, body: ErrorBody | bytes) -> None:
        payload = body.model_dump_json().encode() if isinstance(body, ErrorBody) else body
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        # A HEAD answer declares the body's length and type but carries no body.
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})
