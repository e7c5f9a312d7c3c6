"""The outermost ASGI middleware: every request's id (`X-Request-Id`) and its measurement.

Both in one place because both need the same thing, a wrapper around `send` that sees the
response start, and the secrets read path answers tens of thousands of requests a second:
one wrapper per request, not two. The id is the caller's own `X-Request-Id` when it is a
sane, bounded value (so that a proxy's or a client's id follows the request through), or a
new one; it is sent back on every response, set for every log line of the request
(`logs.begin_request`), and left in `request.state.request_id` for the error handler that
answers a request that crashed (outside this middleware). The measurement
(`Metrics.http`: count by route family and status class, duration) is taken only when
metrics are enabled, and counts the fast path's answers like any other: it sits in front of
it.
"""

from __future__ import annotations

import itertools
import secrets
from time import perf_counter

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiauth.metrics import Metrics
from apiauth.server.logs import begin_request

__all__ = ["REQUEST_ID_HEADER", "RequestContext", "request_id_of"]

REQUEST_ID_HEADER = "X-Request-Id"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
MAX_REQUEST_ID = 128
# Letters, digits and the punctuation ids are made of (UUIDs, W3C trace ids, ULIDs, AWS's
# `Root=1-…`); nothing that could split a log line or a header.
_ALLOWED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:=+/@")
_STATE_KEY = "request_id"


def _sane(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID and all(byte in _ALLOWED for byte in value)


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get(_STATE_KEY)
    return value if isinstance(value, str) else None


class RequestContext:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.http = metrics.http if metrics.enabled else None
        # Unique across replicas (a random prefix per process) and cheap (a counter).
        self._prefix = secrets.token_hex(4).encode("ascii")
        self._counter = itertools.count(1)

    def _request_id(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == _HEADER:
                if _sane(value):
                    return bytes(value)
                break
        return b"%s-%08x" % (self._prefix, next(self._counter))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id = self._request_id(scope)
        request_id = raw_id.decode("latin-1")
        begin_request(request_id)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[_STATE_KEY] = request_id
        header = (_HEADER, raw_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        http = self.http
        if http is None:
            await self.app(scope, receive, send_with_id)
            return
        started = perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            http.observe(scope["path"], status, perf_counter() - started)
