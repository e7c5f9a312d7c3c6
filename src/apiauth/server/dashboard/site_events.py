"""A site's audit log, newest first, a page at a time, for the dashboard.

Stands in until `apiauth.domain.audit` offers a listing of its own; it reads only through
`find_site`, so a member of another team finds no events (404), as for the site itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.sites import find_site
from apiauth.store.models import AuditEvent

PAGE_SIZE = 50


@dataclass(frozen=True)
class EventView:
    id: int
    kind: str
    actor: str
    detail: dict[str, Any]
    ip: str | None
    created_at: datetime


@dataclass(frozen=True)
class EventPage:
    events: list[EventView]
    older: int | None  # pass as `before` for the next page, None on the last one


def list_site_events(
    broker: Broker,
    member: MemberView,
    site_name: str,
    limit: int = PAGE_SIZE,
    before: int | None = None,
) -> EventPage:
    limit = max(1, min(limit, 200))
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        query = select(AuditEvent).where(AuditEvent.site_id == site.id)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        rows = list(db.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    events = [
        EventView(r.id, r.kind, r.actor, dict(r.detail or {}), r.ip, r.created_at)
        for r in rows[:limit]
    ]
    return EventPage(events, events[-1].id if len(rows) > limit else None)
