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
    "BUILTIN_CATALOG_FILE",
    "Catalog",
    "CatalogError",
    "ConnectionParam",
    "ParamError",
    "Provider",
    "RefreshTokenStyle",
    "RevokeStyle",
    "Scope",
    "TokenAuthMethod",
    "emulated_url",
    "load_catalog",
]

TokenAuthMethod = Literal["client_secret_post", "client_secret_basic", "none"]
RefreshTokenStyle = Literal["none", "reusable", "rotating", "may_rotate"]
RevokeStyle = Literal["rfc7009", "github", "stripe", "bearer"]
UserinfoMethod = Literal["GET", "POST"]

BUILTIN_CATALOG_FILE = "catalog.toml"

#: Placeholders a URL may hold, filled at call time: `{instance_url}` from the token response
#: (Salesforce), `{client_id}` from the OAuth app (GitHub's revoke URL).
INSTANCE_URL = "{instance_url}"
CLIENT_ID = "{client_id}"

#: `{access_token}` may stand in `userinfo_headers` values, for APIs that take the token in a
#: header of their own (Shopify) or under another scheme (Mailchimp's `OAuth`).
ACCESS_TOKEN = "{access_token}"  # noqa: S105 (a placeholder, not a secret)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
# A parameter's value lands in a URL, often in its host: only RFC 3986 unreserved characters,
# so that no value can add a host, a path, a query or userinfo whatever its pattern says.
_PARAM_VALUE_RE = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
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
_DEFAULT_ID_FIELDS = ("sub", "id")
_DEFAULT_LOGIN_FIELDS = ("preferred_username", "login", "email")


class CatalogError(ValueError):
    """A catalog file is unreadable or describes a provider wrongly."""


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

    def check(self, value: str) -> str:
        """The value, if it fits; raises `ParamError` naming this parameter otherwise."""
        value = value.strip()
        if not _PARAM_VALUE_RE.match(value):
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

    def url_values(self, values: Mapping[str, str]) -> dict[str, str]:
        """What fills the URL placeholders: parameter defaults, overridden by `values` (a
        connection's given parameters and kept response fields)."""
        defaults = {p.name: p.default for p in self.params if p.default is not None}
        return {**defaults, **values}

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


def _first_value(body: Mapping[str, Any], paths: Sequence[str]) -> str | None:
    for path in paths:
        value: Any = body
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                value = None
                break
            value = value[part]
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

    def __repr__(self) -> str:
        return f"Catalog({self.names()!r})"


def load_catalog(providers_file: Path | None = None, *, emulator_url: str | None = None) -> Catalog:
    """The built-in catalog, plus the custom providers file, optionally pointed at an emulator.

    Raises `CatalogError` naming the file, the provider and the field for any mistake.
    """
    packaged = resources.files(__package__ or "apiauth.providers").joinpath(BUILTIN_CATALOG_FILE)
    providers = _parse_catalog(packaged.read_text(encoding="utf-8"), BUILTIN_CATALOG_FILE, True)
    if providers_file is not None:
        label = str(providers_file)
        try:
            text = Path(providers_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"{label}: cannot read the providers file: {exc.strerror}") from exc
        builtin_names = {p.name for p in providers}
        for custom in _parse_catalog(text, label, False):
            if custom.name in builtin_names:
                raise CatalogError(
                    f"{label}: provider {custom.name!r}: field 'name': "
                    "is a built-in provider; choose another name"
                )
            providers.append(custom)
    if emulator_url is not None:
        providers = [_emulated_provider(p, emulator_url) for p in providers]
    return Catalog(providers)


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

    return replace(
        provider,
        authorization_url=emulated_url(provider.authorization_url, provider.name, emulator_url),
        token_url=emulated_url(provider.token_url, provider.name, emulator_url),
        userinfo_url=move(provider.userinfo_url),
        revoke_url=move(provider.revoke_url),
        api_base_url=move(provider.api_base_url),
        refresh_url=move(provider.refresh_url),
    )


# --- parsing and validation -------------------------------------------------------------


class _FieldError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


def _parse_catalog(text: str, label: str, builtin: bool) -> list[Provider]:
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
    providers = []
    for name, table in tables.items():
        try:
            providers.append(_parse_provider(name, table, builtin))
        except _FieldError as exc:
            raise CatalogError(
                f"{label}: provider {name!r}: field {exc.field_name!r}: {exc.message}"
            ) from None
    return providers


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
)
_REQUIRED = ("display_name", "authorization_url", "token_url", "token_auth_method")


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
    for key in _REQUIRED:
        if key not in table:
            raise _FieldError(key, "is required")

    scope_separator = _text(table, "scope_separator", default=" ")
    granted_separator = _text(table, "granted_scope_separator", default=scope_separator)
    scopes = _scopes(table.get("scopes", []), scope_separator)
    params = _params(table, _names(table, "keep_response_fields"))
    param_names = tuple("{" + p.name + "}" for p in params)
    endpoint_placeholders = (INSTANCE_URL, CLIENT_ID, *param_names)
    _check_params_fill_urls(table, params)

    return Provider(
        name=name,
        display_name=_text(table, "display_name"),
        authorization_url=_url(table, "authorization_url", *param_names),
        token_url=_url(table, "token_url", *param_names),
        token_auth_method=_choice(table, "token_auth_method", TokenAuthMethod),
        pkce=_bool(table, "pkce", default=False),
        scope_separator=scope_separator,
        granted_scope_separator=granted_separator,
        scopes=scopes,
        userinfo_url=_optional_url(table, "userinfo_url", *endpoint_placeholders),
        revoke_url=_optional_url(table, "revoke_url", *endpoint_placeholders),
        revoke_style=_choice(table, "revoke_style", RevokeStyle, default="rfc7009"),
        keep_response_fields=_names(table, "keep_response_fields"),
        account_id_field=_optional_text(table, "account_id_field"),
        account_login_field=_optional_text(table, "account_login_field"),
        authorize_params=_authorize_params(table),
        access_token_lifetime=_lifetime(table),
        refresh_token=_choice(table, "refresh_token", RefreshTokenStyle, default="reusable"),
        api_base_url=_optional_url(table, "api_base_url", INSTANCE_URL, *param_names),
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
    )


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
    if CLIENT_ID in urlsplit(value).netloc:
        raise _FieldError(key, "{client_id} may only appear in the path")
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
    return MappingProxyType(dict(value))


def _lifetime(table: dict[str, Any]) -> int | None:
    key = "access_token_lifetime"
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _FieldError(key, "must be a positive number of seconds (leave it out: no expiry)")
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
            if key not in ("description", "pattern", "choices", "required", "default"):
                raise _FieldError(f"{where}.{key}", "unknown field")
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
        if pattern is None and not choices:
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
