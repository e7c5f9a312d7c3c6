"""The calls apiauth makes to a provider: authorize URL, code exchange, refresh, who-am-I,
revoke. Request encoding (client authentication, PKCE, grant parameters) is Authlib's; what
is here is reading providers' answers, quirks included, into one `TokenSet`.

No database and no domain objects: a provider, client credentials and tokens in, values out.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import sign_jwt_bearer_assertion
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc.jwk import RSAKey

from apiauth.errors import InvalidGrant, ProviderError, TokenRejected, UrlNotAllowed
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import ParamError, Provider
from apiauth.providers.catalog import ACCESS_TOKEN, MissingValue, fill_template

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1_000_000
"""A token or who-am-I answer is a few hundred bytes; anything this large is not one."""
DEFAULT_TOTAL_SECONDS = 10.0


@dataclass(frozen=True, repr=False)
class ClientCredentials:
    client_id: str
    client_secret: str | None
    #: A GitHub App's slug (auth mode `github_app`), beside its id and private key.
    app_slug: str | None = None

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
    # `{client_id}` may stand in a value (TikTok repeats it as `client_key`).
    extra = _extra_params(provider, provider.authorize_params, {"client_id": client.client_id})
    if code_verifier is not None:
        extra["code_challenge"] = create_s256_code_challenge(code_verifier)
        extra["code_challenge_method"] = "S256"
    if provider.resource:
        extra["resource"] = provider.resource  # RFC 8707 §2.1
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
    callback: Mapping[str, str] | None = None,
) -> TokenSet:
    """The token set keeps the connection `params` in `extra`, where later calls (refresh,
    who-am-I, revoke) and the site's code find them, and the values the catalog learns from
    the token answer or from the `callback` query (QuickBooks' `realmId`)."""
    values = provider.url_values(params or {})
    body = prepare_token_request(
        "authorization_code",
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=code_verifier,
        **_resource(provider),
        **_extra_params(provider, provider.token_params, {**values, "client_id": client.client_id}),
    )
    url = _fill(provider.token_url, values)
    answer = _token_request(http, provider, client, body, "exchange the authorization code", url)
    absolute = (
        None
        if provider.refresh_token_lifetime is None
        else now + timedelta(seconds=provider.refresh_token_lifetime)
    )
    token = _token_set(provider, answer, requested_scopes, now, absolute)
    learned = _learned(provider, "callback", dict(callback or {}))
    extra = {**token.extra, **learned, **(params or {})}
    return replace(token, extra=extra) if extra != token.extra else token


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
    values = provider.url_values(token.extra)
    body = prepare_token_request(
        "refresh_token",
        refresh_token=token.refresh_token,
        **_resource(provider),
        **_extra_params(
            provider, provider.refresh_params, {**values, "client_id": client.client_id}
        ),
    )
    url = _fill(provider.refresh_url or provider.token_url, values)
    answer = _token_request(http, provider, client, body, "refresh the token", url)
    # A lifetime counted from the authorization is not extended by refreshing.
    absolute = token.refresh_expires_at if provider.refresh_token_lifetime is not None else None
    return token.refreshed_with(_token_set(provider, answer, token.granted_scopes, now, absolute))


def client_credentials_token(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    *,
    scopes: Sequence[str],
    now: datetime,
    params: Mapping[str, str] | None = None,
) -> TokenSet:
    """A token for the client itself (RFC 6749 §4.4): the client authenticates as the catalog
    says, asks for `scopes` (and the entry's `token_params`, such as Auth0's `audience`),
    and gets an access token without a refresh token. Minted again to renew it."""
    scope = provider.scope_separator.join(scopes) or None
    extra = {**provider.token_params, **_resource(provider)}
    body = prepare_token_request("client_credentials", scope=scope, **extra)
    url = _fill(provider.token_url, provider.url_values(params or {}))
    answer = _token_request(http, provider, client, body, "issue a client token", url)
    token = _token_set(provider, answer, scopes, now)
    return replace(
        token,
        refresh_token=None,
        auth_mode="oauth2_client_credentials",
        extra={**token.extra, **(params or {})},
    )


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 3600
#: A `jwt_bearer` entry's connection parameter whose value is the assertion's `sub`: the user
#: the service account acts as (Google's domain-wide delegation). Absent: no `sub` at all.
SUBJECT_PARAM = "subject"


def jwt_bearer_token(
    http: httpx.Client,
    provider: Provider,
    client: ClientCredentials,
    *,
    scopes: Sequence[str],
    now: datetime,
    params: Mapping[str, str] | None = None,
) -> TokenSet:
    """A token for a service account (RFC 7523 §2.1, Google's "OAuth 2.0 for server to server
    applications"): an assertion (iss = the account, aud = the token URL, `scope`, an hour
    at most, and `sub` = the connection's `subject` when it acts as a user by delegation)
    signed RS256 with its private key (`client.client_secret`), traded at the token URL.
    Signing is Authlib's. A renewal passes the token's `extra` as `params`, so the `sub`
    of every later token is the first one's."""
    if not client.client_secret:
        raise ProviderError(f"{provider.display_name}: the service account has no private key")
    url = _fill(provider.token_url, provider.url_values(params or {}))
    issued_at = int(now.timestamp())
    try:
        key = RSAKey.import_key(client.client_secret)
    except (ValueError, TypeError):
        raise ProviderError(
            f"{provider.display_name}: the service account's private key is not an RSA key; "
            f"upload its key file with `apiauth apps set {provider.name} --private-key-file`"
        ) from None
    assertion = sign_jwt_bearer_assertion(
        key,
        issuer=client.client_id,
        audience=url,
        subject=(params or {}).get(SUBJECT_PARAM) or None,
        issued_at=issued_at,
        expires_at=issued_at + ASSERTION_SECONDS,
        claims={"scope": provider.scope_separator.join(scopes)},
        alg="RS256",
    )
    body = prepare_token_request(JWT_BEARER_GRANT, assertion=assertion)
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    action = "issue a service account token"
    response = _send(http, provider, "POST", url, headers=headers, content=body, action=action)
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderError(
            f"{provider.display_name} could not {action} right now (HTTP {response.status_code})",
            transient=True,
            retry_after=_retry_after(response),
        )
    answer = _parse_token_answer(provider, response)
    error = answer.get("error")
    if error:
        description = _printable(str(answer.get("error_description") or ""))
        detail = f"{error}: {description}" if description else str(error)
        raise InvalidGrant(f"{provider.display_name} refused to {action}: {detail}")
    if response.status_code >= 400:
        raise ProviderError(
            f"{provider.display_name} refused to {action} (HTTP {response.status_code})"
        )
    token = _token_set(provider, answer, scopes, now)
    return replace(
        token, refresh_token=None, auth_mode="jwt_bearer", extra={**token.extra, **(params or {})}
    )


def fetch_account(
    http: httpx.Client, provider: Provider, token: TokenSet
) -> tuple[str | None, str | None]:
    """(account id, login) from the provider's who-am-I endpoint; (None, None) without one."""
    account_id, login, _body = _who_am_i(http, provider, token)
    return account_id, login


def fetch_account_and_learn(
    http: httpx.Client, provider: Provider, token: TokenSet
) -> tuple[str | None, str | None, TokenSet]:
    """After the code exchange: (account id, login) as `fetch_account` gives them, and the
    token with what the catalog learns from the who-am-I answer and from its learn URLs
    (Mailchimp's `dc`, Atlassian's `cloudId`) added to `extra`."""
    account_id, login, body = _who_am_i(http, provider, token)
    learned = _learned(provider, "userinfo", body) if body is not None else {}
    for value in provider.learn_urls():
        values = {**provider.url_values(token.extra), **learned}
        response = _send(
            http,
            provider,
            "GET",
            _fill(value.source, values),
            headers=userinfo_headers(provider, token.access_token),
            action=f"learn {value.name}",
        )
        if response.status_code != 200:
            raise ProviderError(
                f"{provider.display_name} did not say {value.name} (HTTP {response.status_code})",
                transient=response.status_code >= 500 or response.status_code == 429,
            )
        try:
            answer = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProviderError(f"{provider.display_name} sent {value.name} not as JSON") from None
        found = _learned(provider, value.source, answer)
        if value.name not in found:
            raise ProviderError(f"{provider.display_name} did not say {value.name}")
        learned |= found
    if learned:
        token = replace(token, extra={**token.extra, **learned})
    return account_id, login, token


def _who_am_i(
    http: httpx.Client, provider: Provider, token: TokenSet
) -> tuple[str | None, str | None, Mapping[str, Any] | None]:
    if not provider.userinfo_url:
        return None, None, None
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
    return (*provider.account_from_userinfo(body), body)


def verify_credential(
    http: httpx.Client,
    provider: Provider,
    token: TokenSet,
    *,
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]] = (),
) -> tuple[str | None, str | None]:
    """(account id, login) from the verification endpoint of a pasted credential (an API
    key, basic credentials), sent as the proxy sends it. A refusal (401, 403) raises
    `TokenRejected` naming the provider's answer, with the credential itself cut out."""
    assert provider.userinfo_url is not None
    url = httpx.URL(_fill(provider.userinfo_url, provider.url_values(token.extra)))
    if query:
        url = url.copy_merge_params(dict(query))
    response = _send(
        http,
        provider,
        provider.userinfo_method,
        str(url),
        headers={"Accept": "application/json", **provider.userinfo_headers, **dict(headers)},
        action="verify the credential",
    )
    if response.status_code in (401, 403):
        answer = refusal_text(response, (token.access_token, token.username or ""))
        raise TokenRejected(
            f"{provider.display_name} refused the credential (HTTP {response.status_code}"
            + (f": {answer})" if answer else ")")
        )
    if response.status_code == 429 or response.status_code >= 500:
        raise ProviderError(
            f"{provider.display_name} could not verify the credential right now "
            f"(HTTP {response.status_code})",
            transient=True,
            retry_after=_retry_after(response),
        )
    if response.status_code >= 300:
        raise ProviderError(
            f"{provider.display_name} answered HTTP {response.status_code} at its "
            "verification endpoint"
        )
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None  # verified; the answer just names no account
    return provider.account_from_userinfo(body) if isinstance(body, dict) else (None, None)


def refusal_text(response: httpx.Response, secrets: Sequence[str], limit: int = 200) -> str:
    """What a provider said when it refused a credential (its JSON error message, or the
    start of its text), printable, short, and never holding the credential (some providers
    echo part of a bad key)."""
    text = ""
    try:
        body: Any = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    for path in ("error.message", "error_description", "message", "error", "errors.0.message"):
        value: Any = body
        for part in path.split("."):
            if isinstance(value, list) and part.isdigit() and len(value) > int(part):
                value = value[int(part)]
            elif isinstance(value, dict):
                value = value.get(part)
            else:
                value = None
        if isinstance(value, str) and value:
            text = value
            break
    else:
        if isinstance(body, str):
            text = body
    for secret in (s for s in secrets if s):
        text = text.replace(secret, "***")
        for start in range(max(len(secret) - 7, 0) + 1):
            # Any eight characters of the credential in a row are cut out.
            piece = secret[start : start + 8]
            if len(piece) == 8 and piece in text:
                text = text.replace(piece, "***")
    return _printable(" ".join(text.split()), limit)


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
        method = provider.revoke_auth_method or provider.token_auth_method
        response = _client_auth_send(
            http, provider, client, url, body, "revoke the token", method=method
        )
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


def api_headers(provider: Provider, access_token: str, values: Mapping[str, str]) -> dict[str, str]:
    """The headers of a call to the provider's API (the proxy's): the token where and how
    the catalog says (`proxy_auth_header`, `proxy_auth_scheme`), then its fixed headers
    with `values` (parameters, kept and learned fields) filled in; `MissingValue` names one
    the connection lacks."""
    scheme = provider.proxy_auth_scheme
    headers = {provider.proxy_auth_header: f"{scheme} {access_token}" if scheme else access_token}
    for name, template in provider.proxy_headers.items():
        headers[name] = fill_template(template, values)
    return headers


def _extra_params(
    provider: Provider, params: Mapping[str, str], values: Mapping[str, str]
) -> dict[str, str]:
    return {name: _fill(template, values) for name, template in params.items()}


def _learned(provider: Provider, source: str, answer: Any) -> dict[str, str]:
    try:
        return provider.learned_from(source, answer)
    except ParamError as exc:
        raise ProviderError(f"{exc.param}: {exc.message}") from None


def _resource(provider: Provider) -> dict[str, str]:
    """RFC 8707 §2.2: the token and refresh requests name the resource again."""
    return {"resource": provider.resource} if provider.resource else {}


def _fill(template: str, values: Mapping[str, str]) -> str:
    try:
        return fill_template(template, values)
    except MissingValue as exc:
        raise ProviderError(
            f"cannot build {template!r}: the connection has no {exc.name}; reconnect it"
        ) from None


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
    *,
    method: str | None = None,
) -> httpx.Response:
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    chosen: Any = method or provider.token_auth_method
    if chosen == "private_key_jwt":
        # RFC 7523 §2.2: a JWT (iss = sub = client id, aud = the token URL, short exp, a
        # fresh jti) signed with the client's private key, which `client_secret` holds.
        chosen = PrivateKeyJWT(alg="RS256")
    auth = ClientAuth(client.client_id, client.client_secret, chosen)
    url, headers, body = auth.prepare("POST", url, headers, body)
    if provider.token_body_format == "json":  # noqa: S105 (an encoding, not a secret)
        # The same fields, client credentials included, as one JSON object (Notion, Atlassian).
        body = json.dumps(dict(parse_qsl(body, keep_blank_values=True)))
        headers["Content-Type"] = "application/json"
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
    except UrlNotAllowed as exc:
        # The guarded client of providers found by URL checks each call (`url_policy`).
        raise ProviderError(f"{provider.display_name}: {exc.message}") from None
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


MAX_RETRY_AFTER_SECONDS = 86400.0
MAX_EXPIRES_IN_SECONDS = 100 * 365 * 86400


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    # A day at most: a larger (or infinite) wait is no date a schedule can hold.
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else None


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
    provider: Provider,
    answer: Mapping[str, Any],
    requested: Sequence[str],
    now: datetime,
    absolute: datetime | None = None,
) -> TokenSet:
    """`absolute`: when the refresh token dies by the catalog, if the answer does not say."""
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
            seconds = float(expires_in)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds):
            raise ProviderError(
                f"{provider.display_name} sent an expires_in that is not a finite number"
            )
        # Longer than a century is never, for every purpose (and may be past what a date
        # holds); a negative one has expired already.
        if seconds <= MAX_EXPIRES_IN_SECONDS:
            expires_at = now + timedelta(seconds=int(max(seconds, 0.0)))
    scope = answer.get("scope")
    extra = {
        name: str(answer[name])
        for name in provider.keep_response_fields
        if name in answer and answer[name] is not None
    }
    extra |= _learned(provider, "token", answer)  # Wrike's API `host`
    refresh = refresh if isinstance(refresh, str) and refresh else None
    idle = provider.refresh_token_idle_lifetime
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh,
        token_type=str(answer.get("token_type") or "bearer").lower(),
        expires_at=expires_at,
        granted_scopes=provider.parse_granted_scopes(
            scope if isinstance(scope, str) else None, requested
        ),
        extra=extra,
        refresh_expires_at=_refresh_expiry(answer, refresh, now) or absolute,
        # Using the refresh token (a refresh, even one that hands back no new refresh
        # token) starts its idle life again.
        refresh_idle_expires_at=None if idle is None else now + timedelta(seconds=idle),
    )


def _refresh_expiry(
    answer: Mapping[str, Any], refresh: str | None, now: datetime
) -> datetime | None:
    """When the refresh token dies, as the provider says: `refresh_token_expires_in` (GitHub
    App user tokens, Microsoft), or the `exp` of a refresh token that is a JWT (Keycloak).
    Its signature is not checked: only the provider reads the token, and a wrong date only
    moves a warning."""
    seconds = answer.get("refresh_token_expires_in")
    if isinstance(seconds, int | float | str) and not isinstance(seconds, bool):
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if 0 < value < 100 * 365 * 86400:
            return now + timedelta(seconds=value)
    if refresh is None or refresh.count(".") != 2:
        return None
    try:
        payload = refresh.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool) and 0 < exp < 1e11:
        return datetime.fromtimestamp(exp, UTC)
    return None


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:limit]


# What the protocol modules of other modes (`apiauth.oauth.github_app`) call a provider with:
# the one guarded, size- and time-bounded way apiauth sends a request and reads its answer.
send = _send
fill_url = _fill
json_object = _json_object
retry_after = _retry_after
