"""What the authenticated proxy needs to forward a call: the provider's API base URL and a
fresh bearer token of the caller's connection, and a refresh when the provider says 401."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from apiauth.domain.broker import Broker
from apiauth.domain.oauth_apps import provider_for
from apiauth.domain.refresh import (
    is_refreshable_after_rejection,
    refresh_connection,
    refresh_if_due,
)
from apiauth.domain.sites import SiteCaller
from apiauth.domain.team_catalog import team_of_site
from apiauth.domain.token_store import NEEDS_REAUTH, open_token
from apiauth.domain.visitors import visitor_to_read
from apiauth.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from apiauth.oauth.modes import Injection, mode_of
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import Provider
from apiauth.providers.catalog import MissingValue, fill_template
from apiauth.store.models import Connection


@dataclass(frozen=True, repr=False)
class ProxyTarget:
    connection_id: str
    base_url: str
    #: The credential, where its auth mode puts it (a Bearer, a key header, basic, a query
    #: parameter: `Mode.injection`).
    injection: Injection
    refreshable: bool
    #: Not a built-in provider, or its URL holds a host the provider chose (Salesforce's
    #: `instance_url`): the URL is checked against the URL policy at each call.
    guarded: bool = False
    #: What the proxy adds to the call: the token where the catalog says, fixed headers.
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"ProxyTarget(base_url={self.base_url!r})"


def proxy_target(
    broker: Broker, caller: SiteCaller, provider_name: str, visitor_id: str | None = None
) -> ProxyTarget:
    """The connection the caller may use at `provider_name`, its token refreshed when due:
    the site owner's, or a visitor's under the rules of `visitors.visitor_to_read`."""
    if caller.providers is not None and provider_name not in caller.providers:
        raise PermissionDenied(f"this function token may not use {provider_name}")
    whose = visitor_to_read(caller, visitor_id)
    provider = provider_for(broker, team_of_site(broker, caller.site_id), provider_name)
    if not provider.api_base_url:
        raise InvalidInput(f"the catalog names no API base URL for {provider.display_name}")
    with broker.sessions() as db:
        connection = db.scalar(
            select(Connection).where(
                Connection.site_id == caller.site_id,
                Connection.visitor_id == whose,
                Connection.provider == provider_name,
            )
        )
        if connection is None:
            whom = f"visitor {whose!r} of {caller.site_name!r}" if whose else caller.site_name
            raise NotFound(f"{whom} has no {provider_name} connection")
        token = open_token(broker, connection)
    connection, token = refresh_if_due(broker, connection.id, connection, token)
    return _target(broker, connection, token, provider)


def refreshed_target(broker: Broker, caller: SiteCaller, target: ProxyTarget) -> ProxyTarget:
    """The provider refused the token (401): refresh it once, whatever the schedule says,
    unless the connection was refreshed moments ago (then the token stays as it is)."""
    refreshed = refresh_connection(
        broker, target.connection_id, is_refreshable_after_rejection, check_first=False
    )
    provider = provider_for(
        broker, team_of_site(broker, caller.site_id), refreshed.connection.provider
    )
    assert provider.api_base_url is not None
    return _target(broker, refreshed.connection, refreshed.token, provider)


def _target(
    broker: Broker, connection: Connection, token: TokenSet | None, provider: Provider
) -> ProxyTarget:
    provider_name = provider.name
    assert provider.api_base_url is not None
    if token is None or connection.status == NEEDS_REAUTH:
        raise Conflict(f"the {provider_name} connection needs re-authorization: connect it again")
    if token.expires_at is not None and token.expires_at <= broker.clock():
        raise Conflict(f"the {provider_name} token expired and could not be refreshed yet")
    # Connection parameters (Shopify's `{shop}`), kept fields (`{instance_url}`) and learned
    # values (Mailchimp's `{dc}`) fill the base URL and the fixed headers alike; the
    # credential goes where its auth mode and the catalog say (`Mode.injection`).
    values = provider.url_values(token.extra)
    mode = mode_of(token)
    try:
        base_url = fill_template(provider.api_base_url, values)
        injection = mode.injection(provider, token)
    except MissingValue as exc:
        raise Conflict(f"the {provider_name} connection has no {exc.name}: reconnect it") from None
    return ProxyTarget(
        connection_id=connection.id,
        base_url=base_url.rstrip("/"),
        injection=injection,
        refreshable=mode.renewal_replaces_token and mode.renewable(token),
        guarded=not provider.urls_reviewed or provider.calls_chosen_urls,
        headers=injection.headers,
    )
