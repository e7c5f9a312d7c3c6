"""How each emulated provider shapes its answers: token formats, response bodies, accounts.

The catalog already says *what* a provider does (client auth, lifetimes, refresh style); a
dialect holds only what it looks like on the wire, copied from the provider's documentation
so that apiauth's parsing meets the real thing. Custom providers speak `Dialect`, plain
RFC 6749 JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.responses import JSONResponse, Response

from apiauth.emulator.state import RefreshLifetime
from apiauth.providers import Provider

__all__ = ["Dialect", "Issued", "TokenContext", "dialect_for"]

_ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class TokenContext:
    """What a token answer may need beyond the tokens: who asked, and where the emulator is."""

    provider: Provider
    base_url: str
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class Issued:
    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scopes: tuple[str, ...]
    refreshed: bool


class Dialect:
    """Plain OAuth 2.0 (RFC 6749) with JSON answers: what custom providers get."""

    #: On a refresh with a reusable refresh token, send it back (Stripe) or leave it out.
    echo_reusable_refresh_token = False
    #: The grant_type assumed when a token request leaves it out (RFC 6749 requires it).
    default_grant_type: str | None = None
    #: How long access tokens live when the catalog says they do not expire because the
    #: answer has no `expires_in` (Salesforce's session timeout); None: forever.
    session_lifetime: int | None = None
    #: How long refresh tokens live; None: until revoked.
    refresh_lifetime: RefreshLifetime | None = None
    #: Live grants per client and scopes beyond which the oldest is revoked (GitHub).
    max_grants_per_scopes: int | None = None

    def new_access_token(self) -> str:
        return secrets.token_urlsafe(32)

    def new_refresh_token(self) -> str:
        return secrets.token_urlsafe(48)

    def issues_refresh_token(self, provider: Provider, scopes: tuple[str, ...]) -> bool:
        return provider.refresh_token != "none"  # noqa: S105 (a style, not a secret)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": issued.access_token, "token_type": "Bearer"}
        if issued.expires_in is not None:
            body["expires_in"] = issued.expires_in
        if issued.refresh_token is not None:
            body["refresh_token"] = issued.refresh_token
        body["scope"] = ctx.provider.granted_scope_separator.join(issued.scopes)
        for learned in ctx.provider.learn:
            if learned.source == "token" and not issued.refreshed:
                _put(body, learned.path, learned_value(learned.name))
        path = ctx.provider.token_response_path
        if path and not issued.refreshed:
            # Slack's oauth.v2.access: the user's token inside `authed_user`, next to `ok`.
            return {"ok": True, path: body, "team": {"id": "T0EMULATED", "name": "Demo"}}
        return body

    def token_answer(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Response:
        return JSONResponse(dict(body), headers={"Cache-Control": "no-store"})

    def token_error(
        self, error: str, description: str, status: int, headers: Mapping[str, str]
    ) -> Response:
        extra = {"WWW-Authenticate": 'Basic realm="emulator"'} if status == 401 else {}
        return JSONResponse(
            {"error": error, "error_description": description}, status_code=status, headers=extra
        )

    def bearer_token(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return value.strip() or None

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        name = ctx.provider.name
        body: dict[str, Any] = {
            "sub": f"{name}-demo-user",
            "preferred_username": "demo",
            "email": f"demo@{name}.example",
            "name": f"{ctx.provider.display_name} Demo User",
        }
        # Where the catalog says the id and login are (`data.id`, `resource.uri`), put them.
        if ctx.provider.account_id_field:
            _put(body, ctx.provider.account_id_field, f"{name}-demo-user")
        if ctx.provider.account_login_field:
            _put(body, ctx.provider.account_login_field, f"demo@{name}.example")
        for learned in ctx.provider.learn:
            if learned.source == "userinfo":
                _put(body, learned.path, learned_value(learned.name))
        return body

    def learn_answer(self, ctx: TokenContext, path: str, name: str) -> Any:
        """What a learn URL (Atlassian's accessible-resources) answers: the value at `path`
        (`0.id`: the first item of a list), beside a name as real answers have."""
        first, _, rest = path.partition(".")
        if first.isdigit():
            item: dict[str, Any] = {"name": f"{ctx.provider.display_name} demo"}
            _put(item, rest or "id", learned_value(name))
            return [item]
        body: dict[str, Any] = {}
        _put(body, path, learned_value(name))
        return body

    def unauthorized(self) -> Response:
        return JSONResponse(
            {"error": "invalid_token", "error_description": "The access token is not valid."},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def learned_value(name: str) -> str:
    """The emulator's value of a learned field (URL-safe, like a realm id or a data centre)."""
    return "emu-" + name.replace("_", "-")


def _put(body: dict[str, Any], path: str, value: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        child = body.get(part)
        if not isinstance(child, dict):
            child = body[part] = {}
        body = child
    body[last] = value


class GitHub(Dialect):
    # https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps:
    # the token endpoint answers form-encoded unless asked for JSON, reports errors with
    # HTTP 200, and lists scopes comma-separated. Error codes from
    # https://docs.github.com/en/apps/oauth-apps/maintaining-oauth-apps/troubleshooting-oauth-app-access-token-request-errors
    _ERRORS = {
        "invalid_client": "incorrect_client_credentials",
        "invalid_grant": "bad_verification_code",
    }
    # GitHub's documented code exchange has no grant_type parameter.
    default_grant_type = "authorization_code"
    # "There is a limit of ten tokens that are issued per user/application/scope combination
    # ... the oldest token with the same user/application/scope combination will be revoked"
    # (the page above, "Creating multiple tokens for OAuth apps").
    max_grants_per_scopes = 10

    def new_access_token(self) -> str:
        return "gho_" + _random(_ALNUM, 36)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        return {
            "access_token": issued.access_token,
            "token_type": "bearer",
            "scope": ",".join(issued.scopes),
        }

    def token_answer(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Response:
        if "application/json" in headers.get("accept", ""):
            return JSONResponse(dict(body))
        return Response(
            urlencode({k: str(v) for k, v in body.items()}),
            media_type="application/x-www-form-urlencoded",
        )

    def token_error(
        self, error: str, description: str, status: int, headers: Mapping[str, str]
    ) -> Response:
        if "redirect_uri" in description:
            error = "redirect_uri_mismatch"
        body = {
            "error": self._ERRORS.get(error, error),
            "error_description": description,
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
            "troubleshooting-oauth-app-access-token-request-errors",
        }
        return self.token_answer(body, headers)

    def bearer_token(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "token":
            return value.strip() or None
        return super().bearer_token(authorization)

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "login": "octocat",
            "id": 583231,
            "node_id": "MDQ6VXNlcjU4MzIzMQ==",
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
            "html_url": "https://github.com/octocat",
            "type": "User",
            "site_admin": False,
            "name": "The Octocat",
            "company": "@github",
            "email": None,
        }

    def unauthorized(self) -> Response:
        return JSONResponse(
            {
                "message": "Bad credentials",
                "documentation_url": "https://docs.github.com/rest",
                "status": "401",
            },
            status_code=401,
        )


class GitHubAppUser(GitHub):
    # https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens:
    # `expires_in` 28800, a `refresh_token` with `refresh_token_expires_in` 15897600 (six
    # months, each new one), and a refused refresh token is `bad_refresh_token`.
    _ERRORS = {**GitHub._ERRORS}
    refresh_lifetime = RefreshLifetime(15_897_600)

    def new_access_token(self) -> str:
        return "ghu_" + _random(_ALNUM, 36)

    def new_refresh_token(self) -> str:
        return "ghr_" + _random(_ALNUM, 76)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": issued.access_token}
        if issued.expires_in is not None:
            body["expires_in"] = issued.expires_in
        if issued.refresh_token is not None:
            body["refresh_token"] = issued.refresh_token
            body["refresh_token_expires_in"] = self.refresh_lifetime.seconds
        body |= {"scope": "", "token_type": "bearer"}
        return body

    def token_error(
        self, error: str, description: str, status: int, headers: Mapping[str, str]
    ) -> Response:
        if error == "invalid_grant" and "refresh token" in description.lower():
            error = "bad_refresh_token"
        return super().token_error(error, description, status, headers)


class Salesforce(Dialect):
    # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm
    ORG_ID = "00D5g00000EmuLaT"
    USER_ID = "0055g00000DemoUsr"
    # The org's session timeout, 2 hours by default; the answer carries no expires_in, so
    # apiauth learns of it from a 401 (the web server flow page in the catalog entry).
    session_lifetime = 7200

    def new_access_token(self) -> str:
        return f"{self.ORG_ID[:15]}!" + _random(_ALNUM + "._", 96)

    def new_refresh_token(self) -> str:
        return "5Aep861" + _random(_ALNUM + "._", 80)

    def issues_refresh_token(self, provider: Provider, scopes: tuple[str, ...]) -> bool:
        # Only with the refresh_token (alias offline_access) scope; `full` does not include it
        # (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_tokens_scopes.htm&type=5).
        return bool({"refresh_token", "offline_access"} & set(scopes))

    def _identity_url(self, ctx: TokenContext) -> str:
        return f"{ctx.base_url}/salesforce/login.salesforce.com/id/{self.ORG_ID}/{self.USER_ID}"

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        identity = self._identity_url(ctx)
        issued_at = str(int(time.time() * 1000))
        # The signature is HMAC-SHA256 of id + issued_at, keyed with the client secret.
        mac = hmac.new(ctx.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256)
        body: dict[str, Any] = {
            "access_token": issued.access_token,
            "signature": base64.b64encode(mac.digest()).decode("ascii"),
            "scope": " ".join(issued.scopes),
            "instance_url": f"{ctx.base_url}/salesforce/emulated.my.salesforce.com",
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
        if issued.refresh_token is not None:
            body["refresh_token"] = issued.refresh_token
        return body

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "sub": self._identity_url(ctx),
            "user_id": self.USER_ID,
            "organization_id": self.ORG_ID,
            "preferred_username": "demo@emulated.example",
            "nickname": "demo",
            "name": "Demo Admin",
            "email": "demo@emulated.example",
            "email_verified": True,
            "user_type": "STANDARD",
        }

    def unauthorized(self) -> Response:
        return JSONResponse(
            [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
            status_code=401,
        )


class Spotify(Dialect):
    # https://developer.spotify.com/documentation/web-api/tutorials/code-flow
    # Refresh tokens expire 6 months after the original authorization; refreshing does not
    # extend that (https://developer.spotify.com/blog/2026-06-18-refresh-token-expiration).
    refresh_lifetime = RefreshLifetime(183 * 86400, from_consent=True)

    def new_access_token(self) -> str:
        return "BQ" + _random(_ALNUM + "-_", 150)

    def new_refresh_token(self) -> str:
        return "AQ" + _random(_ALNUM + "-_", 129)

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "id": "emulated-listener",
            "display_name": "Demo Listener",
            "email": "listener@example.com",
            "country": "SE",
            "product": "premium",
            "type": "user",
            "uri": "spotify:user:emulated-listener",
            "href": "https://api.spotify.com/v1/users/emulated-listener",
        }

    def unauthorized(self) -> Response:
        return JSONResponse(
            {"error": {"status": 401, "message": "Invalid access token"}}, status_code=401
        )


class Stripe(Dialect):
    # https://docs.stripe.com/connect/oauth-reference#post-token
    ACCOUNT_ID = "acct_1EmuLat0rDemo42"
    PUBLISHABLE_KEY = "pk_test_51EmuLat0rDemo42" + "x" * 70
    echo_reusable_refresh_token = True

    def new_access_token(self) -> str:
        return "sk_test_51EmuLat0rDemo42" + _random(_ALNUM, 75)

    def new_refresh_token(self) -> str:
        return "rt_" + _random(_ALNUM, 46)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        return {
            "access_token": issued.access_token,
            "livemode": False,
            "refresh_token": issued.refresh_token,
            "token_type": "bearer",
            "stripe_publishable_key": self.PUBLISHABLE_KEY,
            "stripe_user_id": self.ACCOUNT_ID,
            "scope": " ".join(issued.scopes),
        }

    def bearer_token(self, authorization: str) -> str | None:
        # Stripe also takes the key as the Basic auth user name.
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except ValueError:
                return None
            return decoded.partition(":")[0] or None
        return super().bearer_token(authorization)

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "id": self.ACCOUNT_ID,
            "object": "account",
            "email": "merchant@example.com",
            "business_profile": {"name": "Demo Shop"},
            "country": "US",
            "default_currency": "usd",
            "charges_enabled": True,
            "type": "standard",
        }

    def unauthorized(self) -> Response:
        return JSONResponse(
            {
                "error": {
                    "message": "Invalid API Key provided.",
                    "type": "invalid_request_error",
                }
            },
            status_code=401,
        )


class Box(Dialect):
    # https://developer.box.com/reference/post-oauth2-token/: no scope in the answer,
    # `restricted_to`, and a new refresh token every time, each valid for 60 days
    # (https://developer.box.com/guides/authentication/tokens/refresh/).
    refresh_lifetime = RefreshLifetime(60 * 86400)

    def new_access_token(self) -> str:
        return _random(_ALNUM, 32)

    def new_refresh_token(self) -> str:
        return _random(_ALNUM, 64)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        return {
            "access_token": issued.access_token,
            "expires_in": issued.expires_in,
            "restricted_to": [],
            "refresh_token": issued.refresh_token,
            "token_type": "bearer",
        }

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "type": "user",
            "id": "11446498",
            "name": "Demo User",
            "login": "demo@example.com",
            "status": "active",
            "language": "en",
        }

    def unauthorized(self) -> Response:
        # Box answers 401 with an empty body and a WWW-Authenticate header.
        return Response(
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="Service", error="invalid_token"'},
        )


class Contentful(Dialect):
    # https://www.contentful.com/developers/docs/extensibility/oauth/
    def new_access_token(self) -> str:
        return secrets.token_hex(32)

    def token_body(self, issued: Issued, ctx: TokenContext) -> dict[str, Any]:
        return {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "scope": " ".join(issued.scopes),
            "created_at": int(time.time()),
        }

    def account(self, ctx: TokenContext, scopes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "sys": {"id": "4FLrUHftHW3v2BLi9fzfjU", "type": "User", "version": 1},
            "firstName": "Demo",
            "lastName": "Editor",
            "email": "editor@example.com",
            "activated": True,
            "confirmed": True,
        }

    def unauthorized(self) -> Response:
        return JSONResponse(
            {
                "sys": {"type": "Error", "id": "AccessTokenInvalid"},
                "message": "The access token you sent could not be found or is invalid.",
            },
            status_code=401,
        )


_BUILTIN: dict[str, Dialect] = {
    "github": GitHub(),
    "github-app": GitHub(),
    "github-app-user": GitHubAppUser(),
    "salesforce": Salesforce(),
    "spotify": Spotify(),
    "stripe": Stripe(),
    "box": Box(),
    "contentful": Contentful(),
}
_GENERIC = Dialect()


def dialect_for(provider: Provider) -> Dialect:
    return _BUILTIN.get(provider.name, _GENERIC) if provider.builtin else _GENERIC
