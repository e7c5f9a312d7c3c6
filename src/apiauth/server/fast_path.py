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

from functools import partial

from starlette.types import ASGIApp, Receive, Scope, Send

from apiauth.domain.audit import record_secrets_read
from apiauth.domain.broker import Broker
from apiauth.domain.connections import secrets_answer
from apiauth.domain.read_caches import Answer
from apiauth.domain.sites import SiteCaller, authenticate_site_token
from apiauth.domain.token_format import hash_token
from apiauth.server.rate_limits import RateLimits
from apiauth.server.single_flight import SingleFlight

SECRETS_PATH = "/api/v1/secrets"
HEALTH_PATH = "/healthz"
HEALTHY = b'{"status":"ok"}'
_BEARER = b"bearer "


class FastPath:
    """ASGI middleware; see the module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        broker: Broker,
        limits: RateLimits,
        site_lookups: SingleFlight[SiteCaller],
        secret_reads: SingleFlight[Answer],
    ) -> None:
        self.app = app
        self.broker = broker
        self.limits = limits
        self.site_lookups = site_lookups
        self.secret_reads = secret_reads

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
        broker = self.broker
        now = broker.clock()
        caller = broker.site_tokens.get(token_hash, now)
        if caller is None:
            return None
        whose = caller.visitor_id or ""
        answer = broker.answers.get((caller.token_id, whose), now)
        if answer is None:
            return None
        if not self.limits.allow_token_hash(token_hash):
            return None  # the route answers 429 with its Retry-After
        # Past half their second, both memories are looked up again in the background while
        # this answer is sent: a steady reader never waits for the database.
        if broker.site_tokens.renewal_due(token_hash):
            self.site_lookups.start(
                (token_hash, broker.site_tokens.generation),
                partial(authenticate_site_token, broker, token, renew=True),
            )
        if broker.answers.renewal_due((caller.token_id, whose)):
            self.secret_reads.start(
                (caller.token_id, whose, broker.answers.generation),
                partial(secrets_answer, broker, caller, whose),
            )
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
