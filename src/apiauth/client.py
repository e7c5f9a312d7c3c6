"""Client library: fetch fresh provider tokens from an apiauth broker.

This is all that `pip install apiauth` needs at run time, so it imports only the standard
library and httpx -- never the server subpackages (FastAPI, SQLAlchemy, ...), which would make
a serverless function bundle heavy. A test guards that.

    secrets = get_secrets()             # APIAUTH_TOKEN, APIAUTH_URL
    if secrets.github and secrets.github.is_logged_in:
        headers = {"Authorization": f"Bearer {secrets.github.bearer_token}"}

Answers are cached in-process, per (broker URL, token), so a warm function instance does not
call the broker on every invocation. An entry lives until the earliest `expires_at` among the
returned providers minus `EXPIRY_MARGIN`, and never longer than `DEFAULT_CACHE_TTL`: the broker
refreshes tokens itself, and the cap bounds how long a disconnect or re-authorization in the
dashboard takes to reach a warm instance.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, TypeVar, cast
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

try:
    # The one place the version is read: the package's metadata, written from pyproject.toml.
    __version__ = version("apiauth")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

DEFAULT_URL = "http://127.0.0.1:8000"
"""Broker URL used when neither `url=` nor `APIAUTH_URL` is given (`apiauth serve`'s default)."""

SECRETS_PATH = "/api/v1/secrets"
FUNCTION_TOKENS_PATH = "/api/v1/function-tokens"
CONNECT_SESSIONS_PATH = "/api/v1/connect-sessions"
VISITORS_PATH = "/api/v1/visitors"
VISITOR_HEADER = "Apiauth-Visitor"
DEFAULT_FUNCTION_TOKEN_TTL = 900
"""Seconds a function token lives unless asked otherwise (the broker allows 1 to 86400)."""
DEFAULT_TIMEOUT = 10.0
"""Seconds for the whole HTTP call to the broker."""

EXPIRY_MARGIN = 60.0
"""Seconds before a provider's `expires_at` at which a cached answer is considered stale."""

DEFAULT_CACHE_TTL = 300.0
"""Seconds an answer is cached when no provider expires sooner (5 minutes)."""

MAX_CACHE_ENTRIES = 256
"""Distinct (url, token) pairs kept; the ones expiring first are dropped beyond this."""

TOKEN_PREFIXES = ("apiauth_site_", "apiauth_fn_")

_R = TypeVar("_R")


# --------------------------------------------------------------------------- errors


class ApiAuthError(Exception):
    """Base of every error raised by the apiauth client. Never contains the token."""

    def __init__(
        self, message: str, *, url: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class NotConfigured(ApiAuthError):
    """No token: `APIAUTH_TOKEN` is unset and none was passed."""


class Unauthorized(ApiAuthError):
    """The broker rejected the token (HTTP 401/403): revoked, rotated or expired."""


class BrokerUnavailable(ApiAuthError):
    """The broker could not be reached or gave an unusable answer."""


class InvalidRequest(ApiAuthError, ValueError):
    """The broker refused the values asked for (HTTP 422), e.g. a TTL out of range."""


# --------------------------------------------------------------------------- types


def _mask(token: str | None) -> str | None:
    """At most 4 leading characters, and fewer for short strings."""
    if token is None:
        return None
    return token[: min(4, len(token) // 4)] + "…"


@dataclass(frozen=True, slots=True)
class Account:
    """The provider account the token acts as."""

    id: str | None
    login: str | None


@dataclass(frozen=True, slots=True, repr=False)
class ProviderSecret:
    """One connected provider. Always truthy; check `is_logged_in` before using the token."""

    provider: str
    bearer_token: str | None
    token_type: str
    granted_scopes: tuple[str, ...]
    is_logged_in: bool
    expires_at: datetime | None
    account: Account | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: How the credential was made: "oauth2", "api_key", "basic", ... Bearer-like tokens are
    #: in `bearer_token`, an API key in `api_key`, basic credentials in `username` and
    #: `password`.
    auth_mode: str = "oauth2"
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        # Neither the token nor `extra`'s values (which may hold provider data) are shown.
        return (
            f"ProviderSecret(provider={self.provider!r}, auth_mode={self.auth_mode!r}"
            f", bearer_token={_mask(self.bearer_token)!r}, api_key={_mask(self.api_key)!r}"
            f", password={'***' if self.password else None!r}"
            f", token_type={self.token_type!r}, granted_scopes={self.granted_scopes!r}"
            f", is_logged_in={self.is_logged_in!r}, expires_at={self.expires_at!r}"
            f", account={self.account!r}, extra_keys={sorted(self.extra)!r})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class FunctionToken:
    """A short-lived token minted from a site token; put it in a build's `APIAUTH_TOKEN`."""

    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"FunctionToken(token={_mask(self.token)!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True, repr=False)
class ConnectLink:
    """A single-use link for one visitor to connect an account; hand `url` to the visitor."""

    url: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"ConnectLink(url=…, expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class VisitorDeletion:
    """What `delete_visitor` erased."""

    visitor_id: str
    deleted_connections: int
    revoked_at_provider: int


class Secrets(Mapping[str, ProviderSecret]):
    """The providers connected for a token, by name.

    `secrets.github` is the `ProviderSecret` or None when github is not connected;
    `secrets["github"]` raises KeyError instead.
    """

    __slots__ = ("_providers",)
    _providers: Mapping[str, ProviderSecret]

    def __init__(self, providers: Mapping[str, ProviderSecret] | None = None) -> None:
        object.__setattr__(self, "_providers", dict(providers or {}))

    def __getitem__(self, name: str) -> ProviderSecret:
        try:
            return self._providers[name]
        except KeyError:
            connected = ", ".join(sorted(self._providers)) or "none"
            raise KeyError(
                f"provider {name!r} is not connected for this token (connected: {connected}); "
                "connect it in the apiauth dashboard and give this site access to it"
            ) from None

    def __getattr__(self, name: str) -> ProviderSecret | None:
        # Only called for names not found normally. Private and dunder names must raise so
        # that copy, pickle and friends probing for hooks behave.
        if name.startswith("_"):
            raise AttributeError(name)
        return self._providers.get(name)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secrets is read-only")

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __reduce__(self) -> tuple[type[Secrets], tuple[dict[str, ProviderSecret]]]:
        return (Secrets, (dict(self._providers),))

    def __repr__(self) -> str:
        return f"Secrets({list(self._providers.values())!r})"


# --------------------------------------------------------------------------- parsing


class _BadAnswerError(ValueError):
    """The JSON does not have the documented shape."""


def _opt_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric account ids
    raise _BadAnswerError(f"{what} is not a string")


def _parse_expires_at(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadAnswerError(f"{what}.expires_at is not a string")
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+: accepts a trailing "Z"
    except ValueError:
        raise _BadAnswerError(f"{what}.expires_at is not an ISO-8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_provider(name: str, data: Mapping[str, Any]) -> ProviderSecret:
    what = f"provider {name!r}"
    scopes: object = data.get("granted_scopes") or ()
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
        raise _BadAnswerError(f"{what}.granted_scopes is not a list of strings")
    account_data = data.get("account")
    account = None
    if isinstance(account_data, Mapping):
        account = Account(
            id=_opt_str(account_data.get("id"), f"{what}.account.id"),
            login=_opt_str(account_data.get("login"), f"{what}.account.login"),
        )
    extra = data.get("extra")
    token = _opt_str(data.get("bearer_token"), f"{what}.bearer_token")
    api_key = _opt_str(data.get("api_key"), f"{what}.api_key")
    password = _opt_str(data.get("password"), f"{what}.password")
    return ProviderSecret(
        provider=_opt_str(data.get("provider"), f"{what}.provider") or name,
        bearer_token=token,
        token_type=_opt_str(data.get("token_type"), f"{what}.token_type") or "bearer",
        granted_scopes=tuple(cast("list[str] | tuple[str, ...]", scopes)),
        is_logged_in=bool(
            data.get("is_logged_in", token is not None or api_key is not None or password)
        ),
        expires_at=_parse_expires_at(data.get("expires_at"), what),
        account=account,
        extra=dict(extra) if isinstance(extra, Mapping) else {},
        auth_mode=_opt_str(data.get("auth_mode"), f"{what}.auth_mode") or "oauth2",
        api_key=api_key,
        username=_opt_str(data.get("username"), f"{what}.username"),
        password=password,
    )


def _parse_secrets(payload: object) -> Secrets:
    if not isinstance(payload, Mapping):
        raise _BadAnswerError("the answer is not a JSON object")
    providers: dict[str, ProviderSecret] = {}
    for name, data in payload.items():
        # Values that are not objects are reserved for future metadata: skip them.
        if isinstance(name, str) and isinstance(data, Mapping):
            providers[name] = _parse_provider(name, data)
    return Secrets(providers)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    token: str = field(repr=False)
    visitor_id: str | None = None  # a visitor's tokens instead of the site owner's

    @property
    def display_url(self) -> str:
        """The broker URL without any user:password part."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    @property
    def token_kind(self) -> str:
        for prefix in TOKEN_PREFIXES:
            if self.token.startswith(prefix):
                return f"token {prefix}…"
        return "token"

    @property
    def cache_key(self) -> tuple[str, str, str | None]:
        # Keep only a digest of the token in the long-lived cache.
        return (self.url, hashlib.sha256(self.token.encode()).hexdigest(), self.visitor_id)


def _resolve(
    event: object, token: str | None, url: str | None, visitor_id: str | None = None
) -> _Target:
    if token is None and isinstance(event, Mapping):
        event_token = event.get("apiauth_token")
        if isinstance(event_token, str) and event_token.strip():
            token = event_token
    if token is None:
        token = os.environ.get("APIAUTH_TOKEN")
    token = (token or "").strip()
    if not token:
        raise NotConfigured(
            "APIAUTH_TOKEN is not set. Set it to a site or function token "
            "(`apiauth sites enable SITE` prints one), pass token=..., "
            "or start the command with `apiauth run -- CMD`, which sets it for you."
        )
    base = (url or os.environ.get("APIAUTH_URL") or DEFAULT_URL).strip().rstrip("/")
    return _Target(url=base, token=token, visitor_id=visitor_id)


# --------------------------------------------------------------------------- cache


def _clock() -> float:
    """Wall-clock seconds; `expires_at` values are wall-clock too."""
    return time.time()


_cache: dict[tuple[str, str, str | None], tuple[float, Secrets]] = {}
_cache_lock = threading.Lock()


def _cache_get(key: tuple[str, str, str | None]) -> Secrets | None:
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            return None
        if entry[0] <= _clock():
            del _cache[key]
            return None
        return entry[1]


def _cache_put(key: tuple[str, str, str | None], secrets: Secrets) -> None:
    now = _clock()
    deadline = now + DEFAULT_CACHE_TTL
    for provider in secrets.values():
        if provider.expires_at is not None:
            deadline = min(deadline, provider.expires_at.timestamp() - EXPIRY_MARGIN)
    with _cache_lock:
        if deadline <= now:
            _cache.pop(key, None)  # a token expires within the margin: fetch again next time
            return
        _cache[key] = (deadline, secrets)
        if len(_cache) > MAX_CACHE_ENTRIES:
            for stale in sorted(_cache, key=lambda k: _cache[k][0])[: len(_cache) // 4]:
                del _cache[stale]


def clear_cache() -> None:
    """Forget every cached answer, so the next call asks the broker."""
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------- HTTP


def _headers(target: _Target) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {target.token}",
        "Accept": "application/json",
        "User-Agent": f"apiauth-python/{__version__}",
    }


def _unavailable(target: _Target, problem: str, status: int | None = None) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"apiauth broker at {target.display_url} is unavailable: {problem}. "
        "Check that APIAUTH_URL points at the broker and that `apiauth serve` is running.",
        url=target.display_url,
        status_code=status,
    )


def _transport_error(target: _Target, exc: Exception) -> BrokerUnavailable:
    if isinstance(exc, httpx.TimeoutException):
        problem = f"no answer within {DEFAULT_TIMEOUT:g} s"
    elif isinstance(exc, httpx.ConnectError):
        problem = "could not connect"
    else:
        problem = type(exc).__name__
    return _unavailable(target, problem)


def _check_status(target: _Target, response: httpx.Response, expected: int = 200) -> None:
    status = response.status_code
    if status in (401, 403):
        raise Unauthorized(
            f"apiauth broker at {target.display_url} rejected the {target.token_kind} "
            f"(HTTP {status}): it was revoked, rotated or has expired. Get a fresh one "
            "(e.g. `apiauth sites enable SITE`) and update APIAUTH_TOKEN.",
            url=target.display_url,
            status_code=status,
        )
    if 300 <= status < 400 and "location" in response.headers:
        raise _unavailable(
            target,
            f"HTTP {status} redirect to {response.headers['location']}; "
            "set APIAUTH_URL to the final address",
            status,
        )
    if status != expected:
        raise _unavailable(target, f"unexpected HTTP status {status}", status)


def _handle(target: _Target, response: httpx.Response) -> Secrets:
    _check_status(target, response)
    status = response.status_code
    try:
        return _parse_secrets(response.json())
    except _BadAnswerError as exc:
        raise _unavailable(target, f"unexpected answer ({exc})", status) from None
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError
        raise _unavailable(target, "the answer is not JSON", status) from None


def _fetch(target: _Target) -> Secrets:
    try:
        with httpx.Client(timeout=DEFAULT_TIMEOUT) as http:
            response = http.get(
                target.url + SECRETS_PATH, params=_visitor_params(target), headers=_headers(target)
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(target, exc) from exc
    return _handle(target, response)


def _visitor_params(target: _Target) -> dict[str, str]:
    return {"visitor_id": target.visitor_id} if target.visitor_id is not None else {}


async def _fetch_async(target: _Target) -> Secrets:
    try:
        async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT) as http:
            response = await http.get(
                target.url + SECRETS_PATH, params=_visitor_params(target), headers=_headers(target)
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(target, exc) from exc
    return _handle(target, response)


# --------------------------------------------------------------------------- public API


def get_secrets(
    event: object = None,
    /,
    *,
    token: str | None = None,
    url: str | None = None,
    visitor_id: str | None = None,
) -> Secrets:
    """The providers connected for the token, with fresh bearer tokens.

    The token is `token=`, else `event["apiauth_token"]` when `event` is a mapping that has it
    (parity with Netlify's `getSecrets(event)`), else `APIAUTH_TOKEN`. The broker is `url=`,
    else `APIAUTH_URL`, else `DEFAULT_URL`. Answers are cached; see the module docstring.
    With `visitor_id`, the providers that visitor of the site connected (a site token, or a
    function token bound to that visitor); a function token bound to a visitor reads that
    visitor's without it.
    """
    target = _resolve(event, token, url, visitor_id)
    cached = _cache_get(target.cache_key)
    if cached is not None:
        return cached
    secrets = _fetch(target)
    _cache_put(target.cache_key, secrets)
    return secrets


async def get_secrets_async(
    event: object = None,
    /,
    *,
    token: str | None = None,
    url: str | None = None,
    visitor_id: str | None = None,
) -> Secrets:
    """`get_secrets` for async code; shares its cache."""
    target = _resolve(event, token, url, visitor_id)
    cached = _cache_get(target.cache_key)
    if cached is not None:
        return cached
    secrets = await _fetch_async(target)
    _cache_put(target.cache_key, secrets)
    return secrets


def with_secrets(func: Callable[..., _R]) -> Callable[..., _R]:
    """Decorate a sync or async handler to receive `secrets=` (a `Secrets`) as a keyword.

    The handler's first positional argument, if any, is passed to `get_secrets` as the event.
    A caller that passes `secrets=` itself (e.g. a test) skips the fetch.
    """
    if inspect.iscoroutinefunction(func):
        async_func = cast("Callable[..., Awaitable[Any]]", func)

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if "secrets" not in kwargs:
                kwargs["secrets"] = await get_secrets_async(args[0] if args else None)
            return await async_func(*args, **kwargs)

        return cast("Callable[..., _R]", async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        if "secrets" not in kwargs:
            kwargs["secrets"] = get_secrets(args[0] if args else None)
        return func(*args, **kwargs)

    return wrapper


def _broker_message(target: _Target, response: httpx.Response) -> str:
    """The broker's own explanation of a refusal, never echoing the token."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
    if not isinstance(message, str):
        return f"HTTP {response.status_code}"
    return message.replace(target.token, "…")[:500]


def _parse_function_token(target: _Target, response: httpx.Response) -> FunctionToken:
    status = response.status_code
    if status == 403:
        raise Unauthorized(
            f"apiauth broker at {target.display_url} refused to mint a function token with the "
            f"{target.token_kind}: {_broker_message(target, response)}",
            url=target.display_url,
            status_code=status,
        )
    if status == 422:
        raise InvalidRequest(
            f"apiauth broker at {target.display_url} refused the function token request: "
            f"{_broker_message(target, response)}",
            url=target.display_url,
            status_code=status,
        )
    _check_status(target, response, expected=201)
    try:
        payload = response.json()
        if not isinstance(payload, Mapping):
            raise _BadAnswerError("the answer is not a JSON object")
        token = payload.get("token")
        expires_at = _parse_expires_at(payload.get("expires_at"), "function token")
        if not isinstance(token, str) or not token or expires_at is None:
            raise _BadAnswerError("no token or expires_at")
    except _BadAnswerError as exc:
        raise _unavailable(target, f"unexpected answer ({exc})", status) from None
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError
        raise _unavailable(target, "the answer is not JSON", status) from None
    return FunctionToken(token=token, expires_at=expires_at)


def create_function_token(
    ttl_seconds: int = DEFAULT_FUNCTION_TOKEN_TTL,
    providers: Sequence[str] | None = None,
    *,
    token: str | None = None,
    url: str | None = None,
    visitor_id: str | None = None,
) -> FunctionToken:
    """Mint a short-lived function token from a site token, for one build or function.

    The site token is `token=`, else `APIAUTH_TOKEN`; the broker `url=`, else `APIAUTH_URL`,
    else `DEFAULT_URL`. `providers` limits what the new token reads (default: everything the
    site token reads); `visitor_id` binds it to one visitor, whose connections are then all it
    reads. It stops working after `ttl_seconds`, or sooner when the site token is rotated or
    revoked.
    """
    target = _resolve(None, token, url)
    body: dict[str, Any] = {"ttl_seconds": ttl_seconds}
    if providers is not None:
        body["providers"] = [providers] if isinstance(providers, str) else list(providers)
    if visitor_id is not None:
        body["visitor_id"] = visitor_id
    try:
        with httpx.Client(timeout=DEFAULT_TIMEOUT) as http:
            response = http.post(
                target.url + FUNCTION_TOKENS_PATH, json=body, headers=_headers(target)
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(target, exc) from exc
    return _parse_function_token(target, response)


def proxy(
    provider: str,
    *,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    visitor_id: str | None = None,
) -> httpx.Client:
    """An httpx client whose requests go to `provider`'s API through the broker's proxy,
    which attaches the site's bearer token (and refreshes it on a 401):
    `apiauth.proxy("github").get("/user")`. Close it when done (or use `with`).
    With `visitor_id`, the token of that visitor's connection (`Apiauth-Visitor` header)."""
    target = _resolve(None, token, url)
    headers = _headers(target)
    if visitor_id is not None:
        headers[VISITOR_HEADER] = visitor_id
    base = f"{target.url}/api/v1/proxy/{provider}/"
    return httpx.Client(
        base_url=base,
        headers=headers,
        timeout=timeout,
        transport=_ThroughBroker(base, provider),
    )


UPSTREAM_HEADER = "Apiauth-Upstream"


class _ThroughBroker(httpx.BaseTransport):
    """The transport of `proxy()`: the client's headers carry `APIAUTH_TOKEN`, so a request
    leaves only for the broker. An absolute URL on the provider's API (a pagination `Link`,
    a `next` URL in a body) is sent as the same path through the proxy - the broker names
    that API in the `Apiauth-Upstream` header of its proxied answers - and a URL on any
    other host is refused before anything is sent."""

    def __init__(self, proxy_base: str, provider: str) -> None:
        self._proxy_base = proxy_base
        self._broker_origin = _origin(httpx.URL(proxy_base))
        self._provider = provider
        self._upstream: str | None = None
        self._http = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # (In demo mode the emulated API is on the broker's origin: mapped all the same.)
        if self._on_upstream(str(request.url)) or _origin(request.url) != self._broker_origin:
            request = self._through_proxy(request)
        response = self._http.handle_request(request)
        upstream = response.headers.get(UPSTREAM_HEADER)
        if upstream and upstream.startswith(("https://", "http://")):
            self._upstream = upstream.rstrip("/")
        return response

    def _on_upstream(self, url: str) -> bool:
        upstream = self._upstream
        return upstream is not None and (
            url == upstream or url.startswith((upstream + "/", upstream + "?"))
        )

    def _through_proxy(self, request: httpx.Request) -> httpx.Request:
        url = str(request.url)
        upstream = self._upstream
        if upstream is None or not self._on_upstream(url):
            raise InvalidRequest(
                f"apiauth.proxy({self._provider!r}) sends requests only through the broker, "
                f"with the site's token: {request.url.scheme}://{request.url.host} is not "
                f"{self._provider}'s API as the broker knows it, so nothing was sent. Pass a "
                "path such as '/user' instead of a URL.",
            )
        mapped = httpx.URL(self._proxy_base.rstrip("/") + url[len(upstream) :])
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        headers.insert(0, ("Host", mapped.netloc.decode("ascii")))
        return httpx.Request(
            request.method,
            mapped,
            headers=headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    def close(self) -> None:
        self._http.close()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _refusal(target: _Target, response: httpx.Response, what: str) -> None:
    """Typed errors for a refused management call of a site token."""
    status = response.status_code
    if status == 403:
        raise Unauthorized(
            f"apiauth broker at {target.display_url} refused to {what} with the "
            f"{target.token_kind}: {_broker_message(target, response)}",
            url=target.display_url,
            status_code=status,
        )
    if status in (404, 409, 422):
        raise InvalidRequest(
            f"apiauth broker at {target.display_url} refused to {what}: "
            f"{_broker_message(target, response)}",
            url=target.display_url,
            status_code=status,
        )


def _json_object(target: _Target, response: httpx.Response) -> Mapping[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        raise _unavailable(target, "the answer is not JSON", response.status_code) from None
    if not isinstance(payload, Mapping):
        raise _unavailable(target, "unexpected answer", response.status_code)
    return payload


def create_connect_session(
    visitor_id: str,
    providers: Sequence[str],
    return_url: str,
    *,
    scopes: Mapping[str, Sequence[str]] | None = None,
    token: str | None = None,
    url: str | None = None,
) -> ConnectLink:
    """With a site token: a single-use link (30 minutes) for one of the site's visitors to
    connect one of `providers`. The visitor comes back to `return_url` with
    `apiauth_connected=<provider>` or `apiauth_error=<message>` in its query."""
    target = _resolve(None, token, url)
    body: dict[str, Any] = {
        "visitor_id": visitor_id,
        "providers": [providers] if isinstance(providers, str) else list(providers),
        "return_url": return_url,
    }
    if scopes is not None:
        body["scopes"] = {name: list(wanted) for name, wanted in scopes.items()}
    try:
        with httpx.Client(timeout=DEFAULT_TIMEOUT) as http:
            response = http.post(
                target.url + CONNECT_SESSIONS_PATH, json=body, headers=_headers(target)
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(target, exc) from exc
    _refusal(target, response, "create a connect session")
    _check_status(target, response, expected=201)
    payload = _json_object(target, response)
    link, expires_at = payload.get("url"), payload.get("expires_at")
    try:
        expiry = _parse_expires_at(expires_at, "connect session")
    except _BadAnswerError:
        expiry = None
    if not isinstance(link, str) or expiry is None:
        raise _unavailable(target, "unexpected answer (no url or expires_at)", 201)
    return ConnectLink(url=link, expires_at=expiry)


def delete_visitor(
    visitor_id: str, *, token: str | None = None, url: str | None = None
) -> VisitorDeletion:
    """With a site token: revoke and erase every connection of one visitor (a
    data-protection request). Deleting a visitor with no connections is not an error."""
    target = _resolve(None, token, url)
    try:
        with httpx.Client(timeout=DEFAULT_TIMEOUT) as http:
            response = http.delete(
                f"{target.url}{VISITORS_PATH}/{quote(visitor_id, safe='')}",
                headers=_headers(target),
            )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _transport_error(target, exc) from exc
    _refusal(target, response, "delete a visitor")
    _check_status(target, response)
    payload = _json_object(target, response)
    deleted, revoked = payload.get("deleted_connections"), payload.get("revoked_at_provider")
    if not isinstance(deleted, int) or not isinstance(revoked, int):
        raise _unavailable(target, "unexpected answer", response.status_code)
    return VisitorDeletion(visitor_id, deleted, revoked)
