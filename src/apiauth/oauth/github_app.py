"""The calls a GitHub App makes as itself (SPEC §7, auth mode `github_app`): sign the App's
JWT, look an installation up, mint an installation access token, and revoke one.

GitHub's documents, cited in the catalog entry `github-app` as well:
- https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app
  (RS256; `iat` 60 s in the past against clock drift; `exp` at most 10 minutes ahead;
  `iss` the App's id or client id)
- https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/authenticating-as-a-github-app-installation
  (`GET /app/installations/{id}`, `POST /app/installations/{id}/access_tokens`: 201 with
  `token`, `expires_at` an hour on, `permissions`)
- https://docs.github.com/en/rest/apps/installations#revoke-an-installation-access-token
  (`DELETE /installation/token` with the token itself: 204)

No database and no domain objects, like `protocol`: a provider, the App and values in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

from apiauth.errors import InvalidGrant, ProviderError
from apiauth.oauth.protocol import (
    ClientCredentials,
    fill_url,
    json_object,
    refusal_text,
    retry_after,
    send,
)
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import Provider

__all__ = [
    "APP_JWT_LIFETIME",
    "CLOCK_DRIFT",
    "Installation",
    "app_jwt",
    "app_jwt_claims",
    "check_installation_id",
    "find_installation",
    "install_url",
    "mint_installation_token",
    "revoke_installation_token",
]

#: GitHub: "set this 60 seconds in the past" ...
CLOCK_DRIFT = timedelta(seconds=60)
#: ... and "no more than 10 minutes into the future": counted from `iat`, the JWT is good
#: for 9 minutes from now, well inside GitHub's limit even for a fast clock.
APP_JWT_LIFETIME = timedelta(minutes=10)
_MAX_INSTALLATION_ID = 10**15


@dataclass(frozen=True)
class Installation:
    """An installation of the App, as `GET /app/installations/{id}` names it."""

    id: str
    account_login: str
    account_id: str
    account_type: str  # "User" or "Organization"

    def extra(self) -> dict[str, str]:
        """What a connection's `extra` carries of it (and renewals need: the id)."""
        return {
            "installation_id": self.id,
            "account_login": self.account_login,
            "account_id": self.account_id,
            "account_type": self.account_type,
        }


def check_installation_id(value: str | None) -> str:
    """The `installation_id` of a setup-URL callback, which anyone can make up (GitHub's
    setup URL page says so): digits only before it goes into a URL; `InvalidGrant` else."""
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < _MAX_INSTALLATION_ID:
        raise InvalidGrant("GitHub sent the person back without a valid installation_id")
    return str(int(text))


def install_url(provider: Provider, client: ClientCredentials, state: str) -> str:
    """The App's install page, carrying the flow's `state` back to the setup URL."""
    if not client.app_slug:
        raise ProviderError(
            f"{provider.display_name}: the team's GitHub App has no slug; set it with "
            f"`apiauth apps set {provider.name} --app-id ID --slug SLUG --private-key-file key.pem`"
        )
    url = httpx.URL(fill_url(provider.authorization_url, {"app_slug": client.app_slug}))
    return str(url.copy_merge_params({"state": state}))


def app_jwt_claims(client: ClientCredentials, now: datetime) -> dict[str, Any]:
    issued = int((now - CLOCK_DRIFT).timestamp())
    return {
        "iat": issued,
        "exp": issued + int(APP_JWT_LIFETIME.total_seconds()),
        "iss": client.client_id,
    }


def app_jwt(provider: Provider, client: ClientCredentials, now: datetime) -> str:
    """The App's JWT, signed RS256 with its private key (`client.client_secret`)."""
    if not client.client_secret:
        raise ProviderError(_no_key(provider))
    try:
        key = RSAKey.import_key(client.client_secret)
    except (ValueError, TypeError):
        raise ProviderError(_no_key(provider)) from None
    return jwt.encode({"alg": "RS256", "typ": "JWT"}, app_jwt_claims(client, now), key)


def find_installation(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    installation_id: str,
    *,
    now: datetime,
) -> Installation:
    """The installation, if the App can see it: an id of another App's installation, or
    one made up, is a 404 there (`InvalidGrant`, nothing is stored)."""
    assert provider.userinfo_url is not None
    body = _as_the_app(
        http,
        provider,
        client,
        ("GET", provider.userinfo_url, "look up the installation", "installation"),
        installation_id,
        now,
    )
    account = body.get("account")
    if not isinstance(account, dict) or str(body.get("id")) != installation_id:
        raise ProviderError(f"{provider.display_name} named no account for the installation")
    return Installation(
        id=installation_id,
        account_login=str(account.get("login") or account.get("slug") or ""),
        account_id=str(account.get("id") or ""),
        account_type=str(account.get("type") or body.get("target_type") or ""),
    )


def mint_installation_token(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    token: TokenSet,
    *,
    now: datetime,
) -> TokenSet:
    """A new installation access token for the installation in `token.extra` (an hour;
    `expires_at` in the answer). Its permissions are the token set's granted scopes
    (`contents:read`, ...)."""
    installation_id = check_installation_id(token.extra.get("installation_id"))
    body = _as_the_app(
        http,
        provider,
        client,
        ("POST", provider.token_url, "mint an installation token", "installation token answer"),
        installation_id,
        now,
    )
    access = body.get("token")
    if not isinstance(access, str) or not access:
        raise ProviderError(f"{provider.display_name} sent an installation token answer without it")
    expires_at = _moment(provider, body.get("expires_at"))
    permissions = body.get("permissions")
    granted = (
        tuple(sorted(f"{name}:{level}" for name, level in permissions.items()))
        if isinstance(permissions, dict)
        else token.granted_scopes
    )
    return TokenSet(
        access_token=access,
        refresh_token=None,
        token_type="bearer",  # noqa: S106
        expires_at=expires_at,
        granted_scopes=granted,
        extra={**token.extra, "installation_id": installation_id},
        auth_mode="github_app",
    )


def revoke_installation_token(http: httpx.Client, provider: Provider, token: TokenSet) -> bool:
    """Revoke the installation token with itself; an expired or revoked one is a 401 there,
    which is what revoking wanted."""
    if not provider.revoke_url:
        return False
    response = send(
        http,
        provider,
        "DELETE",
        provider.revoke_url,
        headers=_app_headers(token.access_token),
        action="revoke the installation token",
    )
    if response.status_code in (204, 401):
        return True
    raise ProviderError(
        f"{provider.display_name} did not revoke the installation token "
        f"(HTTP {response.status_code})",
        transient=response.status_code >= 500 or response.status_code == 429,
    )


def _as_the_app(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    call: tuple[str, str, str, str],
    installation_id: str,
    now: datetime,
) -> Mapping[str, Any]:
    """One call of the App's own API for `installation_id`, with an App JWT: `call` is
    (method, URL template, what it does, what the answer is); the answer's JSON object."""
    method, template, action, answer = call
    url = fill_url(template, {"installation_id": installation_id})
    headers = _app_headers(app_jwt(provider, client, now))
    response = send(http, provider, method, url, headers=headers, action=action)
    _raise_for(provider, response, action, installation_id)
    return json_object(provider, response, answer)


def _app_headers(bearer: str) -> dict[str, str]:
    # https://docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api
    return {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {bearer}",
        "X-GitHub-Api-Version": "2022-11-28",
    }


def _raise_for(
    provider: Provider, response: httpx.Response, action: str, installation_id: str
) -> None:
    status = response.status_code
    if status in (200, 201):
        return
    said = refusal_text(response, ())
    detail = f" (HTTP {status}: {said})" if said else f" (HTTP {status})"
    if status == 429 or status >= 500:
        raise ProviderError(
            f"{provider.display_name} could not {action} right now{detail}",
            transient=True,
            retry_after=retry_after(response),
        )
    if status == 401:
        # The JWT: a key that is not the App's (rotated away), or the App's id wrong.
        raise ProviderError(
            f"{provider.display_name} refused the App's JWT{detail}: check the App's id and "
            f"upload its current private key (`apiauth apps set {provider.name} --app-id ID "
            "--slug SLUG --private-key-file key.pem`)"
        )
    if status in (403, 404):
        # Not an installation of this App (uninstalled, made up, another App's), or suspended.
        raise InvalidGrant(
            f"{provider.display_name}: installation {installation_id} of this App was not "
            f"found or is suspended{detail}; install the App again"
        )
    raise ProviderError(f"{provider.display_name} refused to {action}{detail}")


def _moment(provider: Provider, value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ProviderError(
            f"{provider.display_name} sent an installation token without a valid expires_at"
        ) from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _no_key(provider: Provider) -> str:
    return (
        f"{provider.display_name}: the App has no RSA private key; upload its key with "
        f"`apiauth apps set {provider.name} --app-id ID --slug SLUG --private-key-file key.pem`"
    )
