"""The two most frequent requests, answered without the framework's routing and dependency
injection: `GET /healthz`, and `GET /api/v1/secrets` of a caller's own connections. A caller
and answer remembered (`read_caches`: at most a second old, forgotten on any change) are
answered on the event loop; a token not remembered (a function token's first read) costs
one query in a worker thread (`secrets_read.first_read`), an answer not remembered one
query too.

Everything else - a bad token, a query string, another scheme, a rate limit reached, any
error - goes on to the FastAPI route, which is the one the OpenAPI description
documents and which answers the same bytes the long way (tests/test_read_path.py compares
the two). The fast answer keeps every rule of the route: the token is checked against the
same cache (revoked within a second everywhere, at once here), the same per-token rate limit
is spent, and the read is written to the audit log.

`POST /api/v1/function-tokens` of a plain JSON body (the fields of `FunctionTokenCreate`, of
their JSON types) is answered here too: the site token checked as above, the same per-token
rate limit, `function_tokens.mint_function_token` in a worker thread (the same validation,
the same group-committed write and audit event), the same 201 body. Anything else - another
content type, a field the model does not know, a value of another type, any error the
domain raises before it writes (an unknown provider, a function token minting) - goes on to
the route with the body as it came, which answers it (tests/test_function_tokens.py compares
the two).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiauth.domain.audit import record_secrets_read
from apiauth.domain.function_tokens import mint_function_token
from apiauth.domain.read_caches import Answer
from apiauth.domain.secrets_read import remembered_secrets
from apiauth.domain.token_format import hash_token
from apiauth.server.client_address import ClientAddresses
from apiauth.server.rate_limits import RateLimits
from apiauth.server.read_path import ReadPath
from apiauth.server.schemas import FunctionTokenOut

SECRETS_PATH = "/api/v1/secrets"
MINT_PATH = "/api/v1/function-tokens"
HEALTH_PATH = "/healthz"
HEALTHY = b'{"status":"ok"}'
_BEARER = b"bearer "
# `FunctionTokenCreate`'s fields and the JSON types the fast mint takes for each.
_MINT_FIELDS = frozenset({"ttl_seconds", "providers", "visitor_id"})
_MAX_VISITOR_ID = 255
_MAX_PROVIDERS = 100


class FastPath:
    """ASGI middleware; see the module's docstring."""

    def __init__(
        self, app: ASGIApp, *, read_path: ReadPath, limits: RateLimits, addresses: ClientAddresses
    ) -> None:
        self.app = app
        self.read_path = read_path
        self.limits = limits
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "GET":
                path = scope["path"]
                if path == HEALTH_PATH:
                    await _send_json(send, HEALTHY)
                    return
                if path == SECRETS_PATH and not scope["query_string"]:
                    body = await self._secrets(scope)
                    if body is not None:
                        await _send_json(send, body)
                        return
            elif method == "POST" and scope["path"] == MINT_PATH and not scope["query_string"]:
                messages = await _read_body(receive)
                answer = await self._mint(scope, messages)
                if answer is not None:
                    await _send_json(send, answer, 201)
                    return
                receive = _replayed(messages, receive)
        await self.app(scope, receive, send)

    async def _mint(self, scope: Scope, messages: list[Message]) -> bytes | None:
        """The 201 body of a new function token, or None to let the route answer (see the
        module's docstring)."""
        if not messages or messages[-1]["type"] != "http.request":
            return None  # the client went away: the route meets that too
        content_type = _header(scope, b"content-type")
        if content_type is None or content_type.split(b";")[0].strip() != b"application/json":
            return None
        fields = _mint_fields(b"".join(m.get("body", b"") for m in messages))
        authorization = _header(scope, b"authorization")
        if fields is None or authorization is None or authorization[:7].lower() != _BEARER:
            return None
        ip = self.addresses.of_scope(scope)
        if self.limits.address_limited(ip or "unknown"):
            return None
        token = authorization[7:].decode("latin-1")
        token_hash = hash_token(token)
        read_path = self.read_path
        caller = read_path.remembered_caller(token_hash, read_path.broker.clock())
        if caller is None:
            try:
                caller = await read_path.caller(token)
            except Exception:
                return None
        if caller.kind != "site" or not self.limits.allow_token_hash(token_hash):
            return None
        mint = partial(
            mint_function_token,
            read_path.broker,
            caller,
            fields.get("ttl_seconds"),
            fields.get("providers"),
            ip=ip,
            visitor_id=fields.get("visitor_id"),
        )
        try:
            minted, expires_at = await run_in_threadpool(mint)
        except Exception:
            return None  # refused before anything was written: the route says why
        return FunctionTokenOut(token=minted, expires_at=expires_at).model_dump_json().encode()

    async def _secrets(self, scope: Scope) -> bytes | None:
        """The answer's body, or None to let the route answer (see the module's
        docstring)."""
        authorization = _header(scope, b"authorization")
        if authorization is None or authorization[:7].lower() != _BEARER:
            return None
        ip = self.addresses.of_scope(scope)
        if self.limits.address_limited(ip or "unknown"):
            return None  # too many wrong tokens from there: the route answers 429
        token = authorization[7:].decode("latin-1")
        token_hash = hash_token(token)
        read_path = self.read_path
        broker = read_path.broker
        now = broker.clock()
        caller = read_path.remembered_caller(token_hash, now)
        answer: Answer | None
        if caller is None:
            try:
                caller, answer = await read_path.first_read(token, token_hash)
            except Exception:
                return None
            if not self.limits.allow_token_hash(token_hash):
                return None  # the route answers 429 with its Retry-After
            whose = caller.visitor_id or ""
        else:
            if not self.limits.allow_token_hash(token_hash):
                return None
            whose = caller.visitor_id or ""
            answer = remembered_secrets(broker, caller, whose, now)
            if answer is None:
                try:
                    answer = await read_path.answer(caller, whose)
                except Exception:
                    return None
            else:
                read_path.renew(token, token_hash, caller, whose)
        record_secrets_read(broker, caller, answer.providers, ip=ip, visitor_id=whose, at=now)
        return answer.body


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _mint_fields(body: bytes) -> dict[str, Any] | None:
    """A function token request's fields, if the body is a JSON object of
    `FunctionTokenCreate`'s fields, each of its JSON type and length; else None."""
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    if not isinstance(fields, dict) or not fields.keys() <= _MINT_FIELDS:
        return None
    if "ttl_seconds" in fields and type(fields["ttl_seconds"]) is not int:  # null too
        return None
    providers = fields.get("providers")
    if providers is not None and (
        not isinstance(providers, list)
        or len(providers) > _MAX_PROVIDERS
        or not all(isinstance(name, str) for name in providers)
    ):
        return None
    visitor_id = fields.get("visitor_id")
    if visitor_id is not None and (
        not isinstance(visitor_id, str) or not 1 <= len(visitor_id) <= _MAX_VISITOR_ID
    ):
        return None
    return fields


async def _read_body(receive: Receive) -> list[Message]:
    """The request's messages up to the end of its body (or the client's going away);
    `BodySizeLimit` has capped the body's size already."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replayed(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that gives `messages` first (a body read already), then the client's."""
    pending = list(reversed(messages))

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _send_json(send: Send, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
