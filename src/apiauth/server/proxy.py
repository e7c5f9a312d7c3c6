"""`/api/v1/proxy/{provider}/{path}`: forward a call to the provider's API with the site's
bearer token attached, so a function needs no token handling at all.

Nothing of apiauth's reaches the provider (its Authorization header, cookies, CSRF header),
hop-by-hop headers stay on their hop, and the response body is streamed back as it arrives.
Nothing of the provider's overrides apiauth's own headers on apiauth's origin (cookies, CORS,
Content-Security-Policy and the other browser policies are dropped; the answer gets a
sandboxing policy of its own), and a `Link` or `Location` pointing into the provider's API
is turned into the same URL through the proxy, so following a next page keeps the site's
token with the broker.
A request body is streamed too; one of at most `RETRY_BODY_LIMIT` bytes is kept so that the
call can be sent again once after a 401 and a refresh (a larger one gets the 401 as is).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from apiauth.domain.proxy import ProxyTarget, proxy_target, refreshed_target
from apiauth.errors import UrlNotAllowed
from apiauth.server.auth import BrokerDep, SiteDep
from apiauth.server.error_body import error_body
from apiauth.server.schemas import ErrorResponse
from apiauth.url_policy import AsyncGuardedTransport

router = APIRouter(prefix="/api/v1/proxy", tags=["proxy"])

RETRY_BODY_LIMIT = 1_000_000
VISITOR_HEADER = "Apiauth-Visitor"
UPSTREAM_HEADER = "Apiauth-Upstream"
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
# The answer is served from apiauth's origin: nothing the provider says may set cookies
# there, open it to other origins (CORS), or replace apiauth's own browser policies.
NOT_RETURNED = HOP_BY_HOP | {
    "set-cookie",
    "set-cookie2",
    "content-security-policy",
    "content-security-policy-report-only",
    "strict-transport-security",
    "x-frame-options",
    "x-content-type-options",
    "x-xss-protection",
    "referrer-policy",
    "permissions-policy",
    "feature-policy",
    "cross-origin-opener-policy",
    "cross-origin-embedder-policy",
    "cross-origin-resource-policy",
    "origin-agent-cluster",
    "clear-site-data",
    "refresh",
    "report-to",
    "reporting-endpoints",
    "nel",
    "expect-ct",
    "public-key-pins",
    "alt-svc",
    "x-request-id",
}
NOT_RETURNED_PREFIXES = ("access-control-",)
# What a provider's answer can hold is its own business, but on apiauth's origin it must not
# run: no script, no plugin, no frame, whatever its content type (HTML from an API included).
PROXY_POLICY = "default-src 'none'; sandbox; frame-ancestors 'none'"
# Headers whose value is a URL the caller may follow: one on the provider's API is turned
# into the same path through this proxy, so the caller's token stays with the broker.
URL_HEADERS = frozenset({"link", "location", "content-location"})


def _forwarded_headers(request: Request, target: ProxyTarget) -> list[tuple[str, str]]:
    named_in_connection = {
        name.strip().lower() for name in request.headers.get("connection", "").split(",")
    }
    # The token goes where the catalog says (Shopify's X-Shopify-Access-Token), with its
    # fixed headers (API versions): a caller's header of the same name never reaches it.
    ours = {name.lower() for name, _ in target.headers}
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in NOT_FORWARDED
        and name.lower() not in named_in_connection
        and name.lower() not in ours
        and not name.lower().startswith("apiauth-")
    ]
    headers.extend(target.headers)
    return headers


def _upstream_url(target: ProxyTarget, path: str, request: Request) -> str | httpx.URL:
    url = f"{target.base_url}/{path.lstrip('/')}"
    if request.url.query:
        url += "?" + request.url.query
    if not target.injection.query:
        return url
    # A key sent as a query parameter (Mapbox's `access_token`) replaces the caller's.
    names = {name for name, _ in target.injection.query}
    parsed = httpx.URL(url)
    kept = [(k, v) for k, v in parsed.params.multi_items() if k not in names]
    return parsed.copy_with(params=httpx.QueryParams([*kept, *target.injection.query]))


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
    client = _client(request, guarded=target.guarded)
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
    except UrlNotAllowed as exc:
        return _gateway_error(502, f"{provider}: {exc.message}")
    except httpx.TimeoutException:
        return _gateway_error(504, f"{provider} did not answer in time")
    except httpx.HTTPError as exc:
        return _gateway_error(502, f"could not reach {provider}: {type(exc).__name__}")
    through = f"{broker.settings.public_url.rstrip('/')}/api/v1/proxy/{provider}"
    response = StreamingResponse(
        answer.aiter_raw(),
        status_code=answer.status_code,
        background=BackgroundTask(answer.aclose),
    )
    for name, value in _returned_headers(answer.headers.multi_items(), target.base_url, through):
        response.headers.append(name, value)
    # Which URLs `apiauth.proxy()` may map back through here (the client's `_ThroughBroker`).
    response.headers[UPSTREAM_HEADER] = target.base_url
    response.headers["Content-Security-Policy"] = PROXY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _returned_headers(
    headers: list[tuple[str, str]], base_url: str, through: str
) -> list[tuple[str, str]]:
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in NOT_RETURNED or lower.startswith(NOT_RETURNED_PREFIXES):
            continue
        if lower == "link":
            value = rewrite_link_header(value, base_url, through)
        elif lower in URL_HEADERS:
            value = through_proxy(value, base_url, through)
        kept.append((name, value))
    return kept


def through_proxy(url: str, base_url: str, through: str) -> str:
    """A URL on the provider's API base, as the same path and query through the proxy;
    any other URL as it is."""
    base = base_url.rstrip("/")
    if url == base or url.startswith((base + "/", base + "?")):
        return through + url[len(base) :]
    return url


def rewrite_link_header(value: str, base_url: str, through: str) -> str:
    """RFC 8288: each link's target is the URI-reference between `<` and `>`; only those
    are rewritten (parameters such as `rel="next"` are left as they are)."""
    out: list[str] = []
    rest = value
    while (start := rest.find("<")) != -1 and (end := rest.find(">", start)) != -1:
        out.append(rest[: start + 1])
        out.append(through_proxy(rest[start + 1 : end], base_url, through))
        rest = rest[end:]
        out.append(">")
        rest = rest[1:]
    out.append(rest)
    return "".join(out)


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
    body = error_body("provider_unreachable", message)
    return StreamingResponse(iter([body]), status_code=status, media_type="application/json")


def _client(request: Request, *, guarded: bool) -> httpx.AsyncClient:
    """One pooled async client per application, made on first use; another whose every call
    is checked against the URL policy, for providers that are not built in."""
    name = "guarded_proxy_client" if guarded else "proxy_client"
    client: httpx.AsyncClient | None = getattr(request.app.state, name, None)
    if client is None:
        broker = request.app.state.broker
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(broker.settings.http_timeout_seconds, read=60.0),
            follow_redirects=False,
            limits=limits,
            transport=(
                AsyncGuardedTransport(broker.provider_url_policy, limits=limits)
                if guarded
                else None
            ),
        )
        setattr(request.app.state, name, client)
    return client
