"""A site's connections as its team sees them: list, read, refresh on request, and delete
(revoking at the provider first). The flow that makes a connection is `connect_flow`; the hot
read of their tokens is `secrets_read`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import team_clients
from apiauth.domain.refresh import is_refreshable, refresh_connection
from apiauth.domain.sites import find_site
from apiauth.domain.token_store import NEEDS_REAUTH, open_token
from apiauth.errors import ApiAuthServerError, Conflict, NotFound
from apiauth.oauth.modes import mode_of
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionView:
    provider: str
    status: str
    requested_scopes: tuple[str, ...]
    granted_scopes: tuple[str, ...]
    account_id: str | None
    account_login: str | None
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    last_error: str | None
    # The first failed refresh of the current degradation (failures in a row), or None.
    degraded_since: datetime | None
    # When the refresh token dies whatever happens, if known: re-authorize before.
    refresh_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    auth_mode: str = "oauth2"


def connection_view(connection: Connection) -> ConnectionView:
    return ConnectionView(
        provider=connection.provider,
        status=connection.status,
        requested_scopes=tuple(connection.requested_scopes),
        granted_scopes=tuple(connection.granted_scopes),
        account_id=connection.account_id,
        account_login=connection.account_login,
        expires_at=connection.expires_at,
        last_refreshed_at=connection.last_refreshed_at,
        last_error=connection.last_error,
        degraded_since=connection.degraded_since,
        refresh_expires_at=connection.refresh_expires_at,
        created_at=connection.created_at,
        updated_at=connection.updated_at,
        auth_mode=connection.auth_mode or "oauth2",
    )


def list_connections(broker: Broker, member: MemberView, site_name: str) -> list[ConnectionView]:
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        rows = db.scalars(
            select(Connection)
            .where(Connection.site_id == site.id, Connection.visitor_id == "")
            .order_by(Connection.provider)
        )
        return [connection_view(row) for row in rows]


def find_connection(
    db: Session, member: MemberView, site_name: str, provider: str
) -> tuple[Site, Connection]:
    """A site of the member's team and its own connection to `provider` (not a visitor's),
    or NotFound."""
    site = find_site(db, member.team_id, site_name)
    connection = db.scalar(
        select(Connection).where(
            Connection.site_id == site.id,
            Connection.visitor_id == "",
            Connection.provider == provider,
        )
    )
    if connection is None:
        raise NotFound(f"{site_name!r} has no {provider} connection")
    return site, connection


def get_connection(
    broker: Broker, member: MemberView, site_name: str, provider: str
) -> ConnectionView:
    with broker.sessions() as db:
        _site, row = find_connection(db, member, site_name, provider)
        return connection_view(row)


def delete_connection(broker: Broker, member: MemberView, site_name: str, provider: str) -> bool:
    """Revoke at the provider where the catalog says how, then forget the tokens. A provider
    that cannot be reached does not keep a site owner from disconnecting."""
    with broker.sessions() as db:
        site, _connection = find_connection(db, member, site_name, provider)
    erased = revoke_and_erase(
        broker,
        site.id,
        (Connection.visitor_id == "") & (Connection.provider == provider),
        audit_as=member.email,
    )
    return erased.revoked > 0


@dataclass(frozen=True)
class Erased:
    """What `revoke_and_erase` did: the providers whose connections are gone, and how many
    tokens their providers confirmed revoked."""

    providers: tuple[str, ...]
    revoked: int


def revoke_and_erase(
    broker: Broker,
    site_id: str,
    which: ColumnElement[bool],
    *,
    audit_as: str | None,
    also: Callable[[Session, Site, Erased], None] | None = None,
) -> Erased:
    """Revoke the tokens of a site's connections matching `which` at each provider that can,
    then delete the rows, each with its `connection.deleted` webhook (and, with `audit_as`,
    audit event), and whatever `also` erases in the same transaction. Revocation happens
    outside any transaction; a provider that cannot be reached keeps nobody from being
    disconnected or forgotten."""
    with broker.sessions() as db:
        site = db.get(Site, site_id)
        if site is None:
            raise NotFound("the site was deleted")
        rows = list(db.scalars(select(Connection).where(Connection.site_id == site_id, which)))
        held = [(row.provider, row.visitor_id, open_token(broker, row)) for row in rows]
        team_id = site.team_id
        clients = team_clients(broker, db, [team_id])
    revoked_providers: set[tuple[str, str]] = set()
    for provider_name, visitor_id, token in held:
        provider = clients.provider(team_id, provider_name)
        if token is None or provider is None:
            continue
        try:
            mode = mode_of(token)
            client = clients.get(team_id, provider_name) if mode.needs_client else None
            if mode.revoke(broker.http_for(provider), provider, client, token):
                revoked_providers.add((provider_name, visitor_id))
        except ApiAuthServerError as exc:
            log.warning("could not revoke a %s token: %s", provider_name, exc.message)
    with transaction(broker.sessions) as db:
        site = db.get(Site, site_id)
        if site is None:
            raise NotFound("the site was deleted")
        gone = db.execute(
            delete(Connection)
            .where(Connection.site_id == site_id, which)
            .returning(Connection.provider, Connection.visitor_id)
        ).all()
        erased = Erased(tuple(sorted(row.provider for row in gone)), len(revoked_providers))
        for row in gone:
            detail: dict[str, object] = {
                "provider": row.provider,
                "revoked_at_provider": (row.provider, row.visitor_id) in revoked_providers,
            }
            if row.visitor_id:
                detail["visitor_id"] = row.visitor_id
            if audit_as is not None:
                audit.record(db, site_id, "connection.deleted", audit_as, detail)
            deliveries.enqueue(broker, db, site, "connection.deleted", detail)
        if also is not None:
            also(db, site, erased)
    return erased


def refresh_site_connection(
    broker: Broker, member: MemberView, site_name: str, provider: str
) -> ConnectionView:
    """A person asked for a refresh now: done whatever the schedule or backoff says."""
    with broker.sessions() as db:
        _site, connection = find_connection(db, member, site_name, provider)
        token = open_token(broker, connection)
    if connection.status == NEEDS_REAUTH:
        raise Conflict(f"the {provider} connection needs re-authorization: connect it again")
    if token is None or not mode_of(token).renewable(token):
        raise Conflict(f"{provider} gave no refresh token: its token cannot be refreshed")
    refreshed = refresh_connection(broker, connection.id, is_refreshable, check_first=False)
    return connection_view(refreshed.connection)
