"""Who may call the service: an optional bearer token, named in params and kept out of them.

`serving.auth_token_env` names the environment variable that holds the token (null: no
token, for local use). The server refuses to start when the variable it names is unset or
empty, rather than serve openly; clients of this project (simulate-traffic, the demo, the
benchmarks) send the same token. Without a token the server also refuses to start on any
address but a loopback one (`bentoml serve` listens on every interface unless given `--host`),
unless `serving.allow_network_without_token` says a gateway in front of it authenticates.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import socket
import sys

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vgg2resnet.config import ServingParams, UserError
from vgg2resnet.serving.errors import OPENAPI_PATH, Problem, report

# Probes, scrapers and documentation answer without a token; everything else needs one.
OPEN_PATHS = frozenset({"/", OPENAPI_PATH, "/schema.json", "/livez", "/readyz", "/healthz", "/metrics"})
OPEN_PREFIXES = ("/static_content/",)  # the documentation page's assets


def service_token(serving: ServingParams) -> str | None:
    """The bearer token the service requires, from the environment variable that
    serving.auth_token_env names; None when that is null."""
    name = serving.auth_token_env
    if name is None:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise UserError(
            f"serving.auth_token_env names ${name}, which is not set or empty: export the "
            f"token as {name}, or set serving.auth_token_env: null to serve without a token"
        )
    if not (token.isascii() and token.isprintable()):  # a header carries it as ASCII
        raise UserError(
            f"${name}: the token must be printable ASCII, e.g. from "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def listening_host() -> str | None:
    """The address this BentoML worker listens on: its server passes the listening socket as
    `--fd N` (a worker's command line, BentoML 1.4); None outside such a worker."""
    if "--fd" not in sys.argv:
        return None
    with socket.socket(fileno=os.dup(int(sys.argv[sys.argv.index("--fd") + 1]))) as listening:
        return listening.getsockname()[0]


def check_exposure(serving: ServingParams, host: str | None) -> None:
    """Refuse to serve without a token on an address other machines can reach."""
    if host is None or serving.auth_token_env is not None or serving.allow_network_without_token:
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise UserError(
            f"the service would listen on {host} without a token, open to any machine that can reach "
            "it: serve on 127.0.0.1 (bentoml serve ... --host 127.0.0.1), set serving.auth_token_env "
            "to require a bearer token, or set serving.allow_network_without_token: true when a "
            "gateway in front of the service authenticates its callers"
        )


def auth_headers(serving: ServingParams) -> dict[str, str]:
    """What a client of this project's service sends: the bearer token when one is set."""
    token = service_token(serving)
    return {"Authorization": f"Bearer {token}"} if token else {}


class BearerToken:
    """ASGI middleware: every path but OPEN_PATHS answers 401 without `Authorization: Bearer
    <token>`, so an endpoint added later is closed until opened. The token is read at the
    first request, not at import, so `bentoml build` never needs it; the service checks that
    it is set when it starts (an error here, while Starlette builds the app, would not stop
    the server). CORS preflights (OPTIONS) carry no credentials and pass."""

    def __init__(self, app: ASGIApp, serving: ServingParams) -> None:
        self.app, self.serving = app, serving

    @functools.cached_property
    def token(self) -> bytes:
        return service_token(self.serving).encode()

    def _open(self, scope: Scope) -> bool:
        path = scope["path"]
        return scope["method"] == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._open(scope):
            presented = Headers(scope=scope).get("authorization")
            scheme, _, credentials = (presented or "").partition(" ")
            # compare_digest: the time taken does not tell how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token):
                reason = "the bearer token is not valid" if presented else "send `Authorization: Bearer <token>`"
                report(scope, [Problem(field="Authorization", index=None, filename=None, reason=reason)])
                return await Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        await self.app(scope, receive, send)
