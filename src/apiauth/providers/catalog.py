"""The provider catalog: what apiauth knows about each OAuth provider, read from TOML.

The built-in providers live in `catalog.toml` next to this module; custom ones come from
`APIAUTH_PROVIDERS_FILE` in the same format and get the same validation, so a typo fails at
start with the file, the provider and the field named instead of at the first OAuth flow.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

__all__ = [
    "APP_SLUG",
    "BUILTIN_CATALOG_FILE",
    "INSTALLATION_ID",
    "KEY_MODES",
    "MACHINE_MODES",
    "AuthMode",
    "Catalog",
    "CatalogError",
    "ConnectionParam",
    "LearnedValue",
    "MissingValue",
    "ParamError",
    "ParamFormat",
    "Provider",
    "RefreshTokenStyle",
    "RevokeStyle",
    "Scope",
    "TokenAuthMethod",
    "emulated_url",
    "fill_template",
    "load_catalog",
    "parse_provider_entry",
]

TokenAuthMethod = Literal["client_secret_post", "client_secret_basic", "none", "private_key_jwt"]
RefreshTokenStyle = Literal["none", "reusable", "rotating", "may_rotate"]
RevokeStyle = Literal["rfc7009", "github", "stripe", "bearer"]
UserinfoMethod = Literal["GET", "POST"]
#: How a provider's credential is obtained (SPEC §7 "Auth modes"); `apiauth.oauth.modes`
#: has one module per mode.
AuthMode = Literal[
    "oauth2", "api_key", "basic", "oauth2_client_credentials", "jwt_bearer", "github_app"
]
#: Modes whose credential a person pastes (and apiauth verifies) instead of a consent flow.
KEY_MODES: tuple[AuthMode, ...] = ("api_key", "basic")
#: Modes that need no person's consent and no authorization URL: the client gets its tokens.
MACHINE_MODES: tuple[AuthMode, ...] = ("oauth2_client_credentials", "jwt_bearer")
TokenBodyFormat = Literal["form", "json"]
#: Where a learned value comes from besides an https URL of its own (Atlassian's
#: accessible-resources): the token answer, the who-am-I answer, or the callback's query.
LearnSource = Literal["token", "userinfo", "callback"]
#: What a connection parameter's value is: a value filled into URLs ("url_safe", the
#: default), or an email address ("email": a service account's delegated user), which may
#: not stand in any URL, header or token parameter, since `@` would read as userinfo there.
ParamFormat = Literal["url_safe", "email"]

BUILTIN_CATALOG_FILE = "catalog.toml"
BUILTIN_CATALOG_DIR = "catalog.d"

#: Placeholders a URL may hold, filled at call time: `{instance_url}` from the token response
#: (Salesforce), `{client_id}` from the OAuth app (GitHub's revoke URL).
INSTANCE_URL = "{instance_url}"
CLIENT_ID = "{client_id}"
#: A `github_app` entry's install URL holds the team's App slug, its installation endpoints
#: the installation's id (digits, checked before they are filled in): path segments only.
APP_SLUG = "{app_slug}"
INSTALLATION_ID = "{installation_id}"
_APP_PLACEHOLDERS = (APP_SLUG, INSTALLATION_ID)

#: `{access_token}` may stand in `userinfo_headers` values, for APIs that take the token in a
#: header of their own (Shopify) or under another scheme (Mailchimp's `OAuth`).
ACCESS_TOKEN = "{access_token}"  # noqa: S105 (a placeholder, not a secret)

_NAME_RE = re.compile(r"\A[a-z][a-z0-9_-]{0,62}\Z")
_PARAM_NAME_RE = re.compile(r"\A[a-z][a-z0-9_]{0,30}\Z")
# A parameter's value lands in a URL, often in its host: only RFC 3986 unreserved characters,
# so that no value can add a host, a path, a query or userinfo whatever its pattern says.
_PARAM_VALUE_RE = re.compile(r"\A[A-Za-z0-9._~-]{1,100}\Z")  # \Z, not $: "us6\n" is no value
# An address of the common shape (RFC 5321's limits: 64 before the @, 254 in all, a dotted
# domain of letter-digit-hyphen labels of up to 63), never a display name, a comment or a
# quoted local part.
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(
    rf"\A(?=.{{3,254}}\Z)[A-Za-z0-9._%+'-]{{1,64}}@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})+\Z"
)
_PARAM_SAMPLE = "param"
_PLACEHOLDER_RE = re.compile(r"\{[^{}]*\}")
# The authorize URL's own parameters; a catalog entry must not override them.
_RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    }
)
_LEARN_SOURCES: tuple[str, ...] = get_args(LearnSource)
_DEFAULT_ID_FIELDS = ("sub", "id")
_DEFAULT_LOGIN_FIELDS = ("preferred_username", "login", "email")


class CatalogError(ValueError):
    """A catalog file is unreadable or describes a provider wrongly."""


class MissingValue(ValueError):
    """A URL or header template names a value this connection does not have."""

    def __init__(self, template: str, name: str) -> None:
        super().__init__(f"no value for {{{name}}} in {template!r}")
        self.template = template
        self.name = name


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{name}` replaced by its value: the one filler for URLs and
    headers (connection parameters, kept response fields, learned values, `{instance_url}`,
    `{client_id}`, `{access_token}`). A trailing '/' of a value is dropped, so that
    `{instance_url}/services` never doubles it. Raises `MissingValue` for an unfilled name."""

    def value_of(match: re.Match[str]) -> str:
        name = match.group(0)[1:-1]
        if name not in values:
            raise MissingValue(template, name)
        return str(values[name]).rstrip("/")

    return _PLACEHOLDER_RE.sub(value_of, template)


class ParamError(ValueError):
    """A connection parameter's value is missing or does not fit its declaration."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True)
class ConnectionParam:
    """A value a connection needs besides consent, such as a Shopify shop name: declared in
    the catalog, asked for at connect time, filled into `{name}` in the provider's URLs."""

    name: str
    description: str
    pattern: str | None
    choices: tuple[str, ...]
    required: bool
    default: str | None
    format: ParamFormat = "url_safe"

    @property
    def fills_urls(self) -> bool:
        """Whether `{name}` may stand in the provider's URLs, headers and token parameters."""
        return self.format == "url_safe"

    def check(self, value: str) -> str:
        """The value, if it fits; raises `ParamError` naming this parameter otherwise."""
        value = value.strip()
        if self.format == "email":
            if not _EMAIL_RE.match(value) or ".." in value:
                raise ParamError(
                    self.name,
                    f"must be an email address such as user@example.com ({self.description})",
                )
        elif not _PARAM_VALUE_RE.match(value):
            raise ParamError(
                self.name,
                f"must be 1 to 100 letters, digits, '.', '_', '~' or '-' ({self.description})",
            )
        if set(value) <= {"."}:
            raise ParamError(self.name, "must not be only dots")
        if self.choices and value not in self.choices:
            raise ParamError(self.name, "must be one of " + ", ".join(self.choices))
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ParamError(self.name, f"{value!r} does not fit: {self.description}")
        return value


@dataclass(frozen=True)
class LearnedValue:
    """A value a connection learns after the token exchange and later URLs need (Mailchimp's
    data centre `dc`, Atlassian's `cloudId`, QuickBooks' `realmId`): kept in the token's
    `extra` under `name`, filling `{name}` in the API base URL, revoke URL and proxy headers.
    """

    name: str
    #: "token", "userinfo", "callback", or an https URL read with the new token (GET).
    source: str
    #: A dotted path in that answer (`0.id` indexes a list), or the callback's query key.
    path: str


@dataclass(frozen=True)
class Scope:
    name: str
    description: str
    default: bool


@dataclass(frozen=True)
class Provider:
    """One OAuth provider, as the catalog describes it. Plain data; no HTTP here."""

    name: str
    display_name: str
    authorization_url: str
    token_url: str
    token_auth_method: TokenAuthMethod
    pkce: bool
    scope_separator: str
    granted_scope_separator: str
    scopes: tuple[Scope, ...]
    userinfo_url: str | None
    revoke_url: str | None
    revoke_style: RevokeStyle
    keep_response_fields: tuple[str, ...]
    account_id_field: str | None
    account_login_field: str | None
    authorize_params: Mapping[str, str]
    access_token_lifetime: int | None
    refresh_token: RefreshTokenStyle
    api_base_url: str | None
    app_registration_url: str | None
    docs_url: str | None
    client_id: str | None
    client_secret: str | None = field(repr=False)
    builtin: bool
    params: tuple[ConnectionParam, ...] = ()
    scope_param: str = "scope"
    token_response_path: str | None = None
    refresh_url: str | None = None
    userinfo_method: UserinfoMethod = "GET"
    userinfo_headers: Mapping[str, str] = field(default_factory=dict)
    #: RFC 8707: the resource (an MCP server, an API) tokens are asked for; sent as
    #: `resource` on the authorize, token and refresh requests.
    resource: str | None = None
    #: The authorization server's issuer identifier (RFC 8414), for the mix-up defence of
    #: RFC 9207: an authorization response's `iss` must be this one...
    issuer: str | None = None
    #: ... and must be there at all when the server said it sends it.
    require_iss: bool = False
    #: A custom provider that `serve --demo` sends to the emulator too (built-ins always go).
    emulate: bool = False
    #: SPEC §7: how the credential is obtained. For the key modes `userinfo_url` is the
    #: verification endpoint, `app_registration_url` where the provider issues keys, and
    #: `authorization_url` / `token_url` are empty.
    auth_mode: AuthMode = "oauth2"
    #: api_key: where the proxy (and the verification) puts the key: a header, with a
    #: prefix (`Authorization: Bearer <key>`, `x-api-key: <key>`), or a query parameter.
    api_key_header: str = "Authorization"
    api_key_prefix: str = "Bearer "
    api_key_query_param: str | None = None
    #: basic: what the connect form calls the two halves (Twilio: Account SID, Auth token).
    username_label: str = "Username"
    password_label: str = "Password"  # noqa: S105 (a form label)
    #: Extra parameters of the code exchange and of refreshes (Shopify's `expiring=1`), and
    #: of a client-credentials token request (Auth0's `audience`).
    token_params: Mapping[str, str] = field(default_factory=dict)
    refresh_params: Mapping[str, str] = field(default_factory=dict)
    #: How token and refresh requests are encoded: RFC 6749's form, or a JSON object.
    token_body_format: TokenBodyFormat = "form"  # noqa: S105 (an encoding)
    learn: tuple[LearnedValue, ...] = ()
    #: How the proxy sends the token: `<proxy_auth_header>: <proxy_auth_scheme> <token>`, the
    #: scheme left out when empty (Shopify: X-Shopify-Access-Token, no scheme).
    proxy_auth_header: str = "Authorization"
    proxy_auth_scheme: str = "Bearer"
    #: Fixed headers of every proxied call (API versions); may hold placeholders.
    proxy_headers: Mapping[str, str] = field(default_factory=dict)
    #: The dashboard's grouping ("CRM", "Accounting", ...).
    category: str = "Other"
    #: The provider this entry is a variant of (`extends = "google"`), if any.
    extends: str | None = None
    #: How an RFC 7009 revocation authenticates the client, when not as the token request
    #: does (Calendly: Basic for tokens, credentials in the body to revoke).
    revoke_auth_method: TokenAuthMethod | None = None
    #: How long a refresh token lives from the authorization, not extended by refreshing
    #: (Spotify: 6 months), in seconds; None: as long as the provider says, or unknown.
    refresh_token_lifetime: int | None = None
    #: How long a refresh token lives unused (Atlassian: 90 days), in seconds: apiauth
    #: refreshes the connection before that, whether anyone reads it or not.
    refresh_token_idle_lifetime: int | None = None

    def check_params(self, given: Mapping[str, str] | None) -> dict[str, str]:
        """The connection parameters a person gave, checked against the declarations; raises
        `ParamError` for an unknown, missing or ill-formed one. Defaults are not added: they
        apply at call time (`url_values`), so a connection made without them stays as it was.
        """
        given = dict(given or {})
        declared = {p.name: p for p in self.params}
        for name in given:
            if name not in declared:
                known = ", ".join(declared) or "none"
                raise ParamError(
                    name, f"{self.display_name} takes no such parameter (known: {known})"
                )
        checked: dict[str, str] = {}
        for param in self.params:
            value = given.get(param.name)
            if value is None or not value.strip():
                if param.required:
                    raise ParamError(param.name, f"is required: {param.description}")
                continue
            checked[param.name] = param.check(value)
        return checked

    @property
    def calls_chosen_urls(self) -> bool:
        """Some URL the server calls is completed at call time from a value the provider or
        the person chose: Salesforce's `instance_url` from its token response, Shopify's
        `{shop}`. The catalog's review cannot vouch for those hosts, so such calls go
        through the URL policy like a custom provider's (`Broker.http_for`)."""
        called = (
            self.token_url,
            self.refresh_url,
            self.userinfo_url,
            self.revoke_url,
            self.api_base_url,
        )
        return any(
            placeholder not in (CLIENT_ID, *_APP_PLACEHOLDERS)
            for url in called
            if url
            for placeholder in _PLACEHOLDER_RE.findall(url)
        )

    def url_values(self, values: Mapping[str, str]) -> dict[str, str]:
        """What fills the URL placeholders: parameter defaults, overridden by `values` (a
        connection's given parameters and kept response fields)."""
        defaults = {p.name: p.default for p in self.params if p.default is not None}
        return {**defaults, **values}

    def learned_from(self, source: str, answer: Any) -> dict[str, str]:
        """The values this provider learns from `answer` (of `source`: "token", "userinfo",
        "callback" or a learn URL), each checked like a connection parameter's, since it
        lands in URLs too; raises `ParamError` for one that does not fit. Absent ones are
        left out (a refresh answer need not repeat them)."""
        found: dict[str, str] = {}
        for learned in self.learn:
            if learned.source != source:
                continue
            raw = value_at(answer, learned.path)
            if raw is None or isinstance(raw, Mapping | list) or raw == "":
                continue
            value = str(raw).lower() if isinstance(raw, bool) else str(raw)
            if not _PARAM_VALUE_RE.match(value) or set(value) <= {"."}:
                raise ParamError(
                    learned.name,
                    f"{self.display_name} sent a value that cannot go into a URL "
                    f"(from {learned.path!r})",
                )
            found[learned.name] = value
        return found

    @property
    def urls_reviewed(self) -> bool:
        """Whether every host the server calls for this provider was reviewed in the catalog:
        a built-in entry none of whose server-called URLs has a host that is wholly a value
        chosen at connect time or learned from an answer (Keycloak's `{host}`, Wrike's learned
        `{host}`). A value checked only by its shape may still name an internal address, so
        such providers' calls go through the URL policy like custom ones'."""
        if not self.builtin:
            return False
        chosen = {p.name for p in self.params if not p.choices} | {v.name for v in self.learn}
        urls = (
            self.token_url,
            self.refresh_url,
            self.userinfo_url,
            self.revoke_url,
            self.api_base_url,
            *(v.source for v in self.learn_urls()),
        )
        hosts = {urlsplit(url).netloc for url in urls if url}
        return not any("{" + name + "}" in hosts for name in chosen)

    def learn_urls(self) -> tuple[LearnedValue, ...]:
        """The learned values read from URLs of their own, in catalog order."""
        return tuple(v for v in self.learn if v.source not in _LEARN_SOURCES)

    @property
    def default_scopes(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scopes if s.default)

    def scope_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scopes)

    def parse_granted_scopes(self, raw: str | None, requested: Sequence[str]) -> tuple[str, ...]:
        """Scopes from a token response's `scope` field.

        Providers that do not echo the scope (Box) granted what was requested. GitHub uses
        commas; spaces are tolerated everywhere since some providers mix them.
        """
        if raw is None:
            return tuple(requested)
        parts = raw.replace(self.granted_scope_separator, " ").split()
        return tuple(dict.fromkeys(p for p in parts if p))

    def account_from_userinfo(self, body: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(account id, login) from a who-am-I answer, following dotted paths like `sys.id`."""
        id_fields = (self.account_id_field,) if self.account_id_field else _DEFAULT_ID_FIELDS
        login_fields = (
            (self.account_login_field,) if self.account_login_field else _DEFAULT_LOGIN_FIELDS
        )
        return _first_value(body, id_fields), _first_value(body, login_fields)


def value_at(body: Any, path: str) -> Any:
    """What a dotted path (`sys.id`, `0.id` for a list's first item) names in a JSON answer,
    or None."""
    value: Any = body
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return None
    return value


def _first_value(body: Mapping[str, Any], paths: Sequence[str]) -> str | None:
    for path in paths:
        value = value_at(body, path)
        if value is None or isinstance(value, Mapping | list):
            continue
        if isinstance(value, bool):
            return str(value).lower()
        text = str(value)
        if text:
            return text
    return None


class Catalog(Mapping[str, Provider]):
    """Providers by name: built-ins first, then custom ones, in file order."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self._providers = {p.name: p for p in providers}

    def __getitem__(self, name: str) -> Provider:
        return self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def names(self) -> list[str]:
        return list(self._providers)

    def emulated(self) -> Catalog:
        """The providers the demo emulator plays: built-ins, and custom ones that ask."""
        return Catalog([p for p in self._providers.values() if p.builtin or p.emulate])

    def __repr__(self) -> str:
        return f"Catalog({self.names()!r})"


def builtin_catalog_texts() -> list[tuple[str, str]]:
    """The built-in catalog's files as (label, text): `catalog.toml`, then every
    `catalog.d/*.toml` in name order (one file per family keeps large additions apart)."""
    package = resources.files(__package__ or "apiauth.providers")
    files = [(BUILTIN_CATALOG_FILE, package.joinpath(BUILTIN_CATALOG_FILE))]
    extra = package.joinpath(BUILTIN_CATALOG_DIR)
    if extra.is_dir():
        files += sorted(
            (
                (f"{BUILTIN_CATALOG_DIR}/{entry.name}", entry)
                for entry in extra.iterdir()
                if entry.name.endswith(".toml")
            ),
            key=lambda item: item[0],
        )
    return [(label, entry.read_text(encoding="utf-8")) for label, entry in files]


def load_catalog(providers_file: Path | None = None, *, emulator_url: str | None = None) -> Catalog:
    """The built-in catalog, plus the custom providers file, optionally pointed at an emulator.

    Raises `CatalogError` naming the file, the provider and the field for any mistake.
    """
    raw: dict[str, dict[str, Any]] = {}
    providers: list[Provider] = []
    for label, text in builtin_catalog_texts():
        for name, table in _raw_tables(text, label):
            if name in raw:
                raise CatalogError(f"{label}: provider {name!r} is defined twice")
            providers.append(_parse_table(name, table, raw, label, True))
            raw[name] = table
    if providers_file is not None:
        label = str(providers_file)
        try:
            text = Path(providers_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"{label}: cannot read the providers file: {exc.strerror}") from exc
        builtin_names = set(raw)
        for name, table in _raw_tables(text, label):
            if name in builtin_names:
                raise CatalogError(
                    f"{label}: provider {name!r}: field 'name': "
                    "is a built-in provider; choose another name"
                )
            providers.append(_parse_table(name, table, raw, label, False))
            raw[name] = table
    if emulator_url is not None:
        # SPEC §4: in demo mode custom providers are called where their URLs point, unless
        # they ask for the emulator.
        providers = [
            _emulated_provider(p, emulator_url) if p.builtin or p.emulate else p for p in providers
        ]
    return Catalog(providers)


def _parse_table(
    name: str, table: Any, earlier: Mapping[str, dict[str, Any]], label: str, builtin: bool
) -> Provider:
    """One entry, its `extends` resolved against the entries before it (built-ins first)."""
    try:
        return _parse_provider(name, _extended(table, earlier), builtin)
    except _FieldError as exc:
        raise CatalogError(
            f"{label}: provider {name!r}: field {exc.field_name!r}: {exc.message}"
        ) from None


def _extended(table: Any, earlier: Mapping[str, dict[str, Any]]) -> Any:
    """A variant's table over its parent's (`extends = "google"`): every field the variant
    gives replaces the parent's whole (scopes, params and header tables included)."""
    if not isinstance(table, dict) or "extends" not in table:
        return table
    parent_name = table["extends"]
    if not isinstance(parent_name, str) or parent_name not in earlier:
        raise _FieldError("extends", "must name a provider defined before this one")
    parent = _extended(earlier[parent_name], earlier)
    merged = {k: v for k, v in parent.items() if k not in ("extends", "emulate")}
    merged.update(table)
    return merged


def parse_provider_entry(name: str, table: Mapping[str, Any], label: str) -> Provider:
    """One custom provider from its catalog table (a team's provider added by URL is stored
    as one); raises `CatalogError` naming `label`, the provider and the field."""
    try:
        return _parse_provider(name, dict(table), False)
    except _FieldError as exc:
        raise CatalogError(
            f"{label}: provider {name!r}: field {exc.field_name!r}: {exc.message}"
        ) from None


def emulated_url(url: str, provider: str, emulator_url: str) -> str:
    """Where the emulator serves a provider URL: `<emulator>/<provider>/<host>/<path>?<query>`.

    URLs under `{instance_url}` are left alone: the emulated token response already points
    the instance at the emulator.
    """
    if url.startswith(INSTANCE_URL):
        return url
    parts = urlsplit(url)
    target = f"{emulator_url.rstrip('/')}/{provider}/{parts.netloc}{parts.path}"
    return f"{target}?{parts.query}" if parts.query else target


def _emulated_provider(provider: Provider, emulator_url: str) -> Provider:
    # Only the endpoints apiauth calls move; docs and app registration pages are for people.
    def move(url: str | None) -> str | None:
        return None if url is None else emulated_url(url, provider.name, emulator_url)

    def move_set(url: str) -> str:  # "" for a key mode's absent authorize and token URLs
        return emulated_url(url, provider.name, emulator_url) if url else url

    return replace(
        provider,
        authorization_url=move_set(provider.authorization_url),
        token_url=move_set(provider.token_url),
        userinfo_url=move(provider.userinfo_url),
        revoke_url=move(provider.revoke_url),
        api_base_url=move(provider.api_base_url),
        refresh_url=move(provider.refresh_url),
        learn=tuple(
            v if v.source in _LEARN_SOURCES else replace(v, source=str(move(v.source)))
            for v in provider.learn
        ),
    )


# --- parsing and validation -------------------------------------------------------------


class _FieldError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


def _raw_tables(text: str, label: str) -> list[tuple[str, Any]]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise CatalogError(f"{label}: invalid TOML: {exc}") from exc
    unknown = sorted(set(document) - {"providers"})
    if unknown:
        raise CatalogError(
            f"{label}: unknown top-level key {unknown[0]!r}; "
            "providers go in [providers.NAME] tables"
        )
    tables = document.get("providers", {})
    if not isinstance(tables, dict):
        raise CatalogError(f"{label}: 'providers' must be a table of [providers.NAME] tables")
    return list(tables.items())


_KEY_MODE_FIELDS = (
    "auth_mode",
    "api_key_header",
    "api_key_prefix",
    "api_key_query_param",
    "username_label",
    "password_label",
)
_FIELDS = (
    "display_name",
    "authorization_url",
    "token_url",
    "token_auth_method",
    "pkce",
    "scope_separator",
    "granted_scope_separator",
    "scopes",
    "userinfo_url",
    "revoke_url",
    "revoke_style",
    "keep_response_fields",
    "account_id_field",
    "account_login_field",
    "authorize_params",
    "access_token_lifetime",
    "refresh_token",
    "api_base_url",
    "app_registration_url",
    "docs_url",
    "client_id",
    "client_secret",
    "params",
    "scope_param",
    "token_response_path",
    "refresh_url",
    "userinfo_method",
    "userinfo_headers",
    "resource",
    "issuer",
    "require_iss",
    "emulate",
    *_KEY_MODE_FIELDS,
    "token_params",
    "refresh_params",
    "token_body_format",
    "learn",
    "proxy_auth_header",
    "proxy_auth_scheme",
    "proxy_headers",
    "category",
    "extends",
    "revoke_auth_method",
    "refresh_token_lifetime",
    "refresh_token_idle_lifetime",
)
_REQUIRED = ("display_name", "authorization_url", "token_url", "token_auth_method")
# A pasted credential is verified at the who-am-I endpoint before it is stored.
_REQUIRED_FOR_KEYS = ("display_name", "userinfo_url")
# SPEC §7: a client-credentials entry needs no authorization_url.
_REQUIRED_FOR_MACHINES = ("display_name", "token_url", "token_auth_method")
# The install page, the installation token endpoint, the installation itself (checked with
# the App's JWT) and where an installation token revokes itself.
_REQUIRED_FOR_APPS = ("display_name", "authorization_url", "token_url", "userinfo_url")


def _parse_provider(name: str, table: Any, builtin: bool) -> Provider:
    if not _NAME_RE.match(name):
        raise _FieldError(
            "name",
            "must start with a lowercase letter and hold only a-z, 0-9, '_' and '-' "
            "(at most 63 characters)",
        )
    if not isinstance(table, dict):
        raise _FieldError("name", "must be a table ([providers.NAME])")
    for key in table:
        if key not in _FIELDS:
            close = [f for f in _FIELDS if _similar(key, f)]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _FieldError(key, f"unknown field{hint}")
    auth_mode: AuthMode = _choice(table, "auth_mode", AuthMode, default="oauth2")
    keyed = auth_mode in KEY_MODES
    machine = auth_mode in MACHINE_MODES
    app = auth_mode == "github_app"
    required = (
        _REQUIRED_FOR_KEYS
        if keyed
        else _REQUIRED_FOR_MACHINES
        if machine
        else _REQUIRED_FOR_APPS
        if app
        else _REQUIRED
    )
    for key in required:
        if key not in table:
            raise _FieldError(key, "is required")

    scope_separator = _text(table, "scope_separator", default=" ")
    granted_separator = _text(table, "granted_scope_separator", default=scope_separator)
    scopes = _scopes(table.get("scopes", []), scope_separator)
    params = _params(table, _names(table, "keep_response_fields"))
    # Only URL-safe values may fill placeholders: `{subject}` (an email) anywhere is unknown.
    param_names = tuple("{" + p.name + "}" for p in params if p.fills_urls)
    app_slug = (APP_SLUG,) if app else ()
    installation = (INSTALLATION_ID,) if app else ()
    endpoint_placeholders = (INSTANCE_URL, CLIENT_ID, *param_names, *installation)
    _check_params_fill_urls(table, params)
    kept_fields = _names(table, "keep_response_fields")
    learn = _learn(table, {p.name for p in params} | set(kept_fields))
    kept = tuple("{" + f + "}" for f in kept_fields if _PARAM_NAME_RE.match(f))
    # Values known before the who-am-I call may shape its URL; all of them, later URLs.
    early = tuple("{" + v.name + "}" for v in learn if v.source in ("token", "callback"))
    learned = tuple("{" + v.name + "}" for v in learn)
    if any(v.source == "userinfo" for v in learn) and "userinfo_url" not in table:
        raise _FieldError("learn", "learns from the who-am-I answer, so needs a userinfo_url")
    for value in learn:
        if value.source not in _LEARN_SOURCES:
            _url(
                {f"learn.{value.name}.from": value.source},
                f"learn.{value.name}.from",
                INSTANCE_URL,
                *param_names,
                *kept,
                *early,
            )

    return Provider(
        name=name,
        display_name=_text(table, "display_name"),
        authorization_url=""
        if (keyed or machine) and "authorization_url" not in table
        else _url(table, "authorization_url", *param_names, *app_slug),
        token_url=""
        if keyed and "token_url" not in table
        else _url(table, "token_url", *param_names, *installation),
        token_auth_method=_choice(
            table, "token_auth_method", TokenAuthMethod, default="none" if keyed or app else None
        ),
        pkce=_bool(table, "pkce", default=False),
        scope_separator=scope_separator,
        granted_scope_separator=granted_separator,
        scopes=scopes,
        userinfo_url=_optional_url(table, "userinfo_url", *endpoint_placeholders, *kept, *early),
        revoke_url=_optional_url(table, "revoke_url", *endpoint_placeholders, *kept, *learned),
        revoke_style=_choice(table, "revoke_style", RevokeStyle, default="rfc7009"),
        keep_response_fields=_names(table, "keep_response_fields"),
        account_id_field=_optional_text(table, "account_id_field"),
        account_login_field=_optional_text(table, "account_login_field"),
        authorize_params=_authorize_params(table),
        access_token_lifetime=_lifetime(table, "access_token_lifetime", "no expiry"),
        refresh_token=_choice(
            table, "refresh_token", RefreshTokenStyle, default="none" if keyed else "reusable"
        ),
        api_base_url=_optional_url(
            table, "api_base_url", INSTANCE_URL, *param_names, *kept, *learned
        ),
        app_registration_url=_optional_url(table, "app_registration_url"),
        docs_url=_optional_url(table, "docs_url"),
        client_id=_optional_text(table, "client_id"),
        client_secret=_optional_text(table, "client_secret"),
        builtin=builtin,
        params=params,
        scope_param=_scope_param(table),
        token_response_path=_optional_text(table, "token_response_path"),
        refresh_url=_optional_url(table, "refresh_url", *param_names),
        userinfo_method=_choice(table, "userinfo_method", UserinfoMethod, default="GET"),
        userinfo_headers=_userinfo_headers(table),
        resource=_optional_url(table, "resource"),
        issuer=_optional_url(table, "issuer"),
        require_iss=_bool(table, "require_iss", default=False),
        emulate=_bool(table, "emulate", default=False),
        **_key_mode_fields(table, auth_mode),
        token_params=_string_table(table, "token_params", (CLIENT_ID, *param_names)),
        refresh_params=_string_table(table, "refresh_params", (CLIENT_ID, *param_names)),
        token_body_format=_choice(table, "token_body_format", TokenBodyFormat, default="form"),
        learn=learn,
        proxy_auth_header=_header_name(table, "proxy_auth_header"),
        proxy_auth_scheme=_proxy_auth_scheme(table),
        proxy_headers=_proxy_headers(table, (*param_names, *kept, *learned)),
        category=_text(table, "category", default="Other"),
        extends=_optional_text(table, "extends"),
        revoke_auth_method=(
            _choice(table, "revoke_auth_method", TokenAuthMethod)
            if "revoke_auth_method" in table
            else None
        ),
        refresh_token_lifetime=_lifetime(table, "refresh_token_lifetime", "no known limit"),
        refresh_token_idle_lifetime=_lifetime(
            table, "refresh_token_idle_lifetime", "no known limit"
        ),
    )


def _key_mode_fields(table: dict[str, Any], auth_mode: AuthMode) -> dict[str, Any]:
    """The fields of the key modes (`api_key`, `basic`), checked together: an injection rule
    names a header or a query parameter, never both."""
    given = [key for key in _KEY_MODE_FIELDS[1:] if key in table]
    if given and auth_mode not in KEY_MODES:
        raise _FieldError(given[0], "applies to auth_mode 'api_key' or 'basic' only")
    header = _text(table, "api_key_header", default="Authorization")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", header):
        raise _FieldError("api_key_header", "is not an HTTP header name")
    default_prefix = "Bearer " if header.lower() == "authorization" else ""
    prefix = table.get("api_key_prefix", default_prefix)
    if not isinstance(prefix, str) or not all(ch.isprintable() for ch in prefix):
        raise _FieldError("api_key_prefix", "must be a string of printable characters")
    query = _optional_text(table, "api_key_query_param")
    if query is not None and ("api_key_header" in table or "api_key_prefix" in table):
        raise _FieldError("api_key_query_param", "is instead of api_key_header/api_key_prefix")
    return {
        "auth_mode": auth_mode,
        "api_key_header": header,
        "api_key_prefix": prefix,
        "api_key_query_param": query,
        "username_label": _text(table, "username_label", default="Username"),
        "password_label": _text(table, "password_label", default="Password"),
    }


def _similar(a: str, b: str) -> bool:
    """A cheap typo check: same length give or take one, mostly the same letters."""
    if abs(len(a) - len(b)) > 2:
        return False
    common = sum(1 for x, y in zip(a, b, strict=False) if x == y)
    return common >= max(len(a), len(b)) - 2


def _text(table: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise _FieldError(key, "must be a non-empty string")
    return value


def _optional_text(table: dict[str, Any], key: str) -> str | None:
    return _text(table, key) if key in table else None


def _bool(table: dict[str, Any], key: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise _FieldError(key, "must be true or false")
    return value


def _choice(table: dict[str, Any], key: str, options: Any, *, default: str | None = None) -> Any:
    value = table.get(key, default)
    allowed: tuple[str, ...] = get_args(options)
    if value not in allowed:
        raise _FieldError(key, "must be one of " + ", ".join(repr(a) for a in allowed))
    return value


def _url(table: dict[str, Any], key: str, *placeholders: str) -> str:
    value = _text(table, key)
    found = _PLACEHOLDER_RE.findall(value)
    for placeholder in found:
        if placeholder not in placeholders:
            allowed = " or ".join(placeholders) if placeholders else "none"
            raise _FieldError(key, f"unknown placeholder {placeholder} (allowed here: {allowed})")
    if value.startswith(INSTANCE_URL):
        rest = value[len(INSTANCE_URL) :]
        if rest and not rest.startswith("/"):
            raise _FieldError(key, "must continue with '/' after {instance_url}")
        return value
    if INSTANCE_URL in value:
        raise _FieldError(key, "{instance_url} may only start the URL")
    sample = _PLACEHOLDER_RE.sub(
        lambda m: m.group(0) if m.group(0) == CLIENT_ID else _PARAM_SAMPLE, value
    )
    parts = urlsplit(sample.replace(CLIENT_ID, "client-id"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise _FieldError(key, "must be an http(s) URL")
    for fixed in (CLIENT_ID, *_APP_PLACEHOLDERS):
        if fixed in urlsplit(value).netloc:
            raise _FieldError(key, f"{fixed} may only appear in the path")
    return value


def _optional_url(table: dict[str, Any], key: str, *placeholders: str) -> str | None:
    return _url(table, key, *placeholders) if key in table else None


def _names(table: dict[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _FieldError(key, "must be a list of non-empty strings")
    return tuple(cast(list[str], value))


def _authorize_params(table: dict[str, Any]) -> Mapping[str, str]:
    key = "authorize_params"
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(key, 'must be a table of strings, e.g. { prompt = "consent" }')
    for param, setting in value.items():
        if not isinstance(setting, str):
            raise _FieldError(f"{key}.{param}", "must be a string")
        if param in _RESERVED_AUTHORIZE_PARAMS:
            raise _FieldError(f"{key}.{param}", "is set by apiauth itself")
        unknown = [p for p in _PLACEHOLDER_RE.findall(setting) if p != CLIENT_ID]
        if unknown:
            raise _FieldError(f"{key}.{param}", f"unknown placeholder {unknown[0]}")
    return MappingProxyType(dict(value))


def _lifetime(table: dict[str, Any], key: str, absent: str) -> int | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _FieldError(key, f"must be a positive number of seconds (leave it out: {absent})")
    return value


def _scopes(value: Any, separator: str) -> tuple[Scope, ...]:
    if not isinstance(value, list):
        raise _FieldError("scopes", "must be a list of { name, description, default } tables")
    scopes: list[Scope] = []
    seen: set[str] = set()
    for index, entry in enumerate(value):
        where = f"scopes[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise _FieldError(where, "must be a table { name, description, default }")
        for key in entry:
            if key not in ("name", "description", "default"):
                raise _FieldError(f"{where}.{key}", "unknown field")
        name_field = f"{where}.name"
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _FieldError(name_field, "must be a non-empty string")
        if any(c.isspace() for c in name) or (separator.strip() and separator in name):
            raise _FieldError(name_field, f"{name!r} must not contain spaces or the separator")
        if name in seen:
            raise _FieldError(name_field, f"{name!r} is listed twice")
        seen.add(name)
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise _FieldError(f"{where}.description", "must be a string")
        default = entry.get("default", False)
        if not isinstance(default, bool):
            raise _FieldError(f"{where}.default", "must be true or false")
        scopes.append(Scope(name=name, description=description, default=default))
    return tuple(scopes)


def _scope_param(table: dict[str, Any]) -> str:
    value = _text(table, "scope_param", default="scope")
    if value != "scope" and value in _RESERVED_AUTHORIZE_PARAMS:
        raise _FieldError("scope_param", "is set by apiauth itself")
    return value


def _userinfo_headers(table: dict[str, Any]) -> Mapping[str, str]:
    key = "userinfo_headers"
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(
            key, 'must be a table of strings, e.g. { "Notion-Version" = "2022-06-28" }'
        )
    for header, setting in value.items():
        if not isinstance(setting, str) or not setting:
            raise _FieldError(f"{key}.{header}", "must be a non-empty string")
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", header):
            raise _FieldError(f"{key}.{header}", "is not an HTTP header name")
        unknown = [p for p in _PLACEHOLDER_RE.findall(setting) if p != ACCESS_TOKEN]
        if unknown:
            raise _FieldError(
                f"{key}.{header}", f"unknown placeholder {unknown[0]} (allowed: {ACCESS_TOKEN})"
            )
    return MappingProxyType(dict(value))


_TOKEN_REQUEST_FIELDS = frozenset(
    {"grant_type", "code", "redirect_uri", "code_verifier", "refresh_token"}
    | {"client_id", "client_secret", "client_assertion", "client_assertion_type"}
)
_NOT_SETTABLE_HEADERS = frozenset({"host", "cookie", "content-length", "transfer-encoding"})
_HEADER_NAME_RE = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
_PATH_RE = re.compile(r"\A[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*\Z")


def _string_table(
    table: dict[str, Any], key: str, placeholders: Sequence[str]
) -> Mapping[str, str]:
    """Extra token-request parameters: names to strings, which may hold `{param}`s."""
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(key, 'must be a table of strings, e.g. { expiring = "1" }')
    for name, setting in value.items():
        if not isinstance(setting, str):
            raise _FieldError(f"{key}.{name}", "must be a string")
        if name in _TOKEN_REQUEST_FIELDS:
            raise _FieldError(f"{key}.{name}", "is set by apiauth itself")
        unknown = [p for p in _PLACEHOLDER_RE.findall(setting) if p not in placeholders]
        if unknown:
            raise _FieldError(f"{key}.{name}", f"unknown placeholder {unknown[0]}")
    return MappingProxyType(dict(value))


def _header_name(table: dict[str, Any], key: str) -> str:
    value = _text(table, key, default="Authorization")
    if not _HEADER_NAME_RE.match(value) or value.lower() in _NOT_SETTABLE_HEADERS:
        raise _FieldError(key, "is not an HTTP header name that can carry a token")
    return value


def _proxy_auth_scheme(table: dict[str, Any]) -> str:
    key = "proxy_auth_scheme"
    value = table.get(key, "Bearer")
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]{0,32}", value):
        raise _FieldError(key, 'must be a scheme such as "Bearer" or "OAuth", or "" for none')
    return value


def _proxy_headers(table: dict[str, Any], placeholders: Sequence[str]) -> Mapping[str, str]:
    key = "proxy_headers"
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(
            key, 'must be a table of strings, e.g. { "Notion-Version" = "2022-06-28" }'
        )
    for header, setting in value.items():
        if not isinstance(setting, str) or not setting:
            raise _FieldError(f"{key}.{header}", "must be a non-empty string")
        if not _HEADER_NAME_RE.match(header) or header.lower() in _NOT_SETTABLE_HEADERS:
            raise _FieldError(f"{key}.{header}", "is not an HTTP header name the proxy may set")
        if header.lower() == str(table.get("proxy_auth_header", "Authorization")).lower():
            raise _FieldError(f"{key}.{header}", "carries the token: see proxy_auth_header")
        unknown = [p for p in _PLACEHOLDER_RE.findall(setting) if p not in placeholders]
        if unknown:
            raise _FieldError(f"{key}.{header}", f"unknown placeholder {unknown[0]}")
    return MappingProxyType(dict(value))


def _learn(table: dict[str, Any], taken: set[str]) -> tuple[LearnedValue, ...]:
    key = "learn"
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _FieldError(key, 'must be a table, e.g. { dc = { from = "userinfo", path = "dc" } }')
    learned: list[LearnedValue] = []
    for name, entry in value.items():
        where = f"{key}.{name}"
        if not _PARAM_NAME_RE.match(name):
            raise _FieldError(where, "must be a lowercase name of a-z, 0-9 and '_'")
        if name in taken or name in ("instance_url", "client_id", "access_token"):
            raise _FieldError(where, "clashes with a parameter, a placeholder or a kept field")
        if not isinstance(entry, dict) or set(entry) - {"from", "path"}:
            raise _FieldError(where, "must be a table { from, path }")
        source, path = entry.get("from"), entry.get("path")
        if not isinstance(source, str) or not (
            source in _LEARN_SOURCES or source.startswith("https://")
        ):
            raise _FieldError(f"{where}.from", 'must be "token", "userinfo", "callback" or a URL')
        if not isinstance(path, str) or not _PATH_RE.match(path):
            raise _FieldError(f"{where}.path", "must be a dotted path such as data.id or 0.id")
        learned.append(LearnedValue(name=name, source=source, path=path))
    return tuple(learned)


def _params(table: dict[str, Any], kept_fields: Sequence[str]) -> tuple[ConnectionParam, ...]:
    value = table.get("params", {})
    if not isinstance(value, dict):
        raise _FieldError("params", "must be a table of [providers.NAME.params] entries")
    taken = {"instance_url", "client_id", "access_token", *kept_fields}
    params: list[ConnectionParam] = []
    for name, entry in value.items():
        where = f"params.{name}"
        if not _PARAM_NAME_RE.match(name):
            raise _FieldError(where, "must be a lowercase name of a-z, 0-9 and '_'")
        if name in taken:
            raise _FieldError(where, "clashes with a placeholder or a kept response field")
        if not isinstance(entry, dict):
            raise _FieldError(where, "must be a table { description, pattern, required, default }")
        for key in entry:
            if key not in ("description", "pattern", "choices", "required", "default", "format"):
                raise _FieldError(f"{where}.{key}", "unknown field")
        value_format = entry.get("format", "url_safe")
        if value_format not in get_args(ParamFormat):
            raise _FieldError(f"{where}.format", "must be 'url_safe' or 'email'")
        description = _text(entry, "description") if "description" in entry else None
        if description is None:
            raise _FieldError(f"{where}.description", "is required")
        pattern = entry.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str) or not pattern:
                raise _FieldError(f"{where}.pattern", "must be a non-empty regular expression")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _FieldError(
                    f"{where}.pattern", f"is not a valid regular expression: {exc}"
                ) from None
        choices = entry.get("choices", [])
        if not isinstance(choices, list) or not all(
            isinstance(c, str) and _PARAM_VALUE_RE.match(c) for c in choices
        ):
            raise _FieldError(f"{where}.choices", "must be a list of URL-safe strings")
        if value_format == "email" and choices:
            raise _FieldError(f"{where}.choices", "an email parameter takes no choices")
        if pattern is None and not choices and value_format == "url_safe":
            # The value lands in a URL the server calls with the client secret: never unchecked.
            raise _FieldError(where, "needs a pattern or choices to check values against")
        required = entry.get("required", False)
        if not isinstance(required, bool):
            raise _FieldError(f"{where}.required", "must be true or false")
        default = entry.get("default")
        param = ConnectionParam(
            name=name,
            description=description,
            pattern=pattern,
            choices=tuple(choices),
            required=required,
            default=None,
            format=value_format,
        )
        if default is not None:
            if not isinstance(default, str) or required:
                raise _FieldError(f"{where}.default", "must be a string, on an optional parameter")
            try:
                param = replace(param, default=param.check(default))
            except ParamError as exc:
                raise _FieldError(f"{where}.default", exc.message) from None
        params.append(param)
    return tuple(params)


def _check_params_fill_urls(table: dict[str, Any], params: Sequence[ConnectionParam]) -> None:
    """A parameter that a URL needs must always have a value: required, or a default."""
    for param in params:
        if param.required or param.default is not None:
            continue
        placeholder = "{" + param.name + "}"
        for key in ("authorization_url", "token_url", "userinfo_url", "revoke_url", "refresh_url"):
            if placeholder in str(table.get(key, "")):
                raise _FieldError(
                    f"params.{param.name}",
                    f"is used in {key}, so it must be required or have a default",
                )
