"""A standards-compliant authorization server and an MCP-style protected resource, played by
the emulator so that "add a provider by URL" works offline (`serve --demo`) and in tests.

Three authorization servers ("tenants"), issuers `<emulator>/_oauth/<tenant>`:
- `mcp`: OAuth 2.0 metadata (RFC 8414) with dynamic registration (RFC 7591/7592) and Client
  ID Metadata Documents; the authorization server of the protected resource `<emulator>/_mcp`;
- `oidc`: an OpenID provider (discovery appended to the issuer, userinfo), registration only;
- `manual`: neither registration nor metadata documents (a client must be made by hand).
Each sends `iss` with its authorization responses (RFC 9207), requires PKCE S256, honours
`resource` (RFC 8707) on authorize, token and refresh requests, and rotates refresh tokens.

Metadata is served in both forms (`/.well-known/oauth-authorization-server/<path>` inserted
at the origin's root, and `<issuer>/.well-known/openid-configuration`); the root forms need
`well_known_app` mounted at the origin's `/.well-known` (`serve --demo` does). The resource
answers 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728 §5.1) and, with
a token issued for it, a small MCP-style JSON-RPC answer.

`POST <emulator>/_admin/oauth-metadata` `{"tenant", "set": {...}, "drop": [...]}` changes a
tenant's metadata (tests of re-checks); `{"tenant", "reset": true}` restores it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from apiauth.emulator.consent import REQUESTED_SCOPE_FIELD, render_consent, render_error
from apiauth.providers import Provider, parse_provider_entry

__all__ = ["TENANTS", "StandardServers", "well_known_app"]

TENANTS = ("mcp", "oidc", "manual")
RESOURCE_PATH = "/_mcp"
TOKEN_TTL_SECONDS = 3600
SUBJECT = "demo-user"
MCP_SCOPES = ("mcp:read", "mcp:write")
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
MAX_DOCUMENT_BYTES = 64_000


@dataclass
class _Client:
    client_id: str
    secret: str | None
    auth_method: str
    redirect_uris: tuple[str, ...]
    registration_token: str | None


@dataclass
class _Grant:
    tenant: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str | None
    redirect_uri: str = ""
    challenge: str | None = None


@dataclass
class _Tenant:
    name: str
    clients: dict[str, _Client] = field(default_factory=dict)
    codes: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)


class StandardServers:
    """The three tenants and the resource, behind one emulator base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.base_path = parts.path.rstrip("/")
        self.tenants = {name: _Tenant(name) for name in TENANTS}
        self.access_tokens: dict[str, tuple[_Grant, float]] = {}
        self.consent_provider: Provider = parse_provider_entry(
            "demo-oauth",
            {
                "display_name": "Demo OAuth server",
                "authorization_url": self.base_url + "/_oauth/mcp/authorize",
                "token_url": self.base_url + "/_oauth/mcp/token",
                "token_auth_method": "none",
                "scopes": [
                    {"name": "mcp:read", "description": "Use the demo MCP server's tools"},
                    {"name": "mcp:write", "description": "Change things with its tools"},
                    {"name": "openid", "description": "Sign in"},
                    {"name": "profile", "description": "Your name"},
                    {"name": "email", "description": "Your email address"},
                    {"name": "offline_access", "description": "Stay connected"},
                ],
            },
            "emulator",
        )

    @property
    def resource(self) -> str:
        return self.base_url + RESOURCE_PATH

    def issuer(self, tenant: str) -> str:
        return f"{self.base_url}/_oauth/{tenant}"

    def routes(self) -> list[Route]:
        return [
            Route("/_admin/oauth-metadata", self.admin_metadata, methods=["POST"]),
            Route("/_oauth/{tenant}/.well-known/openid-configuration", self.metadata_appended),
            Route("/_oauth/{tenant}/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/_oauth/{tenant}/token", self.token, methods=["POST"]),
            Route("/_oauth/{tenant}/register", self.register, methods=["POST"]),
            Route(
                "/_oauth/{tenant}/register/{client_id}",
                self.manage,
                methods=["GET", "PUT", "DELETE"],
            ),
            Route("/_oauth/{tenant}/userinfo", self.userinfo),
            Route("/_oauth/{tenant}/revoke", self.revoke, methods=["POST"]),
            Route(RESOURCE_PATH, self.protected_resource, methods=["GET", "POST"]),
        ]

    # --- metadata ------------------------------------------------------------------------------

    def metadata(self, tenant: str) -> dict[str, Any]:
        issuer = self.issuer(tenant)
        document: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "revocation_endpoint": issuer + "/revoke",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "authorization_response_iss_parameter_supported": True,
            "scopes_supported": [*MCP_SCOPES, "offline_access"],
        }
        if tenant in ("mcp", "oidc"):
            document["registration_endpoint"] = issuer + "/register"
        if tenant == "mcp":
            document["client_id_metadata_document_supported"] = True
        if tenant == "oidc":
            document["userinfo_endpoint"] = issuer + "/userinfo"
            document["scopes_supported"] = list(OIDC_SCOPES)
            document["subject_types_supported"] = ["public"]
            document["id_token_signing_alg_values_supported"] = ["none"]
        state = self.tenants[tenant]
        document.update(state.changes)
        for name in state.dropped:
            document.pop(name, None)
        return document

    async def metadata_appended(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if tenant != "oidc":  # OpenID Connect Discovery §4: only the OpenID provider
            return JSONResponse({"error": "not_found"}, 404)
        return JSONResponse(self.metadata(tenant))

    async def well_known(self, request: Request) -> Response:
        """`/.well-known/<kind>/<path>`: RFC 8414 §3.1 / RFC 9728 §3.1 inserted forms."""
        kind, path = request.path_params["kind"], "/" + request.path_params["path"].strip("/")
        if kind == "oauth-protected-resource" and path == self.base_path + RESOURCE_PATH:
            return JSONResponse(
                {
                    "resource": self.resource,
                    "authorization_servers": [self.issuer("mcp")],
                    "scopes_supported": list(MCP_SCOPES),
                    "bearer_methods_supported": ["header"],
                    "resource_name": "Demo MCP server",
                }
            )
        prefix = self.base_path + "/_oauth/"
        tenant = path[len(prefix) :] if path.startswith(prefix) else ""
        if kind == "oauth-authorization-server" and tenant in self.tenants:
            return JSONResponse(self.metadata(tenant))
        if kind == "openid-configuration" and tenant == "oidc":
            return JSONResponse(self.metadata(tenant))
        return JSONResponse({"error": "not_found"}, 404)

    async def admin_metadata(self, request: Request) -> Response:
        try:
            spec = json.loads(await request.body())
            tenant = self.tenants[str(spec["tenant"])]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "give a tenant: " + ", ".join(TENANTS)}, 400)
        if spec.get("reset"):
            tenant.changes.clear()
            tenant.dropped.clear()
        tenant.changes.update(spec.get("set") or {})
        tenant.dropped.update(spec.get("drop") or [])
        return JSONResponse(self.metadata(tenant.name))

    # --- clients ----------------------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None or tenant.name == "manual":
            return JSONResponse({"error": "not_found"}, 404)
        body = _json_object(await request.body())
        if body is None:
            return _oauth_error("invalid_client_metadata", "The body must be a JSON object.")
        client, problem = _client_from(body, secrets.token_urlsafe(12))
        if client is None:
            return _oauth_error(
                "invalid_redirect_uri" if "redirect" in problem else "invalid_client_metadata",
                problem,
            )
        tenant.clients[client.client_id] = client
        return JSONResponse(self._registration(tenant, client), 201)

    def _registration(self, tenant: _Tenant, client: _Client) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "client_id": client.client_id,
            "client_id_issued_at": int(time.time()),
            "client_name": "apiauth",
            "redirect_uris": list(client.redirect_uris),
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": client.auth_method,
            "registration_access_token": client.registration_token,
            "registration_client_uri": f"{self.issuer(tenant.name)}/register/{client.client_id}",
        }
        if client.secret is not None:
            answer["client_secret"] = client.secret
            answer["client_secret_expires_at"] = 0
        return answer

    async def manage(self, request: Request) -> Response:
        """RFC 7592: read, update and delete a registration with its access token."""
        tenant = self._tenant(request)
        client = tenant.clients.get(request.path_params["client_id"]) if tenant else None
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if (
            tenant is None
            or client is None
            or not secrets.compare_digest(token, client.registration_token or "-")
        ):
            # RFC 7592 §2.1: an unknown client or a wrong token is a 401 either way.
            return JSONResponse({"error": "invalid_token"}, 401)
        if request.method == "DELETE":
            del tenant.clients[client.client_id]
            return Response(status_code=204)
        if request.method == "PUT":
            body = _json_object(await request.body())
            if body is None or body.get("client_id") != client.client_id:
                return _oauth_error("invalid_client_metadata", "PUT the whole metadata.")
            updated, problem = _client_from(body, client.client_id, secret=client.secret)
            if updated is None:
                return _oauth_error("invalid_client_metadata", problem)
            updated.registration_token = client.registration_token
            tenant.clients[client.client_id] = client = updated
        return JSONResponse(self._registration(tenant, client))

    async def _client(self, tenant: _Tenant, client_id: str) -> _Client | None:
        """A registered client, or a Client ID Metadata Document fetched from `client_id`."""
        if client_id in tenant.clients:
            return tenant.clients[client_id]
        if tenant.name != "mcp" or urlsplit(client_id).scheme not in ("https", "http"):
            return None
        if urlsplit(client_id).scheme == "http" and urlsplit(client_id).hostname not in (
            "127.0.0.1",
            "localhost",
            "::1",
        ):
            return None  # the draft wants https; plain http only for a local demo
        try:
            async with httpx.AsyncClient(timeout=5, follow_redirects=False) as http:
                answer = await http.get(client_id, headers={"Accept": "application/json"})
            if answer.status_code != 200 or len(answer.content) > MAX_DOCUMENT_BYTES:
                return None
            document = answer.json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("client_id") != client_id:
            return None  # the document must name itself (the client id is its URL)
        client, _problem = _client_from(document, client_id, secret=None, public=True)
        return client

    # --- the flow ---------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return JSONResponse({"error": "not_found"}, 404)
        ticked: set[str] = set()
        if request.method == "GET":
            params = dict(request.query_params)
        else:
            form = await request.form()
            params = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            params.pop("scope", None)
            if REQUESTED_SCOPE_FIELD in params:
                params["scope"] = params.pop(REQUESTED_SCOPE_FIELD)
            ticked = {v for v in form.getlist("scope") if isinstance(v, str)}
        client = await self._client(tenant, params.get("client_id", ""))
        if client is None:
            return self._page_error("Unknown client_id: no registration, no readable document.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return self._page_error("redirect_uri is not one the client registered.")
        issuer = self.issuer(tenant.name)

        def back(**result: str | None) -> Response:
            # RFC 9207 §2: `iss` on every authorization response, errors included.
            values = {**result, "state": params.get("state"), "iss": issuer}
            query = urlencode({k: v for k, v in values.items() if v is not None})
            separator = "&" if "?" in redirect_uri else "?"
            return RedirectResponse(redirect_uri + separator + query, 302)

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return back(error="invalid_request", error_description="PKCE S256 is required.")
        resource = params.get("resource")
        if resource is not None and resource != self.resource:
            return back(error="invalid_target", error_description="Unknown resource.")
        requested = tuple(dict.fromkeys((params.get("scope") or "").split()))
        if request.method == "GET":
            html = render_consent(
                self.consent_provider,
                action=request.url.path,
                params=params,
                requested_scopes=requested,
                client_name=params.get("client_id", ""),
            )
            return HTMLResponse(html, headers={"Cache-Control": "no-store"})
        if params.get("decision") != "authorize":
            return back(error="access_denied", error_description="The user said no.")
        code = secrets.token_urlsafe(24)
        tenant.codes[code] = _Grant(
            tenant.name,
            client.client_id,
            tuple(s for s in requested if s in ticked),
            resource,
            redirect_uri,
            params["code_challenge"],
        )
        return back(code=code)

    async def token(self, request: Request) -> Response:
        tenant = self._tenant(request)
        if tenant is None:
            return JSONResponse({"error": "not_found"}, 404)
        form = {k: v for k, v in (await request.form()).multi_items() if isinstance(v, str)}
        client = await self._authenticated_client(tenant, request, form)
        if client is None:
            return _oauth_error("invalid_client", "Client authentication failed.", 401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = tenant.codes.pop(form.get("code", ""), None)
            if grant is None or grant.client_id != client.client_id:
                return _oauth_error("invalid_grant", "Unknown or used code.")
            if form.get("redirect_uri") != grant.redirect_uri:
                return _oauth_error("invalid_grant", "redirect_uri differs from the authorize one.")
            if _s256(form.get("code_verifier", "")) != grant.challenge:
                return _oauth_error("invalid_grant", "code_verifier does not match.")
        elif grant_type == "refresh_token":
            grant = tenant.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if grant is None or grant.client_id != client.client_id:
                return _oauth_error("invalid_grant", "Unknown or used refresh token.")
        else:
            return _oauth_error("unsupported_grant_type", "authorization_code or refresh_token.")
        # RFC 8707 §2.2: the token request names the resource again; a different one is refused.
        if form.get("resource") != grant.resource:
            return _oauth_error("invalid_target", "resource differs from the one authorized.")
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = (grant, time.time() + TOKEN_TTL_SECONDS)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL_SECONDS,
            "scope": " ".join(grant.scopes),
        }
        if "offline_access" in grant.scopes or tenant.name != "oidc":
            refresh = secrets.token_urlsafe(24)
            tenant.refresh_tokens[refresh] = grant
            answer["refresh_token"] = refresh
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    async def _authenticated_client(
        self, tenant: _Tenant, request: Request, form: dict[str, str]
    ) -> _Client | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            client = tenant.clients.get(client_id)
            if client is None or client.auth_method != "client_secret_basic":
                return None
            return client if secrets.compare_digest(secret, client.secret or "-") else None
        client = await self._client(tenant, form.get("client_id", ""))
        if client is None:
            return None
        if client.auth_method == "none":
            return client
        if client.auth_method == "client_secret_post":
            given = form.get("client_secret", "")
            return client if secrets.compare_digest(given, client.secret or "-") else None
        return None

    async def userinfo(self, request: Request) -> Response:
        grant = self._token_grant(request)
        if grant is None or grant.resource is not None or "openid" not in grant.scopes:
            return JSONResponse(
                {"error": "invalid_token"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
        return JSONResponse({"sub": SUBJECT, "preferred_username": SUBJECT})

    async def revoke(self, request: Request) -> Response:
        tenant = self._tenant(request)
        form = await request.form()
        token = str(form.get("token", ""))
        self.access_tokens.pop(token, None)
        if tenant is not None:
            tenant.refresh_tokens.pop(token, None)
        return Response(status_code=200)  # RFC 7009 §2.2: also for unknown tokens

    # --- the protected resource ------------------------------------------------------------------

    async def protected_resource(self, request: Request) -> Response:
        metadata_url = (
            f"{self.origin}/.well-known/oauth-protected-resource{self.base_path}{RESOURCE_PATH}"
        )
        challenge = f'Bearer resource_metadata="{metadata_url}", scope="{" ".join(MCP_SCOPES)}"'
        grant = self._token_grant(request)
        if grant is None or grant.resource != self.resource:
            return JSONResponse(
                {"error": "invalid_token"}, 401, headers={"WWW-Authenticate": challenge}
            )
        try:
            call = json.loads(await request.body() or b"{}")
        except ValueError:
            call = {}
        return JSONResponse(
            {
                "jsonrpc": "2.0",
                "id": call.get("id") if isinstance(call, dict) else None,
                "result": {
                    "tools": [{"name": "echo", "description": "Says back what it is given"}],
                    "audience": self.resource,
                    "scopes": list(grant.scopes),
                },
            }
        )

    # --- pieces ----------------------------------------------------------------------------------

    def _tenant(self, request: Request) -> _Tenant | None:
        return self.tenants.get(request.path_params.get("tenant", ""))

    def _token_grant(self, request: Request) -> _Grant | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        found = self.access_tokens.get(token)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def _page_error(self, message: str) -> Response:
        return HTMLResponse(render_error(self.consent_provider, message), 400)


def well_known_app(servers: StandardServers) -> Starlette:
    """The root `/.well-known/…` documents of the emulated servers, for mounting at the
    origin's `/.well-known` (RFC 8414 and RFC 9728 insert the path after it)."""
    return Starlette(routes=[Route("/{kind}/{path:path}", servers.well_known)])


def _client_from(
    body: dict[str, Any], client_id: str, *, secret: str | None = None, public: bool = False
) -> tuple[_Client | None, str]:
    redirect_uris = body.get("redirect_uris")
    if (
        not isinstance(redirect_uris, list)
        or not redirect_uris
        or not all(
            isinstance(u, str) and urlsplit(u).scheme in ("http", "https") for u in redirect_uris
        )
    ):
        return None, "redirect_uris must list http(s) URLs"
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in ("client_secret_basic", "client_secret_post", "none"):
        return None, f"unsupported token_endpoint_auth_method {method!r}"
    if public and method != "none":
        return None, "a metadata document's client is public"
    if method != "none" and secret is None:
        secret = secrets.token_urlsafe(24)
    return (
        _Client(
            client_id=client_id,
            secret=None if method == "none" else secret,
            auth_method=method,
            redirect_uris=tuple(redirect_uris),
            registration_token=None if public else secrets.token_urlsafe(24),
        ),
        "",
    )


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status)
