"""Connections no person consents to (auth modes `oauth2_client_credentials` and
`jwt_bearer`, SPEC §7): the
team's OAuth app is the credential, a token is minted for the site at once and minted again
before it expires (the refresher's `Mode.renew`). On any failure nothing is stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from apiauth.domain.broker import Broker
from apiauth.domain.connect_flow import NewConnection, store_new_connection, validate_scopes
from apiauth.domain.connections import ConnectionView
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import client_for, provider_for
from apiauth.domain.sites import find_site
from apiauth.errors import InvalidInput, ProviderError
from apiauth.oauth.modes import mode_named
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import MACHINE_MODES, ParamError

__all__ = ["connect_client", "needs_no_consent"]


def needs_no_consent(broker: Broker, member: MemberView, provider_name: str) -> bool:
    """Whether connecting `provider` mints a token at once instead of starting a flow."""
    return provider_for(broker, member.team_id, provider_name).auth_mode in MACHINE_MODES


def connect_client(
    broker: Broker,
    member: MemberView,
    site_name: str,
    provider_name: str,
    scopes: Sequence[str] | None = None,
    params: Mapping[str, str] | None = None,
) -> ConnectionView:
    """Mint the site's first token with the team's OAuth app and store the connection. A
    provider that refuses the client (`invalid_client`, `invalid_scope`) is a 422 naming its
    answer; one that cannot be reached a 502."""
    provider = provider_for(broker, member.team_id, provider_name)
    if provider.auth_mode not in MACHINE_MODES:
        raise InvalidInput(f"{provider.display_name} is not a client-credentials provider")
    chosen = validate_scopes(provider, scopes)
    try:
        given = provider.check_params(params)
    except ParamError as exc:
        raise InvalidInput(f"connection parameter {exc}") from None
    with broker.sessions() as db:
        site_id = find_site(db, member.team_id, site_name).id
    client = client_for(broker, member.team_id, provider.name)
    http = broker.http_for(provider)
    mode = mode_named(provider.auth_mode)
    # The first token is a renewal of nothing: the mode mints from the scopes and params.
    seed = TokenSet("", None, "bearer", None, chosen, given, auth_mode=provider.auth_mode)
    try:
        token = mode.renew(http, provider, client, seed, now=broker.clock(), check_first=False)
        assert token is not None
        account_id, account_login = mode.verify(http, provider, token)
    except ProviderError as exc:
        if exc.transient:
            raise
        raise InvalidInput(exc.message) from None
    view = store_new_connection(
        broker,
        NewConnection(site_id, "", provider.name, chosen, member.email),
        token,
        account_id,
        account_login,
    )
    broker.runtime.refresh_wakeup.set()
    return view
