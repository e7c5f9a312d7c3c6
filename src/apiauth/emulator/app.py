"""The provider emulator: every catalog provider's OAuth endpoints, played over real HTTP.

Requests arrive at `/{provider}/{host}/{path}`, the form `emulated_url()` gives the catalog's
URLs, and are matched against that provider's authorize, token, who-am-I and revoke URLs. The
catalog says how each provider behaves (client auth, PKCE, lifetimes, refresh style, revoke
style); `dialects` says what its answers look like. `/_admin/stats` and `/_admin/reset` are
for tests, `/_admin/grants` for benchmarks; none of them takes a request from another site
(`admin_guard`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route

from apiauth.emulator.admin_guard import AdminGuard
from apiauth.emulator.api_endpoints import ApiRequest, find_endpoint
from apiauth.emulator.consent import REQUESTED_SCOPE_FIELD, render_consent, render_error
from apiauth.emulator.dialects import Dialect, Issued, TokenContext, dialect_for, learned_value
from apiauth.emulator.github_apps import GitHubApps
from apiauth.emulator.keys import (
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER_GRANT,
    AssertionRefused,
    KeyRing,
    PublicKeys,
    account_answer,
    presented_key,
    refusal,
)
from apiauth.emulator.standard_server import StandardServers, well_known_app
from apiauth.emulator.state import EmulatorState, Fault, GrantError
from apiauth.providers import KEY_MODES, MACHINE_MODES, Catalog, Provider
from apiauth.providers.catalog import ACCESS_TOKEN, LearnedValue

__all__ = ["create_emulator_app"]

Endpoint = Literal["authorize", "token", "userinfo", "revoke", "learn"]
ENDPOINTS = ("authorize", "token", "userinfo", "revoke")


def create_emulator_app(
    catalog: Catalog,
    *,
    base_url: str,
    clients: Mapping[str, tuple[str, str]],
    token_ttl: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """An ASGI app emulating every provider of `catalog`.

    `base_url` is where the app is reachable (Salesforce's `instance_url` points under it);
    `clients` maps provider names to the (client_id, client_secret) each accepts; `token_ttl`
    shortens the lifetime of access tokens that expire anyway; codes and tokens age by
    `clock` (seconds; moved on further by `POST /_admin/clock`).
    """
    emulator = _Emulator(catalog, base_url.rstrip("/"), dict(clients), token_ttl, clock)
    standard = StandardServers(base_url)
    app = Starlette(
        routes=[
            *standard.routes(),
            # Reachable where the emulator has an origin of its own (`python -m apiauth.
            # emulator`); `serve --demo` mounts `well_known_app` at its root instead.
            Mount("/.well-known", well_known_app(standard)),
            Route("/_admin/stats", emulator.admin_stats, methods=["GET"]),
            Route("/_admin/reset", emulator.admin_reset, methods=["POST"]),
            Route("/_admin/faults", emulator.admin_faults, methods=["POST"]),
            Route("/_admin/grants", emulator.admin_grants, methods=["POST"]),
            Route("/_admin/revoke-key", emulator.admin_revoke_key, methods=["POST"]),
            Route("/_admin/public-keys", emulator.admin_public_keys, methods=["POST"]),
            Route("/_admin/github-apps", emulator.admin_github_apps, methods=["POST"]),
            Route("/_admin/clock", emulator.admin_clock, methods=["POST"]),
            Route(
                "/{provider}/{rest:path}",
                emulator.dispatch,
                methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
            ),
        ],
        middleware=[Middleware(AdminGuard)],
    )
    app.state.emulator = emulator
    app.state.standard_servers = standard
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
    learned: LearnedValue | None = None  # a learn URL's value


# The route table of each provider object (the parsed catalog is shared by every app of a
# process): made once, not per emulator app. Derived from frozen data and never changed, so
# emulators share nothing by it; the weak reference tells a reused id apart and drops the
# entry with its provider.
_route_tables: dict[tuple[int, str], tuple[weakref.ref[Provider], list[_Route]]] = {}


def _routes_of(provider: Provider, base_path: str) -> list[_Route]:
    key = (id(provider), base_path)
    known = _route_tables.get(key)
    if known is not None and known[0]() is provider:
        return known[1]
    routes = _make_routes(provider, base_path)
    gone = weakref.ref(provider, lambda _: _route_tables.pop(key, None))
    _route_tables[key] = (gone, routes)
    return routes


def _make_routes(provider: Provider, base_path: str) -> list[_Route]:
    urls: list[tuple[Endpoint, str | None, LearnedValue | None]] = [
        ("authorize", provider.authorization_url, None),
        ("token", provider.token_url, None),
        ("token", provider.refresh_url, None),
        ("userinfo", provider.userinfo_url, None),
        ("revoke", provider.revoke_url, None),
        *(("learn", v.source, v) for v in provider.learn_urls()),
    ]
    routes = []
    emulated_prefix = f"{base_path}/{provider.name}/"
    for endpoint, url, learned in urls:
        if not url:  # None, or "" for a key mode's authorize and token URLs
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
        routes.append(_Route(endpoint, re.compile(regex), path_only, learned))
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.base_url = base_url
        self.clients = clients
        self.token_ttl = token_ttl
        self.state = EmulatorState(catalog.names(), clock)
        self.keys = KeyRing()
        self.public_keys = PublicKeys()
        self.github_apps = GitHubApps(self.state, self._lifetime)
        base_path = urlsplit(base_url).path.rstrip("/")
        self.routes = {name: _routes_of(p, base_path) for name, p in catalog.items()}

    # --- admin ---------------------------------------------------------------------------

    async def admin_stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def admin_clock(self, request: Request) -> Response:
        """`{"advance_seconds": N}`: age every code and token by N seconds (tests of expiry)."""
        try:
            seconds = float(json.loads(await request.body())["advance_seconds"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "give advance_seconds, a number"}, 400)
        if not 0 <= seconds <= 10 * 365 * 86400:
            return JSONResponse({"error": "advance_seconds must be 0 to ten years"}, 400)
        self.state.advance(seconds)
        return JSONResponse({"advanced": seconds})

    async def admin_reset(self, request: Request) -> Response:
        self.state.reset()
        self.keys.reset()
        self.github_apps.reset()
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

    async def admin_public_keys(self, request: Request) -> Response:
        """Register a service account's public key, as uploading it at the provider does:
        `{"provider", "issuer", "jwk", "delegation_domain"?}`; with `delegation_domain` the
        account may also act as that Workspace domain's users (`sub`), as a super
        administrator's grant of domain-wide delegation allows."""
        try:
            spec = json.loads(await request.body())
            provider, issuer, jwk = str(spec["provider"]), str(spec["issuer"]), spec["jwk"]
            domain = spec.get("delegation_domain")
            if domain is not None and not isinstance(domain, str):
                raise TypeError("delegation_domain must be a string")
            self.public_keys.register(provider, issuer, jwk, domain)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad key: {exc}"}, 400)
        return JSONResponse({"registered": True})

    async def admin_github_apps(self, request: Request) -> Response:
        """Register a GitHub App as its owner does on GitHub (its id, slug, the public part
        of its key, its setup URL, the account installs land on): `{"provider", "app_id",
        "slug", "jwk", "setup_url", "account"?}`; or suspend an installation:
        `{"suspend_installation": ID}`."""
        try:
            spec = json.loads(await request.body())
            if "suspend_installation" in spec:
                found = self.github_apps.suspend(int(spec["suspend_installation"]))
                return JSONResponse({"suspended": found}, 200 if found else 404)
            if str(spec["provider"]) not in self.catalog:
                return JSONResponse({"error": "unknown provider"}, 400)
            return JSONResponse(self.github_apps.register(spec))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad app: {exc}"}, 400)

    async def admin_revoke_key(self, request: Request) -> Response:
        """Revoke a demo key, as a person would at the provider: `{"provider", "key"}`."""
        try:
            spec = json.loads(await request.body())
            provider, key = str(spec["provider"]), str(spec["key"])
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad key: {exc}"}, 400)
        if provider not in self.catalog:
            return JSONResponse({"error": "unknown provider"}, 400)
        self.keys.revoke(provider, key)
        return JSONResponse({"revoked": True})

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
        if provider.auth_mode in KEY_MODES:
            return self.verify_key(request, provider)
        dialect = dialect_for(provider)
        if provider.auth_mode == "github_app":
            return self.github_app(request, provider, dialect, route.endpoint, path)
        if route.endpoint == "authorize":
            return await self.authorize(request, provider)
        if route.endpoint == "token":
            return await self.token(request, provider, dialect)
        if route.endpoint == "userinfo":
            return await self.userinfo(request, provider, dialect)
        if route.learned is not None:
            return await self.learn(request, provider, dialect, route.learned)
        return await self.revoke(request, provider, dialect, match.groupdict().get("client_id"))

    def github_app(
        self, request: Request, provider: Provider, dialect: Dialect, endpoint: str, path: str
    ) -> Response:
        apps = self.github_apps
        if endpoint == "authorize":
            return apps.install(request, provider)
        if endpoint == "token":
            return apps.access_token(request, provider, path)
        if endpoint == "userinfo":
            return apps.installation(request, provider, path)
        token = dialect.bearer_token(request.headers.get("authorization", ""))
        return apps.revoke(request, provider, token)

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
            if "code" in result:
                # Values the catalog learns from the callback (QuickBooks' realmId).
                for value in provider.learn:
                    if value.source == "callback":
                        result[value.path] = learned_value(value.name)
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
        try:
            form = await _token_request_body(request, provider)
            if provider.auth_mode == "jwt_bearer":
                return self._service_account_token(provider, dialect, form, request)
            client_id, client_secret = self._authenticate(request, provider, form, strict=True)
            grant_type = _form_value(form, "grant_type") or dialect.default_grant_type
            if grant_type == "authorization_code":
                _check_extra_params(form, provider.token_params, "token_params")
                issued = self._exchange(provider, dialect, form, client_id)
            elif grant_type == "refresh_token":
                _check_extra_params(form, provider.refresh_params, "refresh_params")
                issued = self._refresh(provider, dialect, form, client_id)
            elif grant_type == "client_credentials" and provider.auth_mode in MACHINE_MODES:
                issued = self._client_token(provider, dialect, form, client_id)
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
        self,
        request: Request,
        provider: Provider,
        form: FormData,
        *,
        strict: bool,
        method: str | None = None,
    ) -> tuple[str, str]:
        """Check the client's credentials, sent the way the catalog says (strict) or either
        standard way (revocation: Authlib defaults to Basic there)."""
        client = self.clients.get(provider.name)
        if client is None:
            raise _OAuthError("invalid_client", "No OAuth app is registered here.", 401)
        basic = _basic_credentials(request)
        body_id = _form_value(form, "client_id")
        body_secret = _form_value(form, "client_secret")
        method = method or provider.token_auth_method
        if not strict:
            method = "client_secret_basic" if basic else "client_secret_post"
        if method == "private_key_jwt":
            # RFC 7523 §2.2: no secret; a JWT signed with the client's private key, checked
            # against the public part registered with `/_admin/public-keys`.
            if basic is not None or body_secret is not None:
                raise _OAuthError("invalid_client", "Send a client assertion, no secret.", 401)
            if _form_value(form, "client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise _OAuthError(
                    "invalid_client", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}.", 401
                )
            if body_id is not None and not _same(body_id, client[0]):
                raise _OAuthError("invalid_client", "client_id differs from the assertion.", 401)
            try:
                self.public_keys.verify_client_assertion(
                    provider,
                    _form_value(form, "client_assertion") or "",
                    provider.token_url,
                    client[0],
                )
            except AssertionRefused as exc:
                raise _OAuthError("invalid_client", str(exc), 401) from None
            return client
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

    def _service_account_token(
        self, provider: Provider, dialect: Dialect, form: FormData, request: Request
    ) -> Response:
        """RFC 7523 §2.1 as Google's token endpoint plays it: the assertion's signature is
        checked against the public key registered for its `iss` (`/_admin/public-keys`),
        its `aud` must be this token URL, its `exp` in the future and at most an hour on. A
        `sub` (domain-wide delegation) must be a user of the domain the account was granted
        delegation in; the token then acts as that user (the grant remembers it)."""
        try:
            if _form_value(form, "grant_type") != JWT_BEARER_GRANT:
                raise _OAuthError("unsupported_grant_type", "Use the jwt-bearer grant.")
            claims = self.public_keys.verify(
                provider, _form_value(form, "assertion") or "", provider.token_url
            )
            subject = claims.get("sub")
            if subject is not None and (
                not isinstance(subject, str)
                or not self.public_keys.may_act_as(provider.name, str(claims["iss"]), subject)
            ):
                # Not in Google's docs: the 401 and its words as clients report them
                # (https://docs.n8n.io/integrations/builtin/trigger-nodes/n8n-nodes-base.gmailtrigger/common-issues/).
                raise _OAuthError(
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or "
                    "client not authorized for any of the scopes requested.",
                    401,
                )
            scopes = self._requested_scopes(provider, str(claims.get("scope") or "") or None)
            access_token = dialect.new_access_token()
            lifetime = self._lifetime(provider)
            self.state.issue_client_token(
                provider=provider.name,
                client_id=str(claims["iss"]),
                scopes=scopes,
                access_token=access_token,
                lifetime=lifetime,
                subject=subject,
            )
        except _OAuthError as exc:
            return dialect.token_error(exc.error, exc.description, exc.status, request.headers)
        except AssertionRefused as exc:
            return dialect.token_error("invalid_grant", str(exc), 400, request.headers)
        issued = Issued(access_token, None, lifetime, scopes, False)
        ctx = TokenContext(provider, self.base_url, str(claims["iss"]), "")
        return dialect.token_answer(dialect.token_body(issued, ctx), request.headers)

    def _client_token(
        self, provider: Provider, dialect: Dialect, form: FormData, client_id: str
    ) -> Issued:
        requested = self._requested_scopes(provider, _form_value(form, "scope"))
        unknown = [s for s in requested if s not in provider.scope_names()]
        if unknown:
            raise _OAuthError("invalid_scope", f"Unknown scope {unknown[0]!r}.")
        for name, value in provider.token_params.items():
            if _form_value(form, name) != value:
                raise _OAuthError("invalid_request", f"{name} must be {value!r}.")
        access_token = dialect.new_access_token()
        lifetime = self._lifetime(provider)
        self.state.issue_client_token(
            provider=provider.name,
            client_id=client_id,
            scopes=requested,
            access_token=access_token,
            lifetime=lifetime,
        )
        return Issued(
            access_token=access_token,
            refresh_token=None,
            expires_in=lifetime,
            scopes=requested,
            refreshed=False,
        )

    def _lifetime(self, provider: Provider) -> int | None:
        """The `expires_in` the answer carries."""
        if provider.access_token_lifetime is None:
            return None
        return self.token_ttl or provider.access_token_lifetime

    def _stored_lifetime(self, provider: Provider, dialect: Dialect) -> int | None:
        """How long the token really lives: `expires_in`, or a session timeout the answer
        does not tell (Salesforce), shortened by the token TTL like any expiring token."""
        lifetime = self._lifetime(provider)
        if lifetime is None and dialect.session_lifetime is not None:
            return self.token_ttl or dialect.session_lifetime
        return lifetime

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
        stored = self._stored_lifetime(provider, dialect)
        grant = self.state.exchange_code(
            provider=provider.name,
            code=code,
            client_id=client_id,
            redirect_uri=_form_value(form, "redirect_uri"),
            code_verifier=_form_value(form, "code_verifier"),
            access_token=access_token,
            refresh_token=make_refresh,
            lifetime=stored,
            refresh_lifetime=dialect.refresh_lifetime,
            max_grants_per_scopes=dialect.max_grants_per_scopes,
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
            lifetime=self._stored_lifetime(provider, dialect),
            refresh_lifetime=dialect.refresh_lifetime,
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

    async def learn(
        self, request: Request, provider: Provider, dialect: Dialect, learned: LearnedValue
    ) -> Response:
        """A learn URL (Atlassian's accessible-resources): read with the access token."""
        if request.method != "GET":
            return _method_not_allowed("GET")
        token = _userinfo_token(provider, dialect, request)
        if not token or self.state.live_grant(provider.name, token, api=True) is None:
            return dialect.unauthorized()
        ctx = TokenContext(provider, self.base_url, *self.clients.get(provider.name, ("", "")))
        return JSONResponse(dialect.learn_answer(ctx, learned.path, learned.name))

    # --- the API calls the examples make (api_endpoints) ---------------------------------

    def verify_key(self, request: Request, provider: Provider) -> Response:
        """A key-based provider's verification endpoint (OpenAI's `GET /v1/models`)."""
        presented = presented_key(provider, request)
        if not self.keys.accepts(provider, presented):
            self.state.count(provider.name, "keys_refused")
            return refusal(provider)
        self.state.count(provider.name, "keys_verified")
        return JSONResponse(account_answer(provider, presented[0] if presented else None))

    async def api_call(self, request: Request, provider: Provider, rest: str) -> Response:
        host, _, path = rest.partition("/")
        if provider.auth_mode in KEY_MODES and not self.keys.accepts(
            provider, presented_key(provider, request)
        ):
            self.state.count(provider.name, "keys_refused")
            return refusal(provider)
        found = find_endpoint(provider.name, request.method, host, "/" + path)
        if found is None or not provider.builtin:
            return _not_found(f"{provider.display_name} (emulated) has no endpoint /{rest}.")
        endpoint, path_params = found
        dialect = dialect_for(provider)
        token = _proxy_token(provider, request) or dialect.bearer_token(
            request.headers.get("authorization", "")
        )
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
                subject=grant.subject,
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
        try:
            # RFC 7009 revocations are encoded like the token requests (Notion: JSON).
            form = await _token_request_body(request, provider)
        except _OAuthError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description}, exc.status
            )
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
        # Either standard way, unless the catalog names one for revocation (Calendly).
        try:
            strict = provider.revoke_auth_method is not None
            client_id, _ = self._authenticate(
                request, provider, form, strict=strict, method=provider.revoke_auth_method
            )
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
    Mailchimp's `OAuth` scheme), else the Bearer; None when a fixed header is missing. The
    way the proxy sends it (`proxy_auth_header`, its fixed `proxy_headers`) works too, as
    the who-am-I URL is an API URL like any other."""
    via_proxy = _proxy_token(provider, request)
    if via_proxy is not None:
        return via_proxy
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


def _proxy_token(provider: Provider, request: Request) -> str | None:
    """The token of a call made the way the catalog's proxy settings say, every fixed proxy
    header present (an API version the real API would insist on); else None."""
    if provider.proxy_auth_header == "Authorization" and provider.proxy_auth_scheme == "Bearer":
        return None
    sent = request.headers.get(provider.proxy_auth_header)
    if sent is None:
        return None
    scheme = provider.proxy_auth_scheme
    if scheme:
        given, _, sent = sent.partition(" ")
        if given.lower() != scheme.lower():
            return None
    for header in provider.proxy_headers:
        if not request.headers.get(header):
            return None
    return sent.strip() or None


async def _token_request_body(request: Request, provider: Provider) -> FormData:
    """The token request's fields: a form, or a JSON object where the catalog says so."""
    content_type = request.headers.get("content-type", "")
    if provider.token_body_format == "form":  # noqa: S105 (an encoding, not a secret)
        if "application/json" in content_type:
            raise _OAuthError("invalid_request", "Send the token request as a form.")
        return await request.form()
    if "application/json" not in content_type:
        raise _OAuthError(
            "invalid_request", f"{provider.display_name} expects a JSON token request."
        )
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise _OAuthError("invalid_request", "The body must be a JSON object of strings.")
    return FormData(list(body.items()))


def _check_extra_params(form: FormData, params: Mapping[str, str], field: str) -> None:
    # The provider's own parameters (Shopify's expiring=1) must come as the catalog says.
    for name, template in params.items():
        given = _form_value(form, name)
        if given is None or ("{" not in template and given != template):
            raise _OAuthError("invalid_request", f"{name} is missing or wrong ({field}).")


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
