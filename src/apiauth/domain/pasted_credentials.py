"""Connections made from a credential a person pastes (auth modes `api_key` and `basic`,
SPEC §7): checked, verified at the provider before anything is stored, then stored like a
token set. A provider's refusal is a 422 naming its answer; nothing is stored then."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apiauth.domain.broker import Broker
from apiauth.domain.connect_flow import NewConnection, store_new_connection
from apiauth.domain.connections import ConnectionView
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import provider_for
from apiauth.domain.sites import find_site
from apiauth.errors import InvalidInput, TokenRejected
from apiauth.oauth.modes import PASTED_FIELDS, mode_named
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import KEY_MODES, ParamError, Provider

__all__ = [
    "MAX_CREDENTIAL_LENGTH",
    "CredentialField",
    "connect_with_credentials",
    "credential_fields",
]

MAX_CREDENTIAL_LENGTH = 4096


@dataclass(frozen=True)
class CredentialField:
    """One input of a key-based provider's connect form (and of `credentials`)."""

    name: str
    label: str
    secret: bool


def credential_fields(provider: Provider) -> tuple[CredentialField, ...]:
    """The inputs a connection to `provider` takes; none for the modes that need no paste."""
    if provider.auth_mode == "api_key":
        return (CredentialField("api_key", "API key", True),)
    if provider.auth_mode == "basic":
        return (
            CredentialField("username", provider.username_label, False),
            CredentialField("password", provider.password_label, True),
        )
    return ()


@dataclass(frozen=True)
class _Checked:
    secret: str
    username: str | None


def connect_with_credentials(
    broker: Broker,
    member: MemberView,
    site_name: str,
    provider_name: str,
    credentials: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> ConnectionView:
    """Verify the credential at the provider, then store the site's connection (a new one,
    or the existing one's credential replaced). Raises InvalidInput (422) for a credential
    of the wrong shape or one the provider refuses; a provider that cannot be reached is a
    transient ProviderError (502) and nothing is stored either."""
    provider = provider_for(broker, member.team_id, provider_name)
    if provider.auth_mode not in KEY_MODES:
        raise InvalidInput(
            f"{provider.display_name} connects with auth_mode {provider.auth_mode!r}, not "
            "with pasted credentials: leave out `credentials`"
        )
    checked = _check(provider, credentials)
    try:
        given = provider.check_params(params)
    except ParamError as exc:
        raise InvalidInput(f"connection parameter {exc}") from None
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        site_id = site.id
    token = TokenSet(
        access_token=checked.secret,
        refresh_token=None,
        token_type=provider.auth_mode,
        expires_at=None,
        granted_scopes=(),
        extra=given,
        auth_mode=provider.auth_mode,
        username=checked.username,
    )
    mode = mode_named(provider.auth_mode)
    try:
        account_id, account_login = mode.verify(broker.http_for(provider), provider, token)
    except TokenRejected as exc:
        raise InvalidInput(exc.message) from None
    return store_new_connection(
        broker,
        NewConnection(site_id, "", provider.name, (), member.email),
        token,
        account_id,
        account_login,
    )


def _check(provider: Provider, credentials: Mapping[str, str]) -> _Checked:
    expected = PASTED_FIELDS[provider.auth_mode]
    unknown = sorted(set(credentials) - set(expected))
    if unknown:
        raise InvalidInput(
            f"credentials.{unknown[0]}: {provider.display_name} takes "
            + " and ".join(expected)
            + f" (auth_mode {provider.auth_mode!r})"
        )
    values: dict[str, str] = {}
    for name in expected:
        value = credentials.get(name)
        value = value.strip() if isinstance(value, str) else ""
        if not value:
            raise InvalidInput(f"credentials.{name} is required for {provider.display_name}")
        if len(value) > MAX_CREDENTIAL_LENGTH or not value.isprintable():
            raise InvalidInput(
                f"credentials.{name} must be at most {MAX_CREDENTIAL_LENGTH} printable characters"
            )
        values[name] = value
    if "username" in values and ":" in values["username"]:
        # RFC 7617 §2: the user-id of basic authentication cannot hold a colon.
        raise InvalidInput("credentials.username must not contain ':'")
    if provider.auth_mode == "basic":
        return _Checked(values["password"], values["username"])
    return _Checked(values["api_key"], None)
