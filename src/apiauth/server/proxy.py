"""`/api/v1/proxy/{provider}/{path}`: forward a call to the provider's API with the site's
bearer token attached, so a function needs no token handling at all.

Nothing of apiauth's reaches the provider (its Authorization header, cookies, CSRF header),
hop-by-hop headers stay on their hop, and the response body is streamed back as it arrives.
A request body is streamed too; one of at most `RETRY_BODY_LIMIT` bytes is kept so that the
call can be sent again once after a 401 and a refresh (a larger one gets the 401 as is).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from apiauth.domain.proxy import ProxyTarget, proxy_target, refreshed_target
from apiauth.server.auth import BrokerDep, SiteDep
from apiauth.server.schemas import ErrorResponse

router = APIRouter(prefix="/api/v1/proxy", tags=["proxy"])

RETRY_BODY_LIMIT = 1_000_000
VISITOR_HEADER = "Apiauth-Visitor"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "cookie", "x-csrf-token", "content-length"}
NOT_RETURNED = HOP_BY_HOP | {"set-cookie"}


def _forwarded_headers(request: Request, target: ProxyTarget) -> list[tuple[str, str]]:
    named_in_connection = {
        name.strip().lower() for name in request.headers.get("connection", "").split(",")
    }
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in NOT_FORWARDED
        and name.lower() not in named_in_connection
        and not name.lower().startswith("apiauth-")
    ]
    headers.append(("Authorization", f"Bearer {target.bearer_token}"))
    return headers


def _upstream_url(target: ProxyTarget, path: str, request: Request) -> str:
    url = f"{target.base_url}/{path.lstrip('/')}"
    if request.url.query:
        url += "?" + request.url.query
    return url


async def _body(request: Request) -> tuple[bytes | None, AsyncIterator[bytes] | None]:
    """Small bodies are read (so a retry can send them again); large ones stream."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) <= RETRY_BODY_LIMIT:
        return await request.body(), None
    if declared is None and request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        return b"", None
    return None, request.stream()


async def proxy(
    provider: str, path: str, request: Request, broker: BrokerDep, caller: SiteDep
) -> StreamingResponse:
    # A visitor's connection is named by a header (stripped like every `apiauth-*` one): the
    # query string belongs to the provider's API and goes through untouched.
    visitor = request.headers.get(VISITOR_HEADER)
    target = await run_in_threadpool(proxy_target, broker, caller, provider, visitor)
    client = _client(request)
    body, stream = await _body(request)

    async def send(target: ProxyTarget) -> httpx.Response:
        upstream = client.build_request(
            request.method,
            _upstream_url(target, path, request),
            headers=_forwarded_headers(request, target),
            content=body if stream is None else stream,
        )
        return await client.send(upstream, stream=True)

    try:
        answer = await send(target)
        if answer.status_code == 401 and target.refreshable and stream is None:
            await answer.aclose()
            target = await run_in_threadpool(refreshed_target, broker, caller, target)
            answer = await send(target)
    except httpx.TimeoutException:
        return _gateway_error(504, f"{provider} did not answer in time")
    except httpx.HTTPError as exc:
        return _gateway_error(502, f"could not reach {provider}: {type(exc).__name__}")
    headers = {
        name: value
        for name, value in answer.headers.multi_items()
        if name.lower() not in NOT_RETURNED
    }
    return StreamingResponse(
        answer.aiter_raw(),
        status_code=answer.status_code,
        headers=headers,
        background=BackgroundTask(answer.aclose),
    )


PROXIED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_PROXY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the provider's answer, passed through"},
    **{code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 502, 504)},
    "default": {"description": "the provider's answer, passed through, whatever its status"},
}
# One route per method, so that each has its own OpenAPI operation id.
for _method in PROXIED_METHODS:
    router.add_api_route(
        "/{provider}/{path:path}",
        proxy,
        methods=[_method],
        name=f"proxy_{_method.lower()}",
        summary=f"{_method} the provider's API with the site's token",
        responses=_PROXY_RESPONSES,
    )


def _gateway_error(status: int, message: str) -> StreamingResponse:
    body = json.dumps({"error": {"code": "provider_unreachable", "message": message}}).encode()
    return StreamingResponse(iter([body]), status_code=status, media_type="application/json")


def _client(request: Request) -> httpx.AsyncClient:
    """One pooled async client per application, made on first use."""
    client: httpx.AsyncClient | None = getattr(request.app.state, "proxy_client", None)
    if client is None:
        broker = request.app.state.broker
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(broker.settings.http_timeout_seconds, read=60.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        request.app.state.proxy_client = client
    return client
