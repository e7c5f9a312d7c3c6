"""What the authenticated proxy needs to forward a call: the provider's API base URL and a
fresh bearer token of the caller's connection, and a refresh when the provider says 401."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from apiauth.domain.broker import Broker
from apiauth.domain.refresh import is_due_for_reader, is_refreshable, refresh_connection
from apiauth.domain.sites import SiteCaller
from apiauth.domain.token_store import NEEDS_REAUTH, open_token
from apiauth.domain.visitors import visitor_to_read
from apiauth.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from apiauth.oauth.token_set import TokenSet
from apiauth.store.models import Connection


@dataclass(frozen=True, repr=False)
class ProxyTarget:
    connection_id: str
    base_url: str
    bearer_token: str
    refreshable: bool

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
    provider = broker.catalog.get(provider_name)
    if provider is None:
        raise NotFound(f"no provider named {provider_name!r}")
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
    due = is_due_for_reader(broker)
    if due(connection, token, broker.clock()):
        refreshed = refresh_connection(broker, connection.id, due)
        connection, token = refreshed.connection, refreshed.token
    return _target(broker, connection, token, provider.api_base_url, provider_name)


def refreshed_target(broker: Broker, caller: SiteCaller, target: ProxyTarget) -> ProxyTarget:
    """The provider refused the token (401): refresh it once, whatever the schedule says."""
    refreshed = refresh_connection(broker, target.connection_id, is_refreshable, check_first=False)
    provider = broker.catalog[refreshed.connection.provider]
    assert provider.api_base_url is not None
    return _target(
        broker, refreshed.connection, refreshed.token, provider.api_base_url, provider.name
    )


def _target(
    broker: Broker,
    connection: Connection,
    token: TokenSet | None,
    base_template: str,
    provider_name: str,
) -> ProxyTarget:
    if token is None or connection.status == NEEDS_REAUTH:
        raise Conflict(f"the {provider_name} connection needs re-authorization: connect it again")
    if token.expires_at is not None and token.expires_at <= broker.clock():
        raise Conflict(f"the {provider_name} token expired and could not be refreshed yet")
    base_url = base_template
    if "{instance_url}" in base_url:
        instance_url = token.extra.get("instance_url")
        if not instance_url:
            raise Conflict(f"the {provider_name} connection has no instance_url: reconnect it")
        base_url = base_url.replace("{instance_url}", instance_url.rstrip("/"))
    provider = broker.catalog.get(provider_name)
    if provider is not None:  # connection parameters: Shopify's `{shop}`, Zendesk's `{subdomain}`
        for name, value in provider.url_values(token.extra).items():
            base_url = base_url.replace("{" + name + "}", value)
    return ProxyTarget(
        connection_id=connection.id,
        base_url=base_url.rstrip("/"),
        bearer_token=token.access_token,
        refreshable=token.refresh_token is not None,
    )
