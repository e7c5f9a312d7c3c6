"""GitHub Apps in the emulator (auth mode `github_app`, SPEC §7), played as GitHub documents
them (the catalog entry `github-app` cites the pages):

- the install page `github.com/apps/{slug}/installations/new?state=…` installs the App on
  the registered account and sends the browser to the App's setup URL with
  `installation_id`, `setup_action=install` and the `state`;
- `GET api.github.com/app/installations/{id}` and `POST …/{id}/access_tokens` take the App's
  JWT: RS256 signed with the key whose public part the test registered
  (`/_admin/github-apps`), `iss` the App's id, `exp` in the future and at most 10 minutes
  on, `iat` not in the future; anything else is GitHub's 401 with a JSON `message` (in
  GitHub's wording as its answers give it; not every message is in its documentation);
- installation tokens (`ghs_…`, an hour or the emulator's token TTL, `expires_at` in the
  answer) are accepted by the emulated API and revoked by `DELETE /installation/token`.
"""

from __future__ import annotations

import itertools
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from apiauth.emulator.state import EmulatorState
from apiauth.providers import Provider

__all__ = ["GitHubApps"]

#: "The time must be no more than 10 minutes into the future" (GitHub's JWT page); a few
#: seconds of leeway for clocks, as GitHub allows clock drift.
MAX_JWT_SECONDS = 600
LEEWAY_SECONDS = 30
_DOCS = "https://docs.github.com/rest"
_ALNUM = string.ascii_letters + string.digits
#: What an emulated installation may do (`permissions` in GitHub's answers).
PERMISSIONS = {"contents": "read", "metadata": "read"}


class JwtRefused(Exception):
    """An App JWT GitHub would not accept; the message is GitHub's wording."""


@dataclass
class _App:
    provider: str
    app_id: str
    slug: str
    key: Any  # joserfc RSAKey (public)
    setup_url: str
    account: dict[str, Any]


@dataclass
class _Installation:
    id: int
    app_id: str
    account: dict[str, Any]
    suspended: bool = False


class GitHubApps:
    """Registered Apps, their installations; installation tokens live in `EmulatorState`
    (as client tokens of the App), so that the API, expiry and revocation treat them like
    every other emulated token."""

    def __init__(self, state: EmulatorState, lifetime: Callable[[Provider], int | None]) -> None:
        self._state = state
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._apps: dict[tuple[str, str], _App] = {}
        self._installations: dict[int, _Installation] = {}
        self._ids = itertools.count(40_000_001)

    def reset(self) -> None:
        with self._lock:
            self._apps.clear()
            self._installations.clear()

    def _wall(self) -> float:
        return time.time() + self._state.offset()

    # --- admin ---------------------------------------------------------------------------

    def register(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """`{"provider", "app_id", "slug", "jwk", "setup_url", "account"?: {"login",
        "type"}}`, as registering the App (and uploading its key) on GitHub does."""
        from joserfc.jwk import RSAKey

        setup_url = str(spec["setup_url"])
        if urlsplit(setup_url).scheme not in ("http", "https"):
            raise ValueError("setup_url must be an http(s) URL")
        given = spec.get("account") or {}
        login = str(given.get("login") or "octo-org")
        account = {
            "login": login,
            "id": int(given.get("id") or 9_919_000 + len(login)),
            "type": str(given.get("type") or "Organization"),
            "html_url": f"https://github.com/{login}",
        }
        app = _App(
            provider=str(spec["provider"]),
            app_id=str(spec["app_id"]),
            slug=str(spec["slug"]),
            key=RSAKey.import_key(dict(spec["jwk"])),
            setup_url=setup_url,
            account=account,
        )
        with self._lock:
            self._apps[(app.provider, app.app_id)] = app
        return {"registered": True, "app_id": app.app_id, "slug": app.slug}

    def suspend(self, installation_id: int) -> bool:
        with self._lock:
            found = self._installations.get(installation_id)
            if found is not None:
                found.suspended = True
            return found is not None

    # --- the install page ----------------------------------------------------------------

    def install(self, request: Request, provider: Provider) -> Response:
        if request.method != "GET":
            return _message("Not Found", 404)
        # .../github.com/apps/{slug}/installations/new
        parts = request.url.path.rstrip("/").split("/")
        slug = parts[-3] if len(parts) >= 3 else ""
        with self._lock:
            app = next(
                (a for a in self._apps.values() if a.provider == provider.name and a.slug == slug),
                None,
            )
            if app is None:
                return _message("Not Found", 404)
            installation = next(
                (
                    i
                    for i in self._installations.values()
                    if i.app_id == app.app_id and i.account["login"] == app.account["login"]
                ),
                None,
            )
            if installation is None:
                installation = _Installation(next(self._ids), app.app_id, dict(app.account))
                self._installations[installation.id] = installation
        self._state.count(provider.name, "authorizations")
        query = {"installation_id": str(installation.id), "setup_action": "install"}
        state = request.query_params.get("state")
        if state is not None:
            query["state"] = state
        separator = "&" if urlsplit(app.setup_url).query else "?"
        return RedirectResponse(app.setup_url + separator + urlencode(query), 302)

    # --- the App's endpoints -------------------------------------------------------------

    def installation(self, request: Request, provider: Provider, path: str) -> Response:
        if request.method != "GET":
            return _message("Not Found", 404)
        try:
            app, found = self._authorized(request, provider, path)
        except JwtRefused as exc:
            self._state.count(provider.name, "userinfo_rejected")
            return _message(str(exc), 401)
        if found is None:
            self._state.count(provider.name, "userinfo_rejected")
            return _message("Not Found", 404)
        self._state.count(provider.name, "userinfo_ok")
        return JSONResponse(
            {
                "id": found.id,
                "account": found.account,
                "app_id": int(app.app_id) if app.app_id.isdigit() else app.app_id,
                "app_slug": app.slug,
                "target_type": found.account["type"],
                "permissions": PERMISSIONS,
                "repository_selection": "all",
                "events": [],
                "suspended_at": None,
            }
        )

    def access_token(self, request: Request, provider: Provider, path: str) -> Response:
        if request.method != "POST":
            return _message("Not Found", 404)
        try:
            app, found = self._authorized(request, provider, path)
        except JwtRefused as exc:
            return _message(str(exc), 401)
        if found is None:
            return _message("Not Found", 404)
        if found.suspended:
            return _message("This installation has been suspended", 403)
        token = "ghs_" + "".join(secrets.choice(_ALNUM) for _ in range(36))
        lifetime = self._lifetime(provider) or 3600
        self._state.issue_client_token(
            provider=provider.name,
            client_id=app.app_id,
            scopes=tuple(f"{k}:{v}" for k, v in PERMISSIONS.items()),
            access_token=token,
            lifetime=lifetime,
        )
        expires = datetime.fromtimestamp(self._wall() + lifetime, UTC)
        return JSONResponse(
            {
                "token": token,
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "permissions": PERMISSIONS,
                "repository_selection": "all",
            },
            201,
        )

    def revoke(self, request: Request, provider: Provider, token: str | None) -> Response:
        # https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token
        if request.method != "DELETE":
            return _message("Not Found", 404)
        grant = self._state.grant_of(provider.name, token) if token else None
        if grant is None or not self._state.revoke_token(
            provider.name, grant.client_id, token or ""
        ):
            return _message("Bad credentials", 401)
        return Response(status_code=204)

    def _authorized(
        self, request: Request, provider: Provider, path: str
    ) -> tuple[_App, _Installation | None]:
        """The App whose JWT the request carries, and the installation of the path if it
        is that App's (None: GitHub's 404, for another App's installation too)."""
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sent.strip():
            raise JwtRefused(
                "You must authenticate with a JSON web token (JWT) to access this endpoint"
            )
        app = self._verify(provider, sent.strip())
        # app/installations/{id}[/access_tokens]
        parts = path.strip("/").split("/")
        number = parts[2] if len(parts) >= 3 else ""
        with self._lock:
            found = self._installations.get(int(number)) if number.isdigit() else None
        if found is None or found.app_id != app.app_id:
            return app, None
        return app, found

    def _verify(self, provider: Provider, token: str) -> _App:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jws import extract_compact

        try:
            unverified = json.loads(extract_compact(token.encode()).payload)
        except (JoseError, ValueError):
            raise JwtRefused("A JSON web token could not be decoded") from None
        issuer = str(unverified.get("iss") or "") if isinstance(unverified, dict) else ""
        with self._lock:
            app = self._apps.get((provider.name, issuer))
        if app is None:
            raise JwtRefused("'Issuer' claim ('iss') must be an Integer")
        try:
            claims = jwt.decode(token, app.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            raise JwtRefused("A JSON web token could not be decoded") from None
        now = self._wall()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(iat, int) or iat > now + LEEWAY_SECONDS:
            raise JwtRefused(
                "'Issued at' claim ('iat') must be an Integer representing the time that "
                "the assertion was issued"
            )
        if not isinstance(exp, int) or exp <= now:
            raise JwtRefused(
                "'Expiration time' claim ('exp') must be a numeric value representing the "
                "future time at which the assertion expires"
            )
        if exp > now + MAX_JWT_SECONDS + LEEWAY_SECONDS or exp - iat > MAX_JWT_SECONDS + 60:
            raise JwtRefused("'Expiration time' claim ('exp') is too far in the future")
        return app


def _message(message: str, status: int) -> Response:
    """GitHub's error answer: a JSON object with `message` and `documentation_url`."""
    return JSONResponse(
        {"message": message, "documentation_url": _DOCS, "status": str(status)}, status
    )
