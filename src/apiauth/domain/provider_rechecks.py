"""Re-checks of providers added by URL: their metadata fetched again on a schedule
(`APIAUTH_PROVIDER_RECHECK_SECONDS`) and soon after one of their connections failed to
refresh. Moved endpoints and new scopes are followed; a change that weakens security (issuer,
https, PKCE, `iss`, the resource's authorization server) is refused and recorded
(`refused_change`) while the provider keeps working as it was. Where the server manages
registrations (RFC 7592) the registration is read again, and updated when apiauth's redirect
URI changed. Of several replicas, one re-checks a provider (compare-and-set on `checked_at`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import exists, func, or_, select, update

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.provider_entries import followed
from apiauth.domain.team_catalog import seal_registration
from apiauth.domain.team_providers import find_row, guarded_http, opened_registration, url_check
from apiauth.domain.token_store import NEEDS_REAUTH
from apiauth.errors import ApiAuthServerError
from apiauth.oauth import discovery, registration
from apiauth.oauth.registration import Registration
from apiauth.providers import CatalogError, parse_provider_entry
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site, TeamProvider

__all__ = [
    "next_recheck_at",
    "recheck_due_providers",
    "recheck_named_provider",
    "recheck_provider",
]

log = logging.getLogger(__name__)

RECHECK_RETRY = timedelta(minutes=15)


def recheck_due_providers(broker: Broker, *, limit: int = 20) -> int:
    """Re-check the providers whose time has come, or one of whose connections failed to
    refresh since their last check. Returns how many were checked."""
    now = broker.clock()
    with broker.sessions() as db:
        failed_since_check = exists().where(
            Connection.provider == TeamProvider.name,
            Connection.site_id == Site.id,
            Site.team_id == TeamProvider.team_id,
            or_(Connection.failure_count > 0, Connection.status == NEEDS_REAUTH),
            Connection.updated_at > TeamProvider.checked_at,
        )
        due = db.execute(
            select(TeamProvider.id, TeamProvider.checked_at)
            .where(or_(TeamProvider.next_check_at <= now, failed_since_check))
            .order_by(TeamProvider.next_check_at)
            .limit(limit)
        ).all()
    checked = 0
    for provider_id, checked_at in due:
        if not _claim_recheck(broker, provider_id, checked_at, now):
            continue  # another process took it
        try:
            recheck_provider(broker, provider_id)
        except Exception:
            log.exception("re-check of team provider %s failed", provider_id)
        checked += 1
    return checked


def _claim_recheck(broker: Broker, provider_id: str, checked_at: datetime, now: datetime) -> bool:
    """Compare-and-set on `checked_at`, so that of several replicas one re-checks."""
    with transaction(broker.sessions) as db:
        claimed = db.execute(
            update(TeamProvider)
            .where(TeamProvider.id == provider_id, TeamProvider.checked_at == checked_at)
            .values(checked_at=now, next_check_at=now + RECHECK_RETRY)
        )
        return getattr(claimed, "rowcount", 0) == 1


def next_recheck_at(broker: Broker) -> datetime | None:
    with broker.sessions() as db:
        soonest: datetime | None = db.scalar(select(func.min(TeamProvider.next_check_at)))
    return soonest


def recheck_named_provider(broker: Broker, member: MemberView, name: str) -> str | None:
    """`recheck_provider` for a provider of the member's team, by name."""
    with broker.sessions() as db:
        row_id = find_row(db, member.team_id, name).id
    return recheck_provider(broker, row_id)


def recheck_provider(broker: Broker, provider_id: str) -> str | None:
    """Fetch a provider's metadata again and follow it, unless it weakens security: then
    the change is refused and recorded (`refused_change`). Returns what was refused or
    could not be fetched, None when all is well."""
    with broker.sessions() as db:
        row = db.get(TeamProvider, provider_id)
        if row is None:
            return None
        made = opened_registration(broker, row)
        stored = dict(row.server_metadata)
        entry = dict(row.entry)
        name = row.name
        issuer, resource, resource_url = row.issuer, row.resource, row.resource_metadata_url
        allow = row.allow_without_pkce
    check = url_check(broker)
    problem: str | None = None
    refused: str | None = None
    fresh_entry = entry
    snapshot = stored
    try:
        if resource and resource_url:
            found = discovery.fetch_resource_metadata(
                guarded_http(broker), resource, resource_url, check
            )
            if issuer not in found.authorization_servers:
                refused = f"{resource} no longer names {issuer} as its authorization server"
        server = discovery.fetch_server_metadata(
            guarded_http(broker), issuer, check, allow_without_pkce=True
        )
        reasons = discovery.weakening(stored, server)
        if not server.s256 and not allow and not any("PKCE" in r for r in reasons):
            reasons.append("PKCE with S256 is not offered")
        if refused is None and reasons:
            refused = "; ".join(reasons)
        if refused is None:
            fresh_entry = followed(entry, server)
            parse_provider_entry(name, fresh_entry, "the re-checked provider")
            snapshot = server.snapshot()
        if made is not None and made.manageable and refused is None:
            made = _refreshed_registration(broker, made)
    except (ApiAuthServerError, CatalogError) as exc:
        problem = exc.message if isinstance(exc, ApiAuthServerError) else str(exc)
    now = broker.clock()
    with transaction(broker.sessions) as db:
        row = db.get(TeamProvider, provider_id)
        if row is None:
            return None
        row.checked_at = now
        if problem is not None:
            row.check_error = problem
            row.next_check_at = now + RECHECK_RETRY
        else:
            row.check_error = None
            row.refused_change = refused
            row.entry = fresh_entry
            row.server_metadata = snapshot
            row.next_check_at = now + timedelta(seconds=broker.settings.provider_recheck_seconds)
            if made is not None:
                row.registration_enc = seal_registration(broker, row.id, made)
    if refused:
        log.warning("team provider %s: refused a metadata change: %s", provider_id, refused)
    return problem or refused


def _refreshed_registration(broker: Broker, made: Registration) -> Registration:
    """RFC 7592: read the registration (a rotated secret comes back), and update it when
    apiauth's redirect URI changed since (APIAUTH_PUBLIC_URL moved)."""
    check = url_check(broker)
    current = registration.read_registration(guarded_http(broker), made, check)
    redirect_uri = broker.settings.redirect_uri
    if current.redirect_uris and redirect_uri not in current.redirect_uris:
        current = registration.update_registration(
            guarded_http(broker), current, redirect_uri, check
        )
    return current
