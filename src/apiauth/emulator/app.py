"""The provider emulator: every catalog provider's OAuth endpoints, played over real HTTP.

Requests arrive at `/{provider}/{host}/{path}`, the form `emulated_url()` gives the catalog's
URLs, and are matched against that provider's authorize, token, who-am-I and revoke URLs. The
catalog says how each provider behaves (client auth, PKCE, lifetimes, refresh style, revoke
style); `dialects` says what its answers look like. `/_admin/stats` and `/_admin/reset` are
for tests, `/_admin/grants` for benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp

from apiauth.emulator.api_endpoints import ApiRequest, find_endpoint
from apiauth.emulator.consent import REQUESTED_SCOPE_FIELD, render_consent, render_error
from apiauth.emulator.dialects import Dialect, Issued, TokenContext, dialect_for
from apiauth.emulator.state import EmulatorState, Fault, GrantError
from apiauth.providers import Catalog, Provider
from apiauth.providers.catalog import ACCESS_TOKEN

__all__ = ["create_emulator_app", "demo_client"]

Endpoint = Literal["authorize", "token", "userinfo", "revoke"]
ENDPOINTS = ("authorize", "token", "userinfo", "revoke")


def demo_client(provider: str) -> tuple[str, str]:
    """The OAuth app `serve --demo` registers with the emulator for `provider`."""
    return f"demo-{provider}-client", f"demo-{provider}-secret"


def create_emulator_app(
    catalog: Catalog,
    *,
    base_url: str,
    clients: Mapping[str, tuple[str, str]],
    token_ttl: int | None = None,
) -> ASGIApp:
    """An ASGI app emulating every provider of `catalog`.

    `base_url` is where the app is reachable (Salesforce's `instance_url` points under it);
    `clients` maps provider names to the (client_id, client_secret) each accepts; `token_ttl`
    shortens the lifetime of access tokens that expire anyway.
    """
    emulator = _Emulator(catalog, base_url.rstrip("/"), dict(clients), token_ttl)
    app = Starlette(
        routes=[
            Route("/_admin/stats", emulator.admin_stats, methods=["GET"]),
            Route("/_admin/reset", emulator.admin_reset, methods=["POST"]),
            Route("/_admin/faults", emulator.admin_faults, methods=["POST"]),
            Route("/_admin/grants", emulator.admin_grants, methods=["POST"]),
            Route(
                "/{provider}/{rest:path}",
                emulator.dispatch,
                methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
            ),
        ]
    )
    app.state.emulator = emulator
    return app


class _OAuthError(Exception):
    """An RFC 6749 error answer from the token or revoke endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class _Route:
    endpoint: Endpoint
    pattern: re.Pattern[str]
    path_only: bool  # `{instance_url}` URLs: the host is whatever instance_url said


def _routes_of(provider: Provider, base_path: str) -> list[_Route]:
    urls: list[tuple[Endpoint, str | None]] = [
        ("authorize", provider.authorization_url),
        ("token", provider.token_url),
        ("token", provider.refresh_url),
        ("userinfo", provider.userinfo_url),
        ("revoke", provider.revoke_url),
    ]
    routes = []
    emulated_prefix = f"{base_path}/{provider.name}/"
    for endpoint, url in urls:
        if url is None:
            continue
        if url.startswith("{instance_url}"):
            key, path_only = url[len("{instance_url}") :], True
        else:
            parts = urlsplit(url)
            if parts.path.startswith(emulated_prefix):
                key = parts.path[len(emulated_prefix) :]
            else:
                key = parts.netloc + parts.path
            path_only = False
        regex = re.escape(key.strip("/")).replace(re.escape("{client_id}"), r"(?P<client_id>[^/]+)")
        # Connection parameters (`{shop}.myshopify.com`): any value the caller filled in.
        regex = re.sub(r"\\\{[a-z][a-z0-9_]*\\\}", lambda _: r"[^/]+", regex)
        routes.append(_Route(endpoint, re.compile(regex), path_only))
    return routes


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, form-decoded per RFC 6749 §2.3.1."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


def _same(a: str | None, b: str) -> bool:
    return a is not None and secrets.compare_digest(a.encode(), b.encode())


def _with_query(url: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _form_value(form: FormData, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


class _Emulator:
    def __init__(
        self,
        catalog: Catalog,
        base_url: str,
        clients: dict[str, tuple[str, str]],
        token_ttl: int | None,
    ) -> None:
        self.catalog = catalog
        self.base_url = base_url
        self.clients = clients
        self.token_ttl = token_ttl
        self.state = EmulatorState(catalog.names())
        base_path = urlsplit(base_url).path.rstrip("/")
        self.routes = {name: _routes_of(p, base_path) for name, p in catalog.items()}

    # --- admin ---------------------------------------------------------------------------

    async def admin_stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def admin_reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"reset": True})

    async def admin_faults(self, request: Request) -> Response:
        """Queue a fault: `{"provider", "endpoint": "authorize|token|userinfo|revoke",
        "status": int|null, "body": {}, "headers": {}, "delay_seconds": 0, "times": 1}`, or
        garbage: `"raw_body": "<html>…", "content_type": "text/html", "raw_body_repeat": 1,
        "trickle_seconds": 0.5`."""
        try:
            spec = json.loads(await request.body())
            provider, endpoint = spec["provider"], spec["endpoint"]
            fault = Fault(
                status=None if spec.get("status") is None else int(spec["status"]),
                body=dict(spec.get("body") or {})
                | ({"padding": "x" * int(spec["pad_bytes"])} if spec.get("pad_bytes") else {}),
                headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
                delay_seconds=float(spec.get("delay_seconds") or 0.0),
                raw_body=None if spec.get("raw_body") is None else str(spec["raw_body"]),
                content_type=str(spec.get("content_type") or "application/json"),
                trickle_seconds=float(spec.get("trickle_seconds") or 0.0),
                raw_body_repeat=max(1, min(int(spec.get("raw_body_repeat") or 1), 10_000_000)),
            )
            times = int(spec.get("times", 1))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad fault: {exc}"}, 400)
        if provider not in self.catalog or endpoint not in ENDPOINTS:
            return JSONResponse({"error": "unknown provider or endpoint"}, 400)
        self.state.add_fault(provider, endpoint, fault, times)
        return JSONResponse({"queued": times})

    async def admin_grants(self, request: Request) -> Response:
        """Accept refresh tokens made outside a consent flow (benchmarks write connections
        straight into the database): `{"provider", "scopes": [...], "refresh_tokens": [...]}`,
        each token one grant of the provider's registered client."""
        try:
            spec = json.loads(await request.body())
            provider = str(spec["provider"])
            scopes = tuple(str(scope) for scope in spec.get("scopes") or ())
            tokens = [str(token) for token in spec["refresh_tokens"]]
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad grants: {exc}"}, 400)
        client = self.clients.get(provider)
        if provider not in self.catalog or client is None:
            return JSONResponse({"error": "unknown provider or no client registered"}, 400)
        imported = self.state.import_grants(provider, client[0], scopes, tokens)
        return JSONResponse({"imported": imported})

    # --- routing -------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        name = request.path_params["provider"]
        rest = request.path_params["rest"].strip("/")
        provider = self.catalog.get(name)
        if provider is None:
            return _not_found(f"The emulator has no provider {name!r}.")
        _host, _, path = rest.partition("/")
        for route in self.routes[name]:
            match = route.pattern.fullmatch(path if route.path_only else rest)
            if match is not None:
                break
        else:
            return await self.api_call(request, provider, rest)
        fault = self.state.next_fault(name, route.endpoint)
        if fault is not None:
            if fault.delay_seconds:
                await asyncio.sleep(fault.delay_seconds)
            if fault.status is not None:
                return _fault_response(fault)
        dialect = dialect_for(provider)
        if route.endpoint == "authorize":
            return await self.authorize(request, provider)
        if route.endpoint == "token":
            return await self.token(request, provider, dialect)
        if route.endpoint == "userinfo":
            return await self.userinfo(request, provider, dialect)
        return await self.revoke(request, provider, dialect, match.groupdict().get("client_id"))

    # --- consent -------------------------------------------------------------------------

    async def authorize(self, request: Request, provider: Provider) -> Response:
        ticked: set[str] = set()
        if request.method == "GET":
            params = dict(request.query_params)
        elif request.method == "POST":
            form = await request.form()
            params = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            # The checkboxes are named `scope`; what was asked for travels separately.
            params.pop("scope", None)
            requested_raw = params.pop(REQUESTED_SCOPE_FIELD, None)
            if requested_raw is not None:
                params["scope"] = requested_raw
            ticked = {v for v in form.getlist("scope") if isinstance(v, str)}
        else:
            return _method_not_allowed("GET, POST")
        if provider.scope_param != "scope" and provider.scope_param in params:
            # Slack's `user_scope`: from here on it is the requested scope like any other.
            params["scope"] = params.pop(provider.scope_param)

        client = self.clients.get(provider.name)
        client_id = params.get("client_id")
        if client is None or not _same(client_id, client[0]):
            return _consent_error(provider, "Unknown client_id: no such application.")
        redirect_uri = params.get("redirect_uri", "")
        if urlsplit(redirect_uri).scheme not in ("http", "https"):
            return _consent_error(provider, "redirect_uri is missing or not an http(s) URL.")
        state = params.get("state")

        def back(**result: str | None) -> Response:
            return RedirectResponse(_with_query(redirect_uri, {**result, "state": state}), 302)

        if params.get("response_type") != "code":
            return back(
                error="unsupported_response_type", error_description="Use response_type=code."
            )
        challenge = params.get("code_challenge")
        if challenge is not None and params.get("code_challenge_method") != "S256":
            return back(error="invalid_request", error_description="Only S256 PKCE is supported.")
        requested = self._requested_scopes(provider, params.get("scope"))
        unknown = [s for s in requested if provider.scopes and s not in provider.scope_names()]
        if unknown:
            return back(error="invalid_scope", error_description=f"Unknown scope {unknown[0]}.")

        if request.method == "GET":
            html = render_consent(
                provider,
                action=request.url.path,
                params=params,
                requested_scopes=requested,
                client_name=client_id or "",
            )
            return HTMLResponse(html, headers={"Cache-Control": "no-store"})

        if params.get("decision") != "authorize":
            return back(
                error="access_denied",
                error_description="The user denied the authorization request.",
            )
        granted = tuple(s for s in requested if s in ticked)
        code = self.state.issue_code(
            provider=provider.name,
            client_id=client[0],
            redirect_uri=redirect_uri,
            scopes=granted,
            code_challenge=challenge,
        )
        return back(code=code)

    @staticmethod
    def _requested_scopes(provider: Provider, raw: str | None) -> tuple[str, ...]:
        if raw is None:
            return provider.default_scopes
        # GitHub takes commas as well as spaces.
        parts = raw.replace(provider.scope_separator, " ").replace(",", " ").split()
        return tuple(dict.fromkeys(parts))

    # --- token endpoint ------------------------------------------------------------------

    async def token(self, request: Request, provider: Provider, dialect: Dialect) -> Response:
        if request.method != "POST":
            return _method_not_allowed("POST")
        form = await request.form()
        try:
            client_id, client_secret = self._authenticate(request, provider, form, strict=True)
            grant_type = _form_value(form, "grant_type") or dialect.default_grant_type
            if grant_type == "authorization_code":
                issued = self._exchange(provider, dialect, form, client_id)
            elif grant_type == "refresh_token":
                issued = self._refresh(provider, dialect, form, client_id)
            else:
                raise _OAuthError(
                    "unsupported_grant_type",
                    f"grant_type {grant_type!r} is not supported here.",
                )
        except _OAuthError as exc:
            return dialect.token_error(exc.error, exc.description, exc.status, request.headers)
        except GrantError as exc:
            return dialect.token_error(exc.error, exc.description, 400, request.headers)
        ctx = TokenContext(provider, self.base_url, client_id, client_secret)
        return dialect.token_answer(dialect.token_body(issued, ctx), request.headers)

    def _authenticate(
        self, request: Request, provider: Provider, form: FormData, *, strict: bool
    ) -> tuple[str, str]:
        """Check the client's credentials, sent the way the catalog says (strict) or either
        standard way (revocation: Authlib defaults to Basic there)."""
        client = self.clients.get(provider.name)
        if client is None:
            raise _OAuthError("invalid_client", "No OAuth app is registered here.", 401)
        basic = _basic_credentials(request)
        body_id = _form_value(form, "client_id")
        body_secret = _form_value(form, "client_secret")
        method = provider.token_auth_method
        if not strict:
            method = "client_secret_basic" if basic else "client_secret_post"
        if method == "client_secret_basic":
            if basic is None:
                raise _OAuthError(
                    "invalid_client",
                    f"{provider.display_name} expects HTTP Basic client authentication.",
                    401,
                )
            if body_secret is not None:
                raise _OAuthError(
                    "invalid_client", "client_secret must not also be sent in the body.", 401
                )
            sent_id, sent_secret = basic
            if body_id is not None and body_id != sent_id:
                raise _OAuthError("invalid_client", "client_id differs from the Basic user.", 401)
        else:
            if request.headers.get("authorization"):
                raise _OAuthError(
                    "invalid_client",
                    f"{provider.display_name} expects the client credentials in the form body, "
                    "not an Authorization header.",
                    401,
                )
            if body_id is None:
                raise _OAuthError("invalid_client", "client_id is missing.", 401)
            sent_id = body_id
            if method == "none":
                if body_secret is not None:
                    raise _OAuthError(
                        "invalid_client", "This is a public client: send no secret.", 401
                    )
                sent_secret = client[1]
            elif body_secret is None:
                raise _OAuthError("invalid_client", "client_secret is missing.", 401)
            else:
                sent_secret = body_secret
        if not (_same(sent_id, client[0]) and _same(sent_secret, client[1])):
            raise _OAuthError("invalid_client", "Client authentication failed.", 401)
        return client

    def _lifetime(self, provider: Provider) -> int | None:
        if provider.access_token_lifetime is None:
            return None
        return self.token_ttl or provider.access_token_lifetime

    def _exchange(
        self, provider: Provider, dialect: Dialect, form: FormData, client_id: str
    ) -> Issued:
        code = _form_value(form, "code")
        if not code:
            raise _OAuthError("invalid_request", "code is missing.")
        access_token = dialect.new_access_token()
        refresh: list[str] = []

        def make_refresh(scopes: tuple[str, ...]) -> str | None:
            if not dialect.issues_refresh_token(provider, scopes):
                return None
            refresh.append(dialect.new_refresh_token())
            return refresh[0]

        lifetime = self._lifetime(provider)
        grant = self.state.exchange_code(
            provider=provider.name,
            code=code,
            client_id=client_id,
            redirect_uri=_form_value(form, "redirect_uri"),
            code_verifier=_form_value(form, "code_verifier"),
            access_token=access_token,
            refresh_token=make_refresh,
            lifetime=lifetime,
        )
        return Issued(
            access_token=access_token,
            refresh_token=refresh[0] if refresh else None,
            expires_in=lifetime,
            scopes=grant.scopes,
            refreshed=False,
        )

    def _refresh(
        self, provider: Provider, dialect: Dialect, form: FormData, client_id: str
    ) -> Issued:
        refresh_token = _form_value(form, "refresh_token")
        if not refresh_token:
            raise _OAuthError("invalid_request", "refresh_token is missing.")
        access_token = dialect.new_access_token()
        lifetime = self._lifetime(provider)
        grant, handed_back = self.state.refresh(
            provider=provider.name,
            client_id=client_id,
            refresh_token=refresh_token,
            style=provider.refresh_token,
            access_token=access_token,
            new_refresh_token=dialect.new_refresh_token,
            lifetime=lifetime,
        )
        if (
            handed_back == refresh_token
            and provider.refresh_token == "reusable"  # noqa: S105 (a style, not a secret)
            and not dialect.echo_reusable_refresh_token
        ):
            handed_back = None
        scope = _form_value(form, "scope")
        if scope is not None:
            narrower = self._requested_scopes(provider, scope)
            if not set(narrower) <= set(grant.scopes):
                raise _OAuthError("invalid_scope", "A refresh cannot widen the granted scopes.")
        return Issued(
            access_token=access_token,
            refresh_token=handed_back,
            expires_in=lifetime,
            scopes=grant.scopes,
            refreshed=True,
        )

    # --- who am I ------------------------------------------------------------------------

    async def userinfo(self, request: Request, provider: Provider, dialect: Dialect) -> Response:
        if request.method not in ("GET", "POST"):
            return _method_not_allowed("GET, POST")
        token = _userinfo_token(provider, dialect, request)
        grant = self.state.live_grant(provider.name, token) if token else None
        if grant is None:
            if not token:
                self.state.count(provider.name, "userinfo_rejected")
            return dialect.unauthorized()
        client = self.clients.get(provider.name, ("", ""))
        ctx = TokenContext(provider, self.base_url, *client)
        response = JSONResponse(dialect.account(ctx, grant.scopes))
        if provider.name == "github" and provider.builtin:
            # GitHub lists the token's scopes in a header on every API answer.
            response.headers["X-OAuth-Scopes"] = ", ".join(grant.scopes)
        return response

    # --- the API calls the examples make (api_endpoints) ---------------------------------

    async def api_call(self, request: Request, provider: Provider, rest: str) -> Response:
        host, _, path = rest.partition("/")
        found = find_endpoint(provider.name, request.method, host, "/" + path)
        if found is None or not provider.builtin:
            return _not_found(f"{provider.display_name} (emulated) has no endpoint /{rest}.")
        endpoint, path_params = found
        dialect = dialect_for(provider)
        token = dialect.bearer_token(request.headers.get("authorization", ""))
        grant = self.state.live_grant(provider.name, token, api=True) if token else None
        if grant is None:
            if not token:
                self.state.count(provider.name, "api_rejected")
            return dialect.unauthorized()
        answer = endpoint.handler(
            ApiRequest(
                method=request.method,
                host=host,
                path="/" + path,
                path_params=path_params,
                query=dict(request.query_params),
                headers=request.headers,
                scopes=grant.scopes,
                host_url=f"{self.base_url}/{provider.name}/{host}",
            )
        )
        return JSONResponse(answer.body, answer.status, headers=dict(answer.headers))

    # --- revocation ----------------------------------------------------------------------

    async def revoke(
        self, request: Request, provider: Provider, dialect: Dialect, path_client_id: str | None
    ) -> Response:
        if provider.revoke_style == "github":
            return await self._revoke_github(request, provider, path_client_id)
        if request.method != "POST":
            return _method_not_allowed("POST")
        form = await request.form()
        if provider.revoke_style == "stripe":
            return self._revoke_stripe(request, provider, dialect, form)
        if provider.revoke_style == "bearer":
            # The access token revokes itself (Dropbox, Slack): no client authentication.
            token = dialect.bearer_token(request.headers.get("authorization", ""))
            if token is None or not self.state.revoke_token(
                provider.name, self.clients.get(provider.name, ("", ""))[0], token
            ):
                return dialect.unauthorized()
            return JSONResponse(None)
        # RFC 7009: authenticate the client, revoke, and answer 200 even for unknown tokens.
        try:
            client_id, _ = self._authenticate(request, provider, form, strict=False)
            token = _form_value(form, "token")
            if not token:
                raise _OAuthError("invalid_request", "token is missing.")
        except _OAuthError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description}, exc.status
            )
        self.state.revoke_token(provider.name, client_id, token)
        return Response(status_code=200)

    async def _revoke_github(
        self, request: Request, provider: Provider, path_client_id: str | None
    ) -> Response:
        # https://docs.github.com/en/rest/apps/oauth-applications#delete-an-app-token
        if request.method != "DELETE":
            return _method_not_allowed("DELETE")
        client = self.clients.get(provider.name)
        basic = _basic_credentials(request)
        if (
            client is None
            or basic is None
            or not _same(basic[0], client[0])
            or not _same(basic[1], client[1])
            or path_client_id != client[0]
        ):
            return JSONResponse(
                {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"},
                404,
            )
        try:
            body: Any = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not self.state.revoke_token(
            provider.name, client[0], token
        ):
            return JSONResponse(
                {
                    "message": "Validation Failed",
                    "documentation_url": "https://docs.github.com/rest",
                },
                422,
            )
        return Response(status_code=204)

    def _revoke_stripe(
        self, request: Request, provider: Provider, dialect: Dialect, form: FormData
    ) -> Response:
        # https://docs.stripe.com/connect/oauth-reference#post-deauthorize: the platform's
        # secret key as the Basic user name, client_id and stripe_user_id in the body.
        client = self.clients.get(provider.name)
        basic = _basic_credentials(request)
        client_id = _form_value(form, "client_id")
        if client is None or basic is None or not _same(basic[0], client[1]):
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Invalid API Key provided."},
                401,
            )
        if not _same(client_id, client[0]):
            return JSONResponse(
                {
                    "error": "invalid_client",
                    "error_description": f"No such application: {client_id}",
                },
                401,
            )
        account = _form_value(form, "stripe_user_id")
        ctx = TokenContext(provider, self.base_url, *client)
        if account != dialect.account(ctx, ()).get("id") or not self.state.revoke_client(
            provider.name, client[0]
        ):
            return JSONResponse(
                {
                    "error": "invalid_client",
                    "error_description": f"{account} is not connected to {client_id}.",
                },
                401,
            )
        return JSONResponse({"stripe_user_id": account})


def _userinfo_token(provider: Provider, dialect: Dialect, request: Request) -> str | None:
    """The access token where the catalog's `userinfo_headers` put it (Shopify's own header,
    Mailchimp's `OAuth` scheme), else the Bearer; None when a fixed header is missing."""
    token = None
    for header, template in provider.userinfo_headers.items():
        sent = request.headers.get(header)
        if sent is None:
            return None
        prefix, found, suffix = template.partition(ACCESS_TOKEN)
        if not found:
            if sent != template:
                return None
        elif sent.startswith(prefix) and sent.endswith(suffix):
            token = sent[len(prefix) : len(sent) - len(suffix)] or None
    if any(ACCESS_TOKEN in t for t in provider.userinfo_headers.values()):
        return token
    return dialect.bearer_token(request.headers.get("authorization", ""))


def _not_found(message: str) -> Response:
    return JSONResponse({"error": "not_found", "error_description": message}, 404)


def _method_not_allowed(allowed: str) -> Response:
    return JSONResponse(
        {"error": "method_not_allowed", "error_description": f"Use {allowed}."},
        405,
        headers={"Allow": allowed},
    )


def _consent_error(provider: Provider, message: str) -> Response:
    # RFC 6749 §4.1.2.1: with a bad client or redirect URI, tell the person, do not redirect.
    return HTMLResponse(render_error(provider, message), 400)


def _fault_response(fault: Fault) -> Response:
    if fault.raw_body is None:
        return JSONResponse(fault.body, fault.status or 200, headers=fault.headers)
    body = fault.raw_body.encode("utf-8") * fault.raw_body_repeat
    if not fault.trickle_seconds:
        return Response(body, fault.status or 200, fault.headers, fault.content_type)

    async def trickle() -> AsyncIterator[bytes]:
        for index in range(len(body)):
            await asyncio.sleep(fault.trickle_seconds)
            yield body[index : index + 1]

    return StreamingResponse(trickle(), fault.status or 200, fault.headers, fault.content_type)
