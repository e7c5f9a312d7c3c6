"""Visitor connections: a site's own visitors connect their accounts, and the site's functions
act on their behalf.

A site token asks for a **connect session**: a random, short-lived link for one visitor (an id
the site chooses) and the providers it offers. The visitor opens the link, presses Connect on
one provider, consents there, and is sent back to the site's return URL. The link is spent
when the first provider flow starts (not when the page is first shown, so that a mail scanner
or chat unfurler fetching the page does not burn it): one link, one connection.

A visitor's connections live beside the site owner's (`visitor_id` "" is the owner), with the
same encryption, refresh and audit. Who may read whose tokens (`visitor_to_read`):

- a site token: the owner's, or any visitor of its site when asked by `visitor_id`;
- a function token bound to a visitor: that visitor's only (asking for another is a 403);
- a function token not bound to a visitor: the owner's only (asking for a visitor is a 403),
  so that a build's token never reaches end users' accounts.

Deleting a visitor revokes their tokens at each provider that can, erases their connections,
flows in progress, connect links and bound function tokens, and leaves an audit event.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from apiauth.domain import audit
from apiauth.domain.broker import Broker
from apiauth.domain.connect_flow import AuthorizationStart, start_connection, validate_scopes
from apiauth.domain.connections import ConnectionView, Erased, connection_view, revoke_and_erase
from apiauth.domain.function_tokens import validate_providers
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import client_for
from apiauth.domain.sites import SiteCaller, find_site, forget_valid_tokens
from apiauth.domain.team_catalog import providers_of_team, team_of_site
from apiauth.domain.token_format import hash_token
from apiauth.errors import (
    ConnectLinkSpent,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from apiauth.providers import Provider
from apiauth.store.db import transaction
from apiauth.store.dialect import rows_matched
from apiauth.store.models import (
    AuthState,
    Connection,
    ConnectSession,
    Site,
    SiteToken,
    Team,
    new_id,
)
from apiauth.url_policy import is_loopback_host

log = logging.getLogger(__name__)

OWNER = ""  # the `visitor_id` of the site owner's own connections
MAX_VISITOR_ID = 255
MAX_RETURN_URL = 2048
DEFAULT_PAGE = 50
MAX_PAGE = 200


@dataclass(frozen=True)
class ConnectLink:
    session_id: str
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class ConnectPage:
    """What the hosted connect page shows (never the link's token)."""

    site_name: str
    visitor_id: str
    providers: tuple[Provider, ...]
    expires_at: datetime
    return_url: str
    team_name: str = ""


@dataclass(frozen=True)
class VisitorErasure:
    visitor_id: str
    deleted_connections: int
    revoked_at_provider: int


@dataclass(frozen=True)
class ProviderCounts:
    provider: str
    by_status: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class VisitorView:
    visitor_id: str
    connections: tuple[ConnectionView, ...]


@dataclass(frozen=True)
class VisitorOverview:
    total_visitors: int
    providers: tuple[ProviderCounts, ...]
    visitors: tuple[VisitorView, ...]  # those matching the search, by visitor id
    more: bool  # more visitors match than were listed


# --------------------------------------------------------------------------- validation


def validate_visitor_id(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_VISITOR_ID
        or not all(ch.isprintable() and not ch.isspace() for ch in value)
    ):
        raise InvalidInput(
            f"visitor_id must be 1 to {MAX_VISITOR_ID} printable characters without spaces "
            "(the site's own id for the visitor, such as a user id)"
        )
    return value


def validate_return_url(url: object) -> str:
    """Where the visitor's browser goes back to: https, or http on loopback for local
    development. The server itself never calls this URL, so the SSRF policy (`url_policy`,
    which resolves hosts the server connects to) does not apply; what matters is that the
    redirect leaves no room for scheme tricks (`javascript:`) or ambiguous hosts."""
    problem = InvalidInput(
        f"return_url must be an https URL of at most {MAX_RETURN_URL} characters "
        "(plain http only for localhost, 127.0.0.1 or [::1])"
    )
    if (
        not isinstance(url, str)
        or len(url) > MAX_RETURN_URL
        or not all(ch.isprintable() and not ch.isspace() for ch in url)
        or "\\" in url
    ):
        raise problem
    try:
        parts = urlsplit(url)  # an unclosed IPv6 bracket raises
        parts.port  # noqa: B018 (a bad port raises)
        parts.hostname  # noqa: B018 (a bad zone or bracket raises)
    except ValueError:
        raise problem from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise problem
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise problem


def return_location(return_url: str, **params: str) -> str:
    """The return URL with `params` added to its query (its fragment kept last)."""
    parts = urlsplit(return_url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def visitor_to_read(caller: SiteCaller, asked: str | None) -> str:
    """Whose connections the caller reads: the visitor id, or `OWNER` ("")."""
    if caller.visitor_id:
        if asked is not None and asked != caller.visitor_id:
            raise PermissionDenied("this function token is bound to another visitor")
        return caller.visitor_id
    if asked is None:
        return OWNER
    visitor_id = validate_visitor_id(asked)
    if caller.kind != "site":
        raise PermissionDenied(
            "this function token is not bound to a visitor: read visitors with the site token, "
            "or mint a function token with visitor_id"
        )
    return visitor_id


def _site_token_only(caller: SiteCaller, what: str) -> None:
    if caller.kind != "site":
        raise PermissionDenied(f"only a site token can {what}; this is a function token")


# --------------------------------------------------------------------------- connect sessions


def create_connect_session(
    broker: Broker,
    caller: SiteCaller,
    visitor_id: str,
    providers: Sequence[str],
    return_url: str,
    scopes: Mapping[str, Sequence[str]] | None = None,
    *,
    ip: str | None = None,
) -> ConnectLink:
    """A single-use link for one visitor to connect one of `providers`; shown once."""
    _site_token_only(caller, "create connect sessions")
    visitor_id = validate_visitor_id(visitor_id)
    names = validate_providers(broker, providers, caller.site_id)
    if names is None:
        raise InvalidInput("providers must name at least one provider")
    chosen: dict[str, list[str]] = {}
    team_providers = providers_of_team(broker, team_of_site(broker, caller.site_id))
    for name, wanted in (scopes or {}).items():
        if name not in names:
            raise InvalidInput(f"scopes names {name[:63]!r}, which is not one of providers")
        chosen[name] = list(validate_scopes(team_providers[name], wanted))
    return_url = validate_return_url(return_url)
    with broker.sessions() as db:
        site = db.get(Site, caller.site_id)
        if site is None:
            raise NotFound("the site was deleted")
        team_id = site.team_id
    for name in names:  # a provider without an OAuth app: say so now, not on the page
        client_for(broker, team_id, name)
    token = secrets.token_urlsafe(32)
    now = broker.clock()
    expires_at = now + timedelta(seconds=broker.settings.connect_link_seconds)
    session_id = new_id("cs")
    with transaction(broker.sessions) as db:
        db.add(
            ConnectSession(
                id=session_id,
                token_hash=hash_token(token),
                site_id=caller.site_id,
                visitor_id=visitor_id,
                providers=list(names),
                scopes=chosen or None,
                return_url=return_url,
                created_at=now,
                expires_at=expires_at,
            )
        )
        detail = {
            "visitor_id": visitor_id,
            "providers": list(names),
            "connect_session_id": session_id,
            "token_id": caller.token_id,
        }
        audit.record(db, caller.site_id, "connect_session.created", "site token", detail, ip=ip)
    url = f"{broker.settings.public_url.rstrip('/')}/connect/{token}"
    return ConnectLink(session_id, url, expires_at)


def _usable_session(broker: Broker, token: str) -> tuple[ConnectSession, Site]:
    with broker.sessions() as db:
        row = db.execute(
            select(ConnectSession, Site)
            .join(Site, Site.id == ConnectSession.site_id)
            .where(ConnectSession.token_hash == hash_token(token))
        ).first()
    if row is None:
        raise NotFound("this connect link is not known here: ask the site for a new one")
    session, site = row
    if session.used_at is not None:
        raise _spent(session, "this connect link was used already: ask the site for a new one")
    if session.expires_at <= broker.clock():
        raise _spent(session, "this connect link expired: ask the site for a new one")
    if not site.api_auth_enabled:
        raise _spent(session, f"{site.name} no longer offers connections")
    return session, site


def _spent(session: ConnectSession, message: str) -> ConnectLinkSpent:
    failure = ConnectLinkSpent(message)
    failure.return_url = session.return_url
    return failure


def open_connect_page(broker: Broker, token: str) -> ConnectPage:
    """What the link shows. Showing it does not spend it (link previews fetch pages too)."""
    session, site = _usable_session(broker, token)
    known = providers_of_team(broker, site.team_id)
    offered = tuple(known[name] for name in session.providers if name in known)
    with broker.sessions() as db:
        team = db.get(Team, site.team_id)
    return ConnectPage(
        site.name,
        session.visitor_id,
        offered,
        session.expires_at,
        session.return_url,
        team.name if team is not None else "",
    )


def start_visitor_connection(broker: Broker, token: str, provider_name: str) -> AuthorizationStart:
    """The visitor pressed Connect: start the provider's flow for them and spend the link.

    The flow is started first and the link claimed after (compare-and-set), so that a flow
    that cannot start leaves the link usable, and of two presses at once only one gets an
    authorize URL."""
    session, site = _usable_session(broker, token)
    if provider_name not in session.providers:
        raise InvalidInput(f"this connect link does not offer {provider_name[:63]!r}")
    scopes = (session.scopes or {}).get(provider_name)
    start = start_connection(
        broker,
        None,
        site.name,
        provider_name,
        scopes,
        visitor_id=session.visitor_id,
        connect_session_id=session.id,
        bind_browser=True,
    )
    with transaction(broker.sessions) as db:
        claimed = db.execute(
            update(ConnectSession)
            .where(ConnectSession.id == session.id, ConnectSession.used_at.is_(None))
            .values(used_at=broker.clock())
        )
        if rows_matched(claimed) != 1:
            db.execute(delete(AuthState).where(AuthState.id == start.state_id))
            spent = True
        else:
            spent = False
    if spent:
        raise _spent(session, "this connect link was used already: ask the site for a new one")
    return start


# --------------------------------------------------------------------------- erasure


def delete_visitor(
    broker: Broker, caller: SiteCaller, visitor_id: str, *, ip: str | None = None
) -> VisitorErasure:
    """A data-protection request: revoke and erase everything apiauth holds for the visitor."""
    _site_token_only(caller, "delete visitors")
    return _erase(broker, caller.site_id, validate_visitor_id(visitor_id), "site token", ip)


def delete_visitor_of_site(
    broker: Broker, member: MemberView, site_name: str, visitor_id: str
) -> VisitorErasure:
    """The same, asked for by a team member (dashboard, management API)."""
    with broker.sessions() as db:
        site_id = find_site(db, member.team_id, site_name).id
    return _erase(broker, site_id, validate_visitor_id(visitor_id), member.email, None)


def _erase(
    broker: Broker, site_id: str, visitor_id: str, actor: str, ip: str | None
) -> VisitorErasure:
    def erase_the_rest(db: Session, site: Site, erased: Erased) -> None:
        db.execute(
            delete(AuthState).where(
                AuthState.site_id == site_id, AuthState.visitor_id == visitor_id
            )
        )
        db.execute(
            delete(ConnectSession).where(
                ConnectSession.site_id == site_id, ConnectSession.visitor_id == visitor_id
            )
        )
        db.execute(
            update(SiteToken)
            .where(
                SiteToken.site_id == site_id,
                SiteToken.visitor_id == visitor_id,
                SiteToken.revoked_at.is_(None),
            )
            .values(revoked_at=broker.clock())
        )
        detail = {
            "visitor_id": visitor_id,
            "providers": list(erased.providers),
            "deleted_connections": len(erased.providers),
            "revoked_at_provider": erased.revoked,
        }
        audit.record(db, site_id, "visitor.deleted", actor, detail, ip=ip)

    erased = revoke_and_erase(
        broker,
        site_id,
        Connection.visitor_id == visitor_id,
        audit_as=None,
        also=erase_the_rest,
    )
    # The visitor's tokens stop at once here, elsewhere when the notice arrives.
    forget_valid_tokens(broker)
    return VisitorErasure(visitor_id, len(erased.providers), erased.revoked)


# --------------------------------------------------------------------------- overview


def visitor_overview(
    broker: Broker,
    member: MemberView,
    site_name: str,
    search: str = "",
    limit: int = DEFAULT_PAGE,
) -> VisitorOverview:
    """Counts of the site's visitor connections per provider and status, and the visitors
    whose id starts with `search` (all, by id, when it is empty), with their connections."""
    limit = max(1, min(limit, MAX_PAGE))
    if len(search) > MAX_VISITOR_ID:
        raise InvalidInput(f"search is a visitor id prefix of at most {MAX_VISITOR_ID} characters")
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        of_visitors = (Connection.site_id == site.id, Connection.visitor_id != OWNER)
        counts: dict[str, dict[str, int]] = {}
        for provider, status, count in db.execute(
            select(Connection.provider, Connection.status, func.count(Connection.id))
            .where(*of_visitors)
            .group_by(Connection.provider, Connection.status)
            .order_by(Connection.provider)
        ).all():
            counts.setdefault(provider, {})[status] = count
        total = db.scalar(
            select(func.count(func.distinct(Connection.visitor_id))).where(*of_visitors)
        )
        ids_query = select(Connection.visitor_id).where(*of_visitors).distinct()
        if search:
            ids_query = ids_query.where(Connection.visitor_id.startswith(search, autoescape=True))
        ids = list(db.scalars(ids_query.order_by(Connection.visitor_id).limit(limit + 1)))
        listed = ids[:limit]
        rows = db.scalars(
            select(Connection)
            .where(Connection.site_id == site.id, Connection.visitor_id.in_(listed))
            .order_by(Connection.visitor_id, Connection.provider)
        )
        by_visitor: dict[str, list[ConnectionView]] = {visitor: [] for visitor in listed}
        for row in rows:
            by_visitor[row.visitor_id].append(connection_view(row))
    return VisitorOverview(
        total_visitors=total or 0,
        providers=tuple(ProviderCounts(p, by_status) for p, by_status in counts.items()),
        visitors=tuple(VisitorView(v, tuple(c)) for v, c in by_visitor.items()),
        more=len(ids) > limit,
    )
