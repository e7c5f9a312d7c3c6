"""The audit log: who did what to a site's API Authentication. Never a token or secret.

Changes are recorded in the transaction that makes them (`record`). Reads of
`/api/v1/secrets` are recorded off the read's critical path: into the broker's in-memory
`AuditBuffer`, which the delivery worker writes in batches (at most about a second late) and
at shutdown, and which `list_events` writes out before reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Base, utcnow

if TYPE_CHECKING:
    from apiauth.domain.broker import Broker
    from apiauth.domain.members import MemberView
    from apiauth.domain.sites import SiteCaller

log = logging.getLogger(__name__)

MAX_PAGE = 200
DEFAULT_PAGE = 50


def record(
    db: Session,
    site_id: str | None,
    kind: str,
    actor: str,
    detail: Mapping[str, Any] | None = None,
    *,
    ip: str | None = None,
) -> None:
    """Add an event to the caller's transaction, so it lands exactly when the change does."""
    db.add(AuditEvent(site_id=site_id, kind=kind, actor=actor, detail=dict(detail or {}), ip=ip))


# A buffered row's repeat key and its last repeat's time: removed before the row is written.
_SAME_AS = "same_as"
_LAST_AT = "last_at"


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


_INSERT_EVENT = insert(Base.metadata.tables[AuditEvent.__tablename__])


@dataclass(frozen=True)
class Event:
    """An event to record; `record_many` writes a batch of them in one statement."""

    site_id: str | None
    kind: str
    actor: str
    detail: Mapping[str, Any]


def record_many(db: Session, events: Sequence[Event]) -> None:
    """`record` for many events at once (the refresher's batches), in the caller's
    transaction."""
    if events:
        now = utcnow()
        db.execute(
            insert(AuditEvent),
            [
                {
                    "site_id": event.site_id,
                    "kind": event.kind,
                    "actor": event.actor,
                    "detail": dict(event.detail),
                    "ip": None,
                    "created_at": now,
                }
                for event in events
            ],
        )


class AuditBuffer:
    """Audit events waiting to be written in a batch, so that recording one costs a request
    nothing but an append. Bounded: if the database stays away, the oldest are dropped (and
    the drop is logged) rather than the process's memory."""

    batch_size = 200
    max_delay_seconds = 1.0
    capacity = 50_000

    def __init__(self) -> None:
        self._events: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._oldest_at: float | None = None
        # Rows still waiting that later repeats are counted into (`add(..., same_as=)`).
        self._repeatable: dict[Hashable, dict[str, Any]] = {}
        self.dropped = 0
        # Called when the buffer stops being empty and when a batch is full: the delivery
        # worker sets it to its wake-up.
        self.wakeup: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._events)

    def add(
        self,
        site_id: str,
        kind: str,
        actor: str,
        detail: Mapping[str, Any],
        *,
        ip: str | None,
        at: datetime,
        same_as: Hashable | None = None,
    ) -> None:
        """`same_as`: events with this key are repeats of one another. While the first waits
        in the buffer (up to `max_delay_seconds`), a repeat adds one to its `detail["count"]`
        and moves its `detail["last_at"]`, instead of becoming a row of its own: a function
        reading a thousand times a second writes one row a second, and every read is still
        counted."""
        if same_as is not None and self.repeat(same_as, at):
            return
        with self._lock:
            fields = dict(detail)
            row: dict[str, Any] = {
                "site_id": site_id,
                "kind": kind,
                "actor": actor,
                "detail": fields,
                "ip": ip,
                "created_at": at,
            }
            if same_as is not None:
                fields["count"] = 1
                row[_SAME_AS] = same_as
                self._repeatable[same_as] = row
            if len(self._events) >= self.capacity:
                self._forget(self._events.popleft())
                self.dropped += 1
            self._events.append(row)
            if self._oldest_at is None:
                self._oldest_at = time.monotonic()
            count = len(self._events)
        wakeup = self.wakeup
        if wakeup is not None and (count == 1 or count >= self.batch_size):
            wakeup()

    def repeat(self, same_as: Hashable, at: datetime) -> bool:
        """Count a repeat of the waiting event `same_as`, if there is one (see `add`)."""
        with self._lock:
            waiting = self._repeatable.get(same_as)
            if waiting is None:
                return False
            waiting["detail"]["count"] += 1
            waiting[_LAST_AT] = at
            return True

    def _forget(self, row: dict[str, Any]) -> None:
        """The row leaves the buffer (under the lock): no more repeats are counted into it."""
        same_as = row.pop(_SAME_AS, None)
        if same_as is not None and self._repeatable.get(same_as) is row:
            del self._repeatable[same_as]
        last_at = row.pop(_LAST_AT, None)
        if last_at is not None:
            row["detail"]["last_at"] = _iso(last_at)

    def due_in(self) -> float | None:
        """Seconds until the buffer should be written: None when empty, 0 when due."""
        with self._lock:
            if not self._events or self._oldest_at is None:
                return None
            if len(self._events) >= self.batch_size:
                return 0.0
            return max(0.0, self._oldest_at + self.max_delay_seconds - time.monotonic())

    def flush(self, sessions: sessionmaker[Session]) -> int:
        """Write every buffered event, in order, in batches; returns how many were written.
        Events a failed write could not store go back to the front of the buffer."""
        written = 0
        with self._flushing:
            while True:
                with self._lock:
                    batch = [
                        self._events.popleft()
                        for _ in range(min(self.batch_size, len(self._events)))
                    ]
                    for row in batch:
                        self._forget(row)
                    self._oldest_at = time.monotonic() if self._events else None
                if not batch:
                    break
                try:
                    with transaction(sessions) as db:
                        # Core, not the ORM's bulk insert: half the cost per row.
                        db.connection().execute(_INSERT_EVENT, batch)
                except Exception:
                    with self._lock:
                        self._events.extendleft(reversed(batch))
                        if self._oldest_at is None:
                            self._oldest_at = time.monotonic()
                    raise
                written += len(batch)
        if self.dropped:
            log.warning("dropped %d audit events: the database was unavailable", self.dropped)
            self.dropped = 0
        return written


def record_secrets_read(
    broker: Broker,
    caller: SiteCaller,
    providers: Sequence[str],
    *,
    ip: str | None,
    visitor_id: str = "",
    at: datetime | None = None,
) -> None:
    """Note a read of `/api/v1/secrets`: which providers, by which token id (never the
    token), from where, and whose (a visitor's, or the site owner's own). Repeats within
    the buffer's second are counted in one event (`detail["count"]`, `detail["last_at"]`):
    the same token reading the same providers from the same address."""
    at = at or broker.clock()
    same_as = ("secrets.read", caller.token_id, visitor_id, tuple(providers), ip)
    if broker.audit_buffer.repeat(same_as, at):
        return
    detail: dict[str, Any] = {
        "providers": list(providers),
        "token_id": caller.token_id,
        "token_kind": caller.kind,
    }
    if visitor_id:
        detail["visitor_id"] = visitor_id
    broker.audit_buffer.add(
        caller.site_id,
        "secrets.read",
        f"{caller.kind} token",
        detail,
        ip=ip,
        at=at,
        same_as=same_as,
    )


@dataclass(frozen=True)
class EventView:
    id: int
    kind: str
    actor: str
    detail: Mapping[str, Any]
    ip: str | None
    created_at: datetime


@dataclass(frozen=True)
class EventPage:
    """Newest first; `next_before` is the `before` of the next (older) page, if any."""

    events: list[EventView]
    next_before: int | None


def list_events(
    broker: Broker,
    member: MemberView,
    site_name: str,
    limit: int = DEFAULT_PAGE,
    before: int | None = None,
) -> EventPage:
    """A page of a site's audit log, newest first, older pages through `before`."""
    # sites imports this module to record its changes.
    from apiauth.domain.sites import find_site

    limit = max(1, min(limit, MAX_PAGE))
    broker.audit_buffer.flush(broker.sessions)
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        query = select(AuditEvent).where(AuditEvent.site_id == site.id)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        rows = list(db.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    events = [
        EventView(row.id, row.kind, row.actor, dict(row.detail), row.ip, row.created_at)
        for row in rows[:limit]
    ]
    next_before = events[-1].id if len(rows) > limit else None
    return EventPage(events, next_before)
