"""The two most frequent requests, answered without the framework's routing and dependency
injection: `GET /healthz`, and `GET /api/v1/secrets` when both the caller's token and its
answer are remembered (`read_caches`: at most a second old, forgotten on any change).

Everything else - a token or answer not remembered, a query string, another scheme, a rate
limit reached - goes on to the FastAPI route, which is the one the OpenAPI description
documents and which answers the same bytes the long way (tests/test_read_path.py compares
the two). The fast answer keeps every rule of the route: the token is checked against the
same cache (revoked within a second everywhere, at once here), the same per-token rate limit
is spent, and the read is written to the audit log.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from apiauth.domain.audit import record_secrets_read
from apiauth.domain.connections import remembered_secrets
from apiauth.domain.token_format import hash_token
from apiauth.server.rate_limits import RateLimits
from apiauth.server.read_path import ReadPath

SECRETS_PATH = "/api/v1/secrets"
HEALTH_PATH = "/healthz"
HEALTHY = b'{"status":"ok"}'
_BEARER = b"bearer "


class FastPath:
    """ASGI middleware; see the module's docstring."""

    def __init__(self, app: ASGIApp, *, read_path: ReadPath, limits: RateLimits) -> None:
        self.app = app
        self.read_path = read_path
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == HEALTH_PATH:
                await _send_json(send, HEALTHY)
                return
            if path == SECRETS_PATH and not scope["query_string"]:
                body = self._remembered_secrets(scope)
                if body is not None:
                    await _send_json(send, body)
                    return
        await self.app(scope, receive, send)

    def _remembered_secrets(self, scope: Scope) -> bytes | None:
        authorization = _header(scope, b"authorization")
        if authorization is None or authorization[:7].lower() != _BEARER:
            return None
        token = authorization[7:].decode("latin-1")
        token_hash = hash_token(token)
        broker = self.read_path.broker
        now = broker.clock()
        caller = self.read_path.remembered_caller(token_hash, now)
        if caller is None:
            return None
        whose = caller.visitor_id or ""
        answer = remembered_secrets(broker, caller, whose, now)
        if answer is None:
            return None
        if not self.limits.allow_token_hash(token_hash):
            return None  # the route answers 429 with its Retry-After
        self.read_path.renew(token, token_hash, caller, whose)
        client = scope.get("client")
        ip = client[0] if client else None
        record_secrets_read(broker, caller, answer.providers, ip=ip, visitor_id=whose, at=now)
        return answer.body


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _send_json(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
