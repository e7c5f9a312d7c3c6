"""Finding an OAuth server from one URL, and checking that apiauth can use it safely.

Two kinds of URL lead to an authorization server:
- an **issuer**: its metadata is at `/.well-known/oauth-authorization-server` (RFC 8414 §3.1,
  inserted between host and path for an issuer with a path) or at
  `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4, appended to the
  issuer; RFC 8414 §5 also allows the inserted form);
- a **protected resource** (an MCP server, any API that says how to get a token for it): it
  answers 401 with `WWW-Authenticate: Bearer resource_metadata="…"`, or serves
  `/.well-known/oauth-protected-resource` (RFC 9728 §3.1, §5.1); that document names the
  authorization servers, and tokens must then be asked for that resource (RFC 8707).
  The order is the MCP authorization specification's (2025-06-18, "Authorization Server
  Discovery"): the resource first, then the issuer forms, path insertion before appending.

Metadata is untrusted input: read with `untrusted_json`, every field type-checked, every
endpoint checked against the URL policy, and the server refused when apiauth could not use it
safely (issuer mismatch, no PKCE S256 unless explicitly allowed, no client authentication
method apiauth speaks, no authorization code grant).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from apiauth.errors import DiscoveryFailed
from apiauth.oauth import untrusted_json
from apiauth.url_policy import MAX_URL_LENGTH

__all__ = [
    "SUPPORTED_AUTH_METHODS",
    "Discovered",
    "ResourceMetadata",
    "ServerMetadata",
    "UrlCheck",
    "discover",
    "fetch_resource_metadata",
    "fetch_server_metadata",
    "parse_challenges",
    "same_url",
    "weakening",
]

#: Client authentication methods apiauth speaks at a token endpoint, in order of preference
#: (RFC 6749 §2.3.1 makes HTTP Basic the one every server must accept).
SUPPORTED_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

MAX_SCOPES = 500
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]{1,200}\Z")

#: Checks a URL the server will call against the URL policy; raises `UrlNotAllowed`.
UrlCheck = Callable[[str, str], None]


@dataclass(frozen=True)
class ServerMetadata:
    """An authorization server's metadata (RFC 8414 §2), as far as apiauth uses it."""

    issuer: str
    metadata_url: str
    openid: bool  # an OpenID provider (found as one, or offering the `openid` scope)
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None
    revocation_endpoint: str | None
    userinfo_endpoint: str | None
    jwks_uri: str | None
    scopes_supported: tuple[str, ...]
    grant_types_supported: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    #: RFC 9207: the authorization response carries `iss`.
    iss_parameter_supported: bool
    #: draft-ietf-oauth-client-id-metadata-document: a client id may be a metadata URL.
    client_id_metadata_document_supported: bool

    @property
    def s256(self) -> bool:
        return "S256" in self.code_challenge_methods_supported

    def usable_auth_methods(self) -> tuple[str, ...]:
        """The client authentication methods both sides speak, apiauth's preference first."""
        offered = set(self.token_endpoint_auth_methods_supported)
        return tuple(m for m in SUPPORTED_AUTH_METHODS if m in offered)

    def endpoints(self) -> dict[str, str]:
        named = {
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "registration_endpoint": self.registration_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "userinfo_endpoint": self.userinfo_endpoint,
            "jwks_uri": self.jwks_uri,
        }
        return {name: url for name, url in named.items() if url}

    def snapshot(self) -> dict[str, Any]:
        """What a later re-check compares against (`weakening`); stored with the provider."""
        return {
            "issuer": self.issuer,
            "metadata_url": self.metadata_url,
            "endpoints": self.endpoints(),
            "code_challenge_methods_supported": list(self.code_challenge_methods_supported),
            "iss_parameter_supported": self.iss_parameter_supported,
        }


@dataclass(frozen=True)
class ResourceMetadata:
    """A protected resource's metadata (RFC 9728 §2), as far as apiauth uses it."""

    resource: str
    metadata_url: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    resource_name: str | None


@dataclass(frozen=True)
class Discovered:
    """What one URL led to: the authorization server, and the resource when the URL was one.
    `challenge_scopes` are the scopes the resource's 401 asked for (RFC 6750 §3)."""

    url: str
    server: ServerMetadata
    resource: ResourceMetadata | None = None
    challenge_scopes: tuple[str, ...] = ()
    tried: tuple[str, ...] = field(default=(), compare=False)


def discover(
    http: httpx.Client, url: str, check: UrlCheck, *, allow_without_pkce: bool = False
) -> Discovered:
    """The authorization server (and resource) behind `url`; raises `DiscoveryFailed` naming
    what was tried, or `UrlNotAllowed`."""
    given = _given_url(url)
    tried: list[str] = []
    resource, challenge_scopes = _find_resource(http, given, check, tried)
    if resource is not None:
        issuer = resource.authorization_servers[0]
        server = _find_server(http, issuer, check, tried, allow_without_pkce)
        return Discovered(given, server, resource, challenge_scopes, tuple(tried))
    server = _find_server(http, given, check, tried, allow_without_pkce)
    return Discovered(given, server, None, (), tuple(tried))


def fetch_server_metadata(
    http: httpx.Client, issuer: str, check: UrlCheck, *, allow_without_pkce: bool = False
) -> ServerMetadata:
    """The metadata of a known issuer, fetched again (the re-check)."""
    return _find_server(http, issuer, check, [], allow_without_pkce)


def fetch_resource_metadata(
    http: httpx.Client, resource: str, metadata_url: str, check: UrlCheck
) -> ResourceMetadata:
    """The metadata of a known resource, fetched again from where it was found."""
    answer = untrusted_json.call(http, "GET", metadata_url, what="protected resource metadata")
    if answer.status != 200 or answer.body is None:
        raise DiscoveryFailed(
            f"{metadata_url} no longer serves protected resource metadata "
            f"(HTTP {answer.status}{_because(answer)})"
        )
    return _resource_metadata(answer.body, metadata_url, resource, check)


def weakening(old: Mapping[str, Any], new: ServerMetadata) -> list[str]:
    """How `new` metadata would make a provider less safe than its stored `snapshot`: an
    issuer changed, an endpoint moved from https to http, PKCE S256 or RFC 9207's `iss`
    dropped. Empty when the change may be followed."""
    reasons = []
    if new.issuer != old.get("issuer"):
        reasons.append(f"the issuer changed from {old.get('issuer')} to {new.issuer}")
    old_endpoints: Mapping[str, str] = old.get("endpoints") or {}
    for name, url in new.endpoints().items():
        before = old_endpoints.get(name)
        if before and urlsplit(before).scheme == "https" and urlsplit(url).scheme != "https":
            reasons.append(f"{name} moved from https to {urlsplit(url).scheme} ({url})")
    if "S256" in (old.get("code_challenge_methods_supported") or []) and not new.s256:
        reasons.append("PKCE with S256 is no longer offered")
    if old.get("iss_parameter_supported") and not new.iss_parameter_supported:
        reasons.append("the authorization response no longer carries iss (RFC 9207)")
    return reasons


def same_url(a: str, b: str) -> bool:
    """The same URL after RFC 3986 §6.2.2-6.2.3 normalisation: scheme and host case, default
    port, an empty path as `/`."""
    return _normal(a) == _normal(b)


# --- the resource ---------------------------------------------------------------------------


def _find_resource(
    http: httpx.Client, given: str, check: UrlCheck, tried: list[str]
) -> tuple[ResourceMetadata | None, tuple[str, ...]]:
    check(given, "provider URL")
    probe = untrusted_json.call(
        http,
        "GET",
        given,
        what="answer without a token",
        headers={"Accept": "application/json, text/event-stream"},
        read_body=False,
    )
    tried.append(f"{given} (HTTP {probe.status})")
    challenge_scopes: tuple[str, ...] = ()
    if probe.status == 401:
        for scheme, params in parse_challenges(probe.headers.get_list("www-authenticate")):
            if scheme.lower() != "bearer":
                continue
            challenge_scopes = _challenge_scopes(params.get("scope", ""))
            metadata_url = params.get("resource_metadata")
            if metadata_url:
                answer = untrusted_json.call(
                    http, "GET", _given_url(metadata_url), what="protected resource metadata"
                )
                tried.append(f"{metadata_url} (HTTP {answer.status})")
                if answer.status != 200 or answer.body is None:
                    raise DiscoveryFailed(
                        f"{given} names its metadata at {metadata_url}, which answered "
                        f"HTTP {answer.status}{_because(answer)}"
                    )
                # RFC 9728 §3.3: from the header, `resource` must be the URL just requested.
                return _resource_metadata(answer.body, metadata_url, given, check), (
                    challenge_scopes
                )
    for base in _resource_candidates(given):
        metadata_url = _inserted(base, "oauth-protected-resource")
        answer = untrusted_json.call(http, "GET", metadata_url, what="protected resource metadata")
        tried.append(f"{metadata_url} (HTTP {answer.status})")
        if answer.status == 200:
            body = _document(answer, "protected resource metadata")
            return _resource_metadata(body, metadata_url, base, check), challenge_scopes
    return None, ()


def _resource_candidates(given: str) -> list[str]:
    """The resource itself, then (MCP's fallback) its origin when it has a path."""
    parts = urlsplit(given)
    candidates = [urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))]
    if parts.path.strip("/"):
        candidates.append(urlunsplit((parts.scheme, parts.netloc, "", "", "")))
    return candidates


def _resource_metadata(
    body: Mapping[str, Any], metadata_url: str, expected: str, check: UrlCheck
) -> ResourceMetadata:
    fields = _Fields(body, f"the protected resource metadata at {metadata_url}")
    resource = fields.url("resource", check, required=True)
    assert resource is not None
    if not same_url(resource, expected):
        raise DiscoveryFailed(
            f"the protected resource metadata at {metadata_url} is for {resource}, not for "
            f"{expected} (RFC 9728 §3.3): it must not be used"
        )
    servers = fields.strings("authorization_servers", ())
    if not servers:
        raise DiscoveryFailed(
            f"the protected resource metadata at {metadata_url} names no authorization server"
        )
    for server in servers:
        fields.check_url_value("authorization_servers", server, check)
    bearer_methods = fields.strings("bearer_methods_supported", ("header",))
    if "header" not in bearer_methods:
        raise DiscoveryFailed(
            f"{resource} takes its token only as {', '.join(bearer_methods)}; apiauth sends it "
            "in the Authorization header"
        )
    return ResourceMetadata(
        resource=resource,
        metadata_url=metadata_url,
        authorization_servers=servers,
        scopes_supported=fields.scopes("scopes_supported"),
        resource_name=fields.text("resource_name", limit=100),
    )


def _challenge_scopes(value: str) -> tuple[str, ...]:
    return tuple(s for s in value.split() if _SCOPE_TOKEN.match(s))[:MAX_SCOPES]


# --- the authorization server ----------------------------------------------------------------


def _find_server(
    http: httpx.Client,
    issuer: str,
    check: UrlCheck,
    tried: list[str],
    allow_without_pkce: bool,
) -> ServerMetadata:
    issuer = _given_url(issuer)
    parts = urlsplit(issuer)
    if parts.query:
        raise DiscoveryFailed(f"an issuer has no query component (RFC 8414 §2): {issuer}")
    for metadata_url, openid in _server_candidates(issuer):
        check(metadata_url, "provider URL")
        answer = untrusted_json.call(
            http, "GET", metadata_url, what="authorization server metadata"
        )
        tried.append(f"{metadata_url} (HTTP {answer.status})")
        if answer.status == 200:
            return _server_metadata(
                _document(answer, "authorization server metadata"),
                metadata_url,
                issuer,
                openid,
                check,
                allow_without_pkce,
            )
    raise DiscoveryFailed(
        f"found no OAuth authorization server metadata for {issuer}; tried "
        + ", ".join(tried)
        + ". Give the server's issuer URL, or an API that answers 401 with "
        "WWW-Authenticate: Bearer resource_metadata=…"
    )


def _server_candidates(issuer: str) -> list[tuple[str, bool]]:
    """RFC 8414 §3.1 inserted form, then OpenID Connect's inserted and appended forms."""
    candidates = [
        (_inserted(issuer, "oauth-authorization-server"), False),
        (_inserted(issuer, "openid-configuration"), True),
        (issuer.rstrip("/") + "/.well-known/openid-configuration", True),
    ]
    unique: list[tuple[str, bool]] = []
    for url, openid in candidates:
        if url not in [u for u, _ in unique]:
            unique.append((url, openid))
    return unique


def _server_metadata(
    body: Mapping[str, Any],
    metadata_url: str,
    expected_issuer: str,
    openid: bool,
    check: UrlCheck,
    allow_without_pkce: bool,
) -> ServerMetadata:
    where = f"the metadata at {metadata_url}"
    fields = _Fields(body, where)
    issuer = fields.url("issuer", check, required=True)
    assert issuer is not None
    # RFC 8414 §3.3 and OpenID Connect Discovery §4.3: identical to the issuer asked for
    # (a trailing slash aside: the well-known URL is the same either way).
    if issuer.rstrip("/") != expected_issuer.rstrip("/"):
        raise DiscoveryFailed(
            f"{where} names the issuer {issuer}, not {expected_issuer}: a server may only "
            "describe itself (RFC 8414 §3.3)"
        )
    if urlsplit(issuer).query or urlsplit(issuer).fragment:
        raise DiscoveryFailed(f"{where}: the issuer has a query or fragment (RFC 8414 §2)")
    response_types = fields.strings("response_types_supported", ("code",))
    grant_types = fields.strings("grant_types_supported", ("authorization_code", "implicit"))
    if "code" not in response_types or "authorization_code" not in grant_types:
        raise DiscoveryFailed(
            f"{issuer} does not offer the authorization code grant, which apiauth uses"
        )
    pkce_methods = fields.strings("code_challenge_methods_supported", ())
    if "S256" not in pkce_methods and not allow_without_pkce:
        offered = ", ".join(pkce_methods) if pkce_methods else "no PKCE at all"
        raise DiscoveryFailed(
            f"{issuer} does not list PKCE with S256 (it offers {offered}); apiauth always "
            "uses S256 with servers found by URL. If you trust this server anyway, add it "
            "again allowing it explicitly (--allow-without-pkce, allow_without_pkce)"
        )
    auth_methods = fields.strings("token_endpoint_auth_methods_supported", ("client_secret_basic",))
    scopes = fields.scopes("scopes_supported")
    # An OpenID provider may publish its metadata at RFC 8414's URL too (RFC 8414 §5).
    openid = openid or "openid" in scopes
    metadata = ServerMetadata(
        issuer=issuer,
        metadata_url=metadata_url,
        openid=openid,
        authorization_endpoint=_required(fields.url("authorization_endpoint", check), where),
        token_endpoint=_required(fields.url("token_endpoint", check), where, "token_endpoint"),
        registration_endpoint=fields.url("registration_endpoint", check),
        revocation_endpoint=fields.url("revocation_endpoint", check),
        userinfo_endpoint=fields.url("userinfo_endpoint", check) if openid else None,
        jwks_uri=fields.url("jwks_uri", check),
        scopes_supported=scopes,
        grant_types_supported=grant_types,
        code_challenge_methods_supported=pkce_methods,
        token_endpoint_auth_methods_supported=auth_methods,
        iss_parameter_supported=fields.flag("authorization_response_iss_parameter_supported"),
        client_id_metadata_document_supported=fields.flag("client_id_metadata_document_supported"),
    )
    if not metadata.usable_auth_methods():
        raise DiscoveryFailed(
            f"{issuer} authenticates clients only by {', '.join(auth_methods)}; apiauth "
            f"speaks {', '.join(SUPPORTED_AUTH_METHODS)}"
        )
    return metadata


def _required(value: str | None, where: str, name: str = "authorization_endpoint") -> str:
    if value is None:
        raise DiscoveryFailed(f"{where} has no {name}")
    return value


# --- fields of an untrusted document ---------------------------------------------------------


class _Fields:
    """Typed reads of a metadata document; a field of the wrong type is an error naming it,
    an unknown field is ignored (RFC 8414 §3.2)."""

    def __init__(self, body: Mapping[str, Any], where: str) -> None:
        self.body = body
        self.where = where

    def fail(self, name: str, problem: str) -> DiscoveryFailed:
        return DiscoveryFailed(f"{self.where}: {name} {problem}")

    def text(self, name: str, *, limit: int = MAX_URL_LENGTH) -> str | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, "must be a non-empty string")
        if len(value) > limit:
            raise self.fail(name, f"is longer than {limit} characters")
        return untrusted_json.printable(value.strip(), limit)

    def url(self, name: str, check: UrlCheck, *, required: bool = False) -> str | None:
        value = self.text(name)
        if value is None:
            if required:
                raise self.fail(name, "is missing")
            return None
        self.check_url_value(name, value, check)
        return value

    def check_url_value(self, name: str, value: Any, check: UrlCheck) -> None:
        if not isinstance(value, str) or len(value) > MAX_URL_LENGTH:
            raise self.fail(name, "must be a URL")
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.fragment
            or "@" in parts.netloc
            or any(ch in value for ch in "{} \t\r\n")
        ):
            raise self.fail(name, f"is not an absolute http(s) URL apiauth can use: {value!r}")
        # https only (plain http only to loopback, where the policy allows it), and never to
        # an address the URL policy refuses: checked again before each call.
        check(value, name)

    def strings(self, name: str, default: Sequence[str]) -> tuple[str, ...]:
        value = self.body.get(name)
        if value is None:
            return tuple(default)
        if (
            not isinstance(value, list)
            or len(value) > MAX_SCOPES
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_URL_LENGTH for v in value)
        ):
            raise self.fail(name, "must be a list of strings")
        return tuple(dict.fromkeys(value))

    def scopes(self, name: str) -> tuple[str, ...]:
        values = self.strings(name, ())
        for value in values:
            if not _SCOPE_TOKEN.match(value):
                raise self.fail(name, f"holds {value[:40]!r}, which is not an OAuth scope")
        return values

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(name, "must be true or false")
        return value


# --- URLs --------------------------------------------------------------------------------------


def _given_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if (
        len(url) > MAX_URL_LENGTH
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise DiscoveryFailed(
            f"{untrusted_json.printable(url, 100)!r} is not an http(s) URL without user name "
            "or fragment: give the server's issuer URL or the API's URL"
        )
    return url


def _inserted(url: str, suffix: str) -> str:
    """RFC 8414 §3.1 / RFC 9728 §3.1: `/.well-known/<suffix>` between host and path, the
    path's terminating slash removed."""
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, parts.netloc, f"/.well-known/{suffix}{parts.path.rstrip('/')}", "", "")
    )


def _normal(url: str) -> tuple[str, str, int | None, str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == {"http": 80, "https": 443}.get(scheme):
        port = None
    return scheme, (parts.hostname or "").lower(), port, parts.path or "/", parts.query


def _document(answer: untrusted_json.Answer, what: str) -> Mapping[str, Any]:
    """The JSON object of a 200 answer: a document that is there but broken is an error,
    not a reason to look elsewhere."""
    if answer.body is None:
        raise DiscoveryFailed(
            f"{answer.url} answered with {what} that cannot be used: {answer.problem}"
        )
    return answer.body


def _because(answer: untrusted_json.Answer) -> str:
    detail = answer.error_detail() or answer.problem
    return f": {detail}" if detail else ""


# --- WWW-Authenticate ----------------------------------------------------------------------------

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def parse_challenges(headers: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """The challenges of `WWW-Authenticate` headers (RFC 9110 §11.6.1): each a scheme and its
    auth-params (names in lower case). A token68 credential is skipped; a header that does
    not parse yields what came before the problem. Only auth-params matter here (RFC 6750
    §3 and RFC 9728 §5.1 use no token68)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for header in headers:
        _Challenges(header, challenges).parse()
    return challenges


class _Challenges:
    def __init__(self, text: str, into: list[tuple[str, dict[str, str]]]) -> None:
        self.text = text[:8192]
        self.at = 0
        self.into = into

    def parse(self) -> None:
        params: dict[str, str] | None = None
        while True:
            self._skip(" \t,")
            token = self._token()
            if not token:
                return
            self._skip(" \t")
            if self._peek() != "=":
                params = {}  # a new challenge's scheme
                self.into.append((token, params))
                continue
            self.at += 1
            if self._peek() == "=" or params is None:
                # A token68's padding (`Basic dXNlcg==`) or garbage: nothing to keep.
                self._skip("=")
                continue
            self._skip(" \t")
            value = self._quoted() if self._peek() == '"' else self._token()
            if value is None:
                return
            params[token.lower()] = value

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _skip(self, chars: str) -> None:
        while self.at < len(self.text) and self.text[self.at] in chars:
            self.at += 1

    def _token(self) -> str:
        start = self.at
        while self.at < len(self.text) and self.text[self.at] in _TOKEN_CHARS:
            self.at += 1
        return self.text[start : self.at]

    def _quoted(self) -> str | None:
        self.at += 1
        value: list[str] = []
        while self.at < len(self.text):
            ch = self.text[self.at]
            self.at += 1
            if ch == "\\" and self.at < len(self.text):
                value.append(self.text[self.at])
                self.at += 1
            elif ch == '"':
                return "".join(value)
            else:
                value.append(ch)
        return None
