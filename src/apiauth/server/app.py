"""The ASGI application: API, OAuth callback, health checks and (in demo mode) the emulator.

Errors become responses here and nowhere else: a domain error keeps its status and message,
anything unexpected is a 500 that names no detail (the log has it), and a database that is
down is a 503 that says so.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from apiauth import __version__
from apiauth.domain import connect_flow, visitors
from apiauth.domain.broker import Broker
from apiauth.emulator import create_emulator_app, well_known_app
from apiauth.errors import ApiAuthServerError, OAuthFlowError, RateLimited
from apiauth.kms import KmsError
from apiauth.oauth import registration
from apiauth.server.api import router
from apiauth.server.client_address import ClientAddresses
from apiauth.server.dashboard import install_dashboard
from apiauth.server.error_body import error_response
from apiauth.server.fast_path import FastPath
from apiauth.server.limits import BodySizeLimit
from apiauth.server.logs import bind
from apiauth.server.metrics import router as metrics_router
from apiauth.server.proxy import router as proxy_router
from apiauth.server.rate_limits import RateLimits
from apiauth.server.read_path import ReadPath
from apiauth.server.request_context import REQUEST_ID_HEADER, RequestContext, request_id_of
from apiauth.server.routes import add_routes
from apiauth.server.schemas import ErrorResponse, Health
from apiauth.server.security_headers import SecurityHeaders, style_hash
from apiauth.server.visitor_api import router as visitor_router
from apiauth.server.workers import background_workers
from apiauth.store.db import schema_is_current

log = logging.getLogger(__name__)


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


# Allowed by its hash in the Content-Security-Policy (`security_headers.py`).
_PAGE_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;"
    "padding:0 1rem;color:#1f2328}h1{font-size:1.4rem}.ok{color:#1a7f37}.err{color:#cf222e}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)} · apiauth</title>"
        f"<style>{_PAGE_STYLE}</style></head><body>"
        f"{body}</body></html>",
        status_code=status,
    )


def _with_query(path: str, **params: str) -> str:
    separator = "&" if "?" in path else "?"
    return path + separator + urlencode(params)


async def _bind_log_fields(request: Request) -> None:
    """The site and provider a routed request is about, for its log lines (`logs.bind`)."""
    params = request.path_params
    site = params.get("site")
    route = request.scope.get("route")
    if site is None and getattr(route, "path", "").startswith("/sites/{name}"):
        site = params.get("name")  # the dashboard's site pages
    bind(site=site, provider=params.get("provider"))


def create_app(
    broker: Broker,
    *,
    demo: bool = False,
    workers: bool = True,
    refresher: bool = True,
    emulator_clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The application; with `workers`, the background workers (the refresher unless told
    not to, and the delivery of hooks) run while it does. `demo`: the provider emulator is
    mounted at `/_emulator`, its codes and tokens ageing by `emulator_clock` (seconds)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = (
            background_workers(
                broker, refresher=refresher, replicas_seen=app.state.rate_limits.share_among
            )
            if workers
            else []
        )
        for worker in running:
            worker.start()
        try:
            yield
        finally:
            for worker in running:
                worker.stop()
            for name in ("proxy_client", "guarded_proxy_client"):
                proxy_client = getattr(app.state, name, None)
                if proxy_client is not None:
                    await proxy_client.aclose()

    app = FastAPI(
        lifespan=lifespan,
        dependencies=[Depends(_bind_log_fields)],
        title="apiauth",
        version=__version__,
        description="Self-hosted API authentication broker: connect providers once, hand "
        "fresh bearer tokens to builds and functions.",
    )
    app.state.broker = broker
    app.state.demo = demo
    app.state.rate_limits = RateLimits(broker.settings)
    app.state.client_addresses = ClientAddresses(broker.settings.trusted_proxy_networks)
    app.state.read_path = ReadPath(broker)
    # Innermost of ours: the remembered secrets answers and /healthz skip the router.
    app.add_middleware(
        FastPath,
        read_path=app.state.read_path,
        limits=app.state.rate_limits,
        addresses=app.state.client_addresses,
    )
    app.add_middleware(BodySizeLimit)

    @app.exception_handler(ApiAuthServerError)
    def domain_error(request: Request, exc: ApiAuthServerError) -> Response:
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors()[:10]:
            if error.get("type") == "json_invalid":
                reason = error.get("ctx", {}).get("error", "malformed")
                problems.append(f"the body is not valid JSON ({reason})")
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
        return error_response(422, "invalid_input", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(DataError)
    def unstorable_input(request: Request, exc: DataError) -> Response:
        # The database refused a value from the request (PostgreSQL: a NUL character in a
        # string): bad input, not a database that is down.
        log.info("the database refused a value: %s", type(exc.orig).__name__)
        return error_response(
            422,
            "invalid_input",
            "the request holds a value that cannot be stored or looked up, such as a NUL character",
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    def database_down(request: Request, exc: Exception) -> Response:
        log.error("database error: %s", type(exc).__name__)
        return error_response(
            503,
            "database_unavailable",
            "the database is not answering; try again shortly",
            {"Retry-After": "5"},
        )

    @app.exception_handler(KmsError)
    def kms_failed(request: Request, exc: KmsError) -> Response:
        # The message names the KMS and its answer, never key material.
        log.error("key management service: %s", exc)
        return error_response(
            503,
            "kms_unavailable",
            "the key management service did not unwrap a key; try again shortly",
            {"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        request_id = request_id_of(request)
        # Answered outside `RequestContext` (by Starlette's outermost middleware): the id the
        # log line carries is added here.
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        return error_response(
            500, "internal_error", "something went wrong on the server; see its log", headers
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Health:
        """The process answers."""
        return Health(status="ok")

    @app.get("/readyz", tags=["health"], responses={503: {"model": Health}})
    def readyz() -> Any:
        """The database answers and its schema is current."""
        try:
            with broker.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            if not schema_is_current(broker.engine):
                return JSONResponse({"status": "schema not current"}, status_code=503)
        except DBAPIError:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return Health(status="ok")

    @app.get("/oauth/client-metadata.json", tags=["oauth"])
    def client_metadata_document() -> JSONResponse:
        """apiauth's Client ID Metadata Document: servers that read them take this URL as
        apiauth's client id and fetch it to learn the redirect URI (no registration)."""
        settings = broker.settings
        document = registration.client_metadata_document(
            settings.client_metadata_url, settings.redirect_uri, settings.public_url
        )
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    @app.get(
        "/oauth/callback",
        tags=["oauth"],
        include_in_schema=True,
        responses={
            303: {"description": "Back to the dashboard page the flow started from."},
            400: {"model": ErrorResponse, "description": "The OAuth flow failed."},
            403: {
                "model": ErrorResponse,
                "description": "This browser is not the one the flow was bound to.",
            },
        },
    )
    def oauth_callback(
        request: Request,
        state: str | None = None,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
        iss: str | None = None,
    ) -> Response:
        """The one redirect URI registered with every provider (`iss`: RFC 9207)."""
        try:
            done = connect_flow.complete_authorization(
                broker,
                state=state,
                code=code,
                error=error,
                error_description=error_description,
                iss=iss,
                bindings=request.cookies,
                callback=dict(request.query_params),
            )
        except ApiAuthServerError as exc:
            if isinstance(exc, OAuthFlowError) and exc.return_url:
                return RedirectResponse(
                    visitors.return_location(exc.return_url, apiauth_error=exc.message), 303
                )
            if isinstance(exc, OAuthFlowError) and exc.return_to:
                return RedirectResponse(_with_query(exc.return_to, error=exc.message), 303)
            if _wants_html(request):
                return _page(
                    "Connection failed",
                    f"<h1 class=err>Connection failed</h1><p>{html.escape(exc.message)}</p>",
                    exc.status,
                )
            return error_response(exc.status, exc.code, exc.message)
        view = done.connection
        if done.return_url:
            return RedirectResponse(
                visitors.return_location(done.return_url, apiauth_connected=view.provider), 303
            )
        if done.return_to:
            return RedirectResponse(_with_query(done.return_to, connected=view.provider), 303)
        who = view.account_login or view.account_id or "an account"
        if _wants_html(request):
            known = broker.catalog.get(view.provider)
            provider = known.display_name if known is not None else view.provider
            return _page(
                f"{provider} connected",
                f"<h1 class=ok>{html.escape(provider)} connected</h1>"
                f"<p>Site <b>{html.escape(done.site_name)}</b> is connected as "
                f"<b>{html.escape(who)}</b> with scopes "
                f"<code>{html.escape(' '.join(view.granted_scopes) or '(none)')}</code>.</p>"
                "<p>You can close this window.</p>",
            )
        return JSONResponse(
            {
                "site": done.site_name,
                "provider": view.provider,
                "status": view.status,
                "account": {"id": view.account_id, "login": view.account_login},
                "granted_scopes": list(view.granted_scopes),
            }
        )

    for routes in (router, visitor_router, proxy_router, metrics_router):
        add_routes(app, routes)
    install_dashboard(app)
    app.add_middleware(
        SecurityHeaders,
        https=broker.settings.public_url.startswith("https://"),
        style_sources=[style_hash(_PAGE_STYLE)],
    )
    # Outermost of ours: every answer gets its request id and is measured.
    app.add_middleware(RequestContext, metrics=broker.runtime.metrics)

    if demo:
        emulator_base = broker.settings.public_url.rstrip("/") + "/_emulator"
        emulator = create_emulator_app(
            broker.catalog.emulated(),
            base_url=emulator_base,
            clients={
                name: (app_.client_id, app_.client_secret or "")
                for name, app_ in broker.default_apps.items()
            },
            token_ttl=broker.settings.emulator_token_ttl,
            clock=emulator_clock,
        )
        app.mount("/_emulator", emulator)
        # RFC 8414 / RFC 9728 put the emulated servers' metadata under the origin's root.
        app.mount("/.well-known", well_known_app(emulator.state.standard_servers))
    return app
