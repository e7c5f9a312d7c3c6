"""The calls apiauth makes to a provider: authorize URL, code exchange, refresh, who-am-I,
revoke. Request encoding (client authentication, PKCE, grant parameters) is Authlib's; what
is here is reading providers' answers, quirks included, into one `TokenSet`.

No database and no domain objects: a provider, client credentials and tokens in, values out.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from apiauth.errors import InvalidGrant, ProviderError, TokenRejected
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import Provider
from apiauth.providers.catalog import ACCESS_TOKEN

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1_000_000
"""A token or who-am-I answer is a few hundred bytes; anything this large is not one."""
DEFAULT_TOTAL_SECONDS = 10.0


@dataclass(frozen=True, repr=False)
class ClientCredentials:
    client_id: str
    client_secret: str | None

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=***)"


def authorization_url(
    provider: Provider,
    client: ClientCredentials,
    *,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    code_verifier: str | None,
    params: Mapping[str, str] | None = None,
) -> str:
    """`params` are the connection parameters (`Provider.check_params`) its URLs need."""
    extra: dict[str, str] = dict(provider.authorize_params)
    if code_verifier is not None:
        extra["code_challenge"] = create_s256_code_challenge(code_verifier)
        extra["code_challenge_method"] = "S256"
    scope = provider.scope_separator.join(scopes) or None
    if provider.scope_param != "scope" and scope is not None:
        # Slack's user-token flow asks for scopes in `user_scope`.
        extra[provider.scope_param] = scope
        scope = None
    url: str = prepare_grant_uri(
        _fill(provider.authorization_url, provider.url_values(params or {})),
        client.client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        **extra,
    )
    return url


def exchange_code(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str | None,
    requested_scopes: Sequence[str],
    now: datetime,
    params: Mapping[str, str] | None = None,
) -> TokenSet:
    """The token set keeps the connection `params` in `extra`, where later calls (refresh,
    who-am-I, revoke) and the site's code find them."""
    body = prepare_token_request(
        "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
    )
    url = _fill(provider.token_url, provider.url_values(params or {}))
    answer = _token_request(http, provider, client, body, "exchange the authorization code", url)
    token = _token_set(provider, answer, requested_scopes, now)
    return replace(token, extra={**token.extra, **(params or {})}) if params else token


def refresh_token_set(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    token: TokenSet,
    *,
    now: datetime,
) -> TokenSet:
    """Trade the refresh token for a new token set (merged: a missing refresh token is kept)."""
    if not token.refresh_token:
        raise ProviderError(f"{provider.display_name} gave no refresh token; reconnect it")
    body = prepare_token_request("refresh_token", refresh_token=token.refresh_token)
    url = _fill(provider.refresh_url or provider.token_url, provider.url_values(token.extra))
    answer = _token_request(http, provider, client, body, "refresh the token", url)
    return token.refreshed_with(_token_set(provider, answer, token.granted_scopes, now))


def fetch_account(
    http: httpx.Client, provider: Provider, token: TokenSet
) -> tuple[str | None, str | None]:
    """(account id, login) from the provider's who-am-I endpoint; (None, None) without one."""
    if not provider.userinfo_url:
        return None, None
    url = _fill(provider.userinfo_url, provider.url_values(token.extra))
    response = _send(
        http,
        provider,
        provider.userinfo_method,
        url,
        headers=userinfo_headers(provider, token.access_token),
        action="read the account",
    )
    if response.status_code == 401:
        raise TokenRejected(
            f"{provider.display_name} refused the token at its who-am-I endpoint (HTTP 401)"
        )
    if response.status_code == 429:
        raise ProviderError(
            f"{provider.display_name} limits calls to its who-am-I endpoint (HTTP 429)",
            transient=True,
            retry_after=_retry_after(response),
        )
    if response.status_code != 200:
        raise ProviderError(
            f"{provider.display_name} refused the new token at its who-am-I endpoint "
            f"(HTTP {response.status_code})",
            transient=response.status_code >= 500,
        )
    body = _json_object(provider, response, "who-am-I answer")
    return provider.account_from_userinfo(body)


def revoke(
    http: httpx.Client, provider: Provider, client: ClientCredentials, token: TokenSet
) -> bool:
    """Revoke at the provider where the catalog says how; False when it has no revoke URL."""
    if not provider.revoke_url:
        return False
    values = {"client_id": client.client_id, **provider.url_values(token.extra)}
    url = _fill(provider.revoke_url, values)
    if provider.revoke_style == "github":
        # https://docs.github.com/en/rest/apps/oauth-applications#delete-an-app-token
        response = _send(
            http,
            provider,
            "DELETE",
            url,
            auth=(client.client_id, client.client_secret or ""),
            json_body={"access_token": token.access_token},
            action="revoke the token",
        )
    elif provider.revoke_style == "stripe":
        # https://docs.stripe.com/connect/oauth-reference#post-deauthorize
        response = _send(
            http,
            provider,
            "POST",
            url,
            auth=(client.client_secret or "", ""),
            form={
                "client_id": client.client_id,
                "stripe_user_id": token.extra.get("stripe_user_id", ""),
            },
            action="revoke the token",
        )
    elif provider.revoke_style == "bearer":
        # The token revokes itself: Dropbox's /2/auth/token/revoke, Slack's auth.revoke.
        response = _send(
            http,
            provider,
            "POST",
            url,
            headers={"Authorization": f"Bearer {token.access_token}"},
            action="revoke the token",
        )
    else:
        body = prepare_token_request("", token=token.refresh_token or token.access_token)
        body = "&".join(part for part in body.split("&") if not part.startswith("grant_type="))
        response = _client_auth_send(http, provider, client, url, body, "revoke the token")
    if response.status_code >= 400:
        raise ProviderError(
            f"{provider.display_name} did not revoke the token (HTTP {response.status_code})",
            transient=response.status_code >= 500,
        )
    return True


def userinfo_headers(provider: Provider, access_token: str) -> dict[str, str]:
    """The who-am-I request's headers: the token as a Bearer, unless the catalog's
    `userinfo_headers` place `{access_token}` elsewhere; plus their fixed headers."""
    headers = {"Accept": "application/json"}
    extra = {k: v.replace(ACCESS_TOKEN, access_token) for k, v in provider.userinfo_headers.items()}
    if not any(ACCESS_TOKEN in v for v in provider.userinfo_headers.values()):
        headers["Authorization"] = f"Bearer {access_token}"
    return {**headers, **extra}


def _fill(template: str, values: Mapping[str, str]) -> str:
    url = template
    for key, value in values.items():
        url = url.replace("{" + key + "}", str(value).rstrip("/"))
    if "{" in url:
        raise ProviderError(f"cannot build the provider URL {template!r}: a value is missing")
    return url


def _token_request(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    body: str,
    action: str,
    url: str,
) -> Mapping[str, Any]:
    response = _client_auth_send(http, provider, client, url, body, action)
    answer = _parse_token_answer(provider, response)
    error = answer.get("error")
    if error:
        # GitHub reports errors with HTTP 200, so the body decides, not the status.
        description = _printable(str(answer.get("error_description") or ""))
        detail = f"{error}: {description}" if description else str(error)
        if error in ("invalid_grant", "bad_verification_code", "bad_refresh_token"):
            raise InvalidGrant(f"{provider.display_name} refused to {action}: {detail}")
        raise ProviderError(f"{provider.display_name} refused to {action}: {detail}")
    if response.status_code >= 400:
        raise ProviderError(
            f"{provider.display_name} refused to {action} (HTTP {response.status_code})"
        )
    return answer


def _client_auth_send(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    url: str,
    body: str,
    action: str,
) -> httpx.Response:
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    auth = ClientAuth(client.client_id, client.client_secret, provider.token_auth_method)
    url, headers, body = auth.prepare("POST", url, headers, body)
    response = _send(http, provider, "POST", url, headers=headers, content=body, action=action)
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderError(
            f"{provider.display_name} could not {action} right now (HTTP {response.status_code})",
            transient=True,
            retry_after=_retry_after(response),
        )
    return response


def _send(
    http: httpx.Client,
    provider: Provider,
    method: str,
    url: str,
    *,
    action: str,
    headers: Mapping[str, str] | None = None,
    content: str | None = None,
    form: Mapping[str, str] | None = None,
    json_body: Any = None,
    auth: tuple[str, str] | None = None,
) -> httpx.Response:
    all_headers = dict(headers or {})
    if auth is not None:
        user_pass = f"{auth[0]}:{auth[1]}".encode()
        all_headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
    # `http.build_request` without the client's cookie jar: a cookie a provider set while
    # answering for one connection is never sent with another's request. (Merging cookies and
    # URLs was also a tenth of the refresher's time per refresh.)
    merged = httpx.Headers(http.headers)
    merged.update(all_headers)
    request = httpx.Request(
        method,
        url,
        headers=merged,
        content=content,
        data=form,
        json=json_body,
        extensions={"timeout": http.timeout.as_dict()},
    )
    # httpx's timeout is per read: a provider trickling a byte a second would never hit it.
    # The whole answer must arrive within the timeout too.
    deadline = time.monotonic() + (http.timeout.read or DEFAULT_TOTAL_SECONDS)
    try:
        response = http.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the answer took too long", request=request)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ProviderError(
                        f"{provider.display_name} answered with more than "
                        f"{MAX_RESPONSE_BYTES} bytes when asked to {action}"
                    )
                chunks.append(chunk)
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        raise ProviderError(
            f"{provider.display_name} did not answer in time when asked to {action}",
            transient=True,
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(
            f"could not reach {provider.display_name} to {action}: {type(exc).__name__}",
            transient=True,
        ) from exc
    response._content = b"".join(chunks)
    return response


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _parse_token_answer(provider: Provider, response: httpx.Response) -> Mapping[str, Any]:
    content_type = response.headers.get("Content-Type", "")
    text = response.text
    if "application/x-www-form-urlencoded" in content_type or "text/plain" in content_type:
        # GitHub answers form-encoded unless asked for JSON.
        return dict(parse_qsl(text))
    return _json_object(provider, response, "token answer")


def _json_object(provider: Provider, response: httpx.Response, what: str) -> Mapping[str, Any]:
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProviderError(
            f"{provider.display_name} sent a {what} that is not JSON "
            f"(HTTP {response.status_code}, {response.headers.get('Content-Type', 'no type')})"
        ) from None
    if not isinstance(body, dict):
        raise ProviderError(f"{provider.display_name} sent a {what} that is not a JSON object")
    return body


def _token_set(
    provider: Provider, answer: Mapping[str, Any], requested: Sequence[str], now: datetime
) -> TokenSet:
    nested = answer.get(provider.token_response_path) if provider.token_response_path else None
    if isinstance(nested, Mapping) and nested.get("access_token"):
        # Slack's user token comes inside `authed_user`; its refresh answers are flat.
        answer = {**answer, **nested}
    access_token = answer.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError(f"{provider.display_name} sent a token answer without access_token")
    refresh = answer.get("refresh_token")
    expires_in = answer.get("expires_in")
    expires_at: datetime | None = None
    if expires_in not in (None, ""):
        try:
            expires_at = now + timedelta(seconds=int(float(expires_in)))
        except (TypeError, ValueError):
            raise ProviderError(
                f"{provider.display_name} sent an expires_in that is not a number"
            ) from None
    scope = answer.get("scope")
    extra = {
        name: str(answer[name])
        for name in provider.keep_response_fields
        if name in answer and answer[name] is not None
    }
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        token_type=str(answer.get("token_type") or "bearer").lower(),
        expires_at=expires_at,
        granted_scopes=provider.parse_granted_scopes(
            scope if isinstance(scope, str) else None, requested
        ),
        extra=extra,
    )


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:limit]
