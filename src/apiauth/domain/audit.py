"""The audit log: who did what to a site's API Authentication. Never a token or secret.

Changes are recorded in the transaction that makes them (`record`). Reads of
`/api/v1/secrets` are recorded off the read's critical path: into the broker's in-memory
`AuditBuffer`, which the delivery worker writes in batches (at most about a second late) and
at shutdown, and which `list_events` writes out before reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Text, cast, insert, select
from sqlalchemy.orm import Session, sessionmaker

from apiauth.domain.backoff import Backoff, Failures
from apiauth.store.db import database_unavailable, transaction
from apiauth.store.models import AuditEvent, Base, utcnow

if TYPE_CHECKING:
    from apiauth.domain.broker import Broker
    from apiauth.domain.members import MemberView
    from apiauth.domain.sites import SiteCaller

log = logging.getLogger(__name__)

MAX_PAGE = 200
# Event ids are 64-bit integers on both databases: a larger `before` names no event.
MAX_EVENT_ID = 2**63 - 1
DEFAULT_PAGE = 50
# After the database failed a write of the buffer: the first retry after a second, doubling
# up to a minute while it stays away.
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


# `audit_events.actor` (VARCHAR(255), enforced on PostgreSQL). Actors derived from what a
# caller chose (`visitor <id>`, 263 characters for the longest visitor id) are cut to fit,
# ending in a hash of the whole, so that two long actors stay apart.
MAX_ACTOR_LENGTH = 255
_ACTOR_HASH = 12


def bounded_actor(actor: str) -> str:
    """`actor` as it fits its column (see `MAX_ACTOR_LENGTH`)."""
    if len(actor) <= MAX_ACTOR_LENGTH:
        return actor
    digest = hashlib.sha256(actor.encode("utf-8", "replace")).hexdigest()[:_ACTOR_HASH]
    return f"{actor[: MAX_ACTOR_LENGTH - _ACTOR_HASH - 1]}~{digest}"


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
    db.add(
        AuditEvent(
            site_id=site_id,
            kind=kind,
            actor=bounded_actor(actor),
            detail=dict(detail or {}),
            ip=ip,
        )
    )


# A buffered row's repeat key and its last repeat's time: removed before the row is written.
_SAME_AS = "same_as"
_LAST_AT = "last_at"
# The variants already counted into a buffered row, and how a new one is merged into it.
_SEEN = "seen"
_MERGE = "merge"
# A row counts this many distinct variants, then merges the rest without remembering them.
MAX_SEEN_VARIANTS = 64

Merge = Callable[[dict[str, Any], Hashable], None]


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


_INSERT_EVENT = insert(Base.metadata.tables[AuditEvent.__tablename__])


def record_in(db: Connection, events: Sequence[tuple[Event, str | None]]) -> None:
    """`record_many` in a Core transaction (`Engine.begin()`), each event with the client
    address it came from, for the writes that load no ORM objects
    (`function_tokens.mint_function_token`)."""
    if events:
        now = utcnow()
        db.execute(
            _INSERT_EVENT,
            [
                {
                    "site_id": event.site_id,
                    "kind": event.kind,
                    "actor": bounded_actor(event.actor),
                    "detail": dict(event.detail),
                    "ip": ip,
                    "created_at": now,
                }
                for event, ip in events
            ],
        )


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
                    "actor": bounded_actor(event.actor),
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
        # Counters, never reset (`apiauth_audit_dropped_events_total`,
        # `apiauth_audit_rows_set_aside_total`): dropped when full, set aside as unstorable.
        self.dropped = 0
        self._dropped_logged = 0
        self.set_aside = 0
        # After a write failed because the database was away: not again before `_retry_at`.
        self._failures = Failures(Backoff(RETRY_BASE_SECONDS, RETRY_MAX_SECONDS))
        self._retry_at: float | None = None
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
        variant: Hashable = None,
        merge: Merge | None = None,
    ) -> None:
        """`same_as`: events with this key are repeats of one another. While the first waits
        in the buffer (up to `max_delay_seconds`), a repeat adds one to its `detail["count"]`
        and moves its `detail["last_at"]`, instead of becoming a row of its own: a function
        reading a thousand times a second writes one row a second, and every read is still
        counted.

        The key holds only what a caller cannot vary at will (who, from where); what it can
        (a query parameter, an id) is the `variant`: a repeat of another variant is merged
        into the waiting row by `merge` (bounded), so that varying it writes no more rows."""
        if same_as is not None and self.repeat(same_as, at, variant):
            return
        with self._lock:
            fields = dict(detail)
            row: dict[str, Any] = {
                "site_id": site_id,
                "kind": kind,
                "actor": bounded_actor(actor),
                "detail": fields,
                "ip": ip,
                "created_at": at,
            }
            if same_as is not None:
                fields["count"] = 1
                row[_SAME_AS] = same_as
                row[_SEEN] = {variant}
                row[_MERGE] = merge
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

    def repeat(self, same_as: Hashable, at: datetime, variant: Hashable = None) -> bool:
        """Count a repeat of the waiting event `same_as`, if there is one (see `add`)."""
        with self._lock:
            waiting = self._repeatable.get(same_as)
            if waiting is None:
                return False
            waiting["detail"]["count"] += 1
            waiting[_LAST_AT] = at
            seen: set[Hashable] = waiting[_SEEN]
            if variant not in seen:
                if len(seen) < MAX_SEEN_VARIANTS:
                    seen.add(variant)
                merge: Merge | None = waiting[_MERGE]
                if merge is not None:
                    merge(waiting["detail"], variant)
            return True

    def _forget(self, row: dict[str, Any]) -> None:
        """The row leaves the buffer (under the lock): no more repeats are counted into it."""
        same_as = row.pop(_SAME_AS, None)
        if same_as is not None and self._repeatable.get(same_as) is row:
            del self._repeatable[same_as]
        row.pop(_SEEN, None)
        row.pop(_MERGE, None)
        last_at = row.pop(_LAST_AT, None)
        if last_at is not None:
            row["detail"]["last_at"] = _iso(last_at)

    def due_in(self) -> float | None:
        """Seconds until the buffer should be written: None when empty, 0 when due. After a
        write failed because the database was away, not before its backoff has passed."""
        with self._lock:
            if not self._events or self._oldest_at is None:
                return None
            now = time.monotonic()
            if self._retry_at is not None and now < self._retry_at:
                return self._retry_at - now
            if len(self._events) >= self.batch_size:
                return 0.0
            return max(0.0, self._oldest_at + self.max_delay_seconds - now)

    def flush(self, sessions: sessionmaker[Session]) -> int:
        """Write every buffered event, in order, in batches; returns how many were written.

        A batch the database refuses is written again row by row: a row it cannot store (its
        site deleted meanwhile, a value the column refuses) is set aside - logged without its
        content, counted in `set_aside` - and every other row is stored, so that one caller's
        odd event never holds back the others. When the database itself is away, the batch
        goes back to the front of the buffer and the error is raised; `due_in` then waits a
        backoff that grows while the failures go on."""
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
                    written += self._write(sessions, batch)
                except Exception:
                    with self._lock:
                        self._retry_at = time.monotonic() + self._failures.failed()
                    raise
                with self._lock:
                    self._failures.succeeded()
                    self._retry_at = None
        if self.dropped > self._dropped_logged:
            log.warning(
                "dropped %d audit events: the database was unavailable",
                self.dropped - self._dropped_logged,
            )
            self._dropped_logged = self.dropped
        return written

    def _write(self, sessions: sessionmaker[Session], batch: list[dict[str, Any]]) -> int:
        """Store `batch`; returns how many rows were stored (the others were set aside)."""
        try:
            with transaction(sessions) as db:
                # Core, not the ORM's bulk insert: half the cost per row.
                db.connection().execute(_INSERT_EVENT, batch)
            return len(batch)
        except Exception as exc:
            if database_unavailable(exc):
                self._put_back(batch)
                raise
        stored = 0
        for index, row in enumerate(batch):
            try:
                with transaction(sessions) as db:
                    db.connection().execute(_INSERT_EVENT, [row])
            except Exception as exc:
                if database_unavailable(exc):
                    self._put_back(batch[index:])
                    raise
                self._set_aside(row, exc)
            else:
                stored += 1
        return stored

    def _put_back(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._events.extendleft(reversed(rows))
            if self._oldest_at is None:
                self._oldest_at = time.monotonic()

    def _set_aside(self, row: dict[str, Any], exc: BaseException) -> None:
        # Only the kind, the site and the error's class: the database's message quotes
        # the row's values, which came from a caller.
        self.set_aside += 1
        log.error(
            "set aside an audit event the database cannot store (%s of site %s: %s)",
            row["kind"],
            row["site_id"],
            type(exc).__name__,
        )


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
    token), from where, and whose (a visitor's, or the site owner's own).

    Reads within the buffer's second by the same token from the same address are one event
    (`detail["count"]`, `detail["last_at"]`). Which visitor was read (`?visitor_id=`, any
    string a site token likes) and so which providers answered are the caller's to vary:
    reads of other visitors are merged into that event (`_merge_secrets_read`) instead of
    each writing a row of its own."""
    at = at or broker.clock()
    same_as = ("secrets.read", caller.token_id, ip)
    variant = (visitor_id, tuple(providers))
    if broker.runtime.audit_buffer.repeat(same_as, at, variant):
        return
    detail: dict[str, Any] = {
        "providers": list(providers),
        "token_id": caller.token_id,
        "token_kind": caller.kind,
    }
    if visitor_id:
        detail["visitor_id"] = visitor_id
    broker.runtime.audit_buffer.add(
        caller.site_id,
        "secrets.read",
        f"{caller.kind} token",
        detail,
        ip=ip,
        at=at,
        same_as=same_as,
        variant=variant,
        merge=_merge_secrets_read,
    )


# A merged secrets read names at most this many other visitors; the rest are counted.
MAX_OTHER_VISITORS = 10


def _read_variant(variant: Hashable) -> tuple[str, tuple[str, ...]]:
    """A secrets read's variant, as `record_secrets_read` made it."""
    assert isinstance(variant, tuple)
    return variant[0], variant[1]


def _merge_secrets_read(detail: dict[str, Any], variant: Hashable) -> None:
    """A read of another visitor (or of the site owner's own connections) merged into the
    waiting `secrets.read` event: its providers join `providers`, its visitor
    `other_visitor_ids` (at most `MAX_OTHER_VISITORS`, then `other_visitor_reads_omitted`
    counts), an owner's read `site_owner_read`."""
    visitor_id, providers = _read_variant(variant)
    listed: list[str] = detail["providers"]
    listed.extend(provider for provider in providers if provider not in listed)
    if visitor_id == detail.get("visitor_id", ""):
        return
    if not visitor_id:
        detail["site_owner_read"] = True
        return
    others: list[str] = detail.setdefault("other_visitor_ids", [])
    if visitor_id in others:
        return
    if len(others) < MAX_OTHER_VISITORS:
        others.append(visitor_id)
    else:
        detail["other_visitor_reads_omitted"] = detail.get("other_visitor_reads_omitted", 0) + 1


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
    """A page of a site's audit log, newest first, older pages through `before`.

    Every stored row renders, whatever it holds (a row written by hand or by an older
    version, a `detail` that is not a JSON object, text the database kept but JSON cannot
    carry): the log of one site never fails because of what one caller sent."""
    # sites imports this module to record its changes.
    from apiauth.domain.sites import find_site

    limit = max(1, min(limit, MAX_PAGE))
    try:
        broker.runtime.audit_buffer.flush(broker.sessions)
    except Exception as exc:  # (the buffer keeps them; what is stored is still shown)
        log.warning("could not write buffered audit events first (%s)", type(exc).__name__)
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        query = select(
            AuditEvent.id,
            AuditEvent.kind,
            AuditEvent.actor,
            # As text, parsed here: a row whose detail does not parse is shown, not raised.
            cast(AuditEvent.detail, Text),
            AuditEvent.ip,
            AuditEvent.created_at,
        ).where(AuditEvent.site_id == site.id)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        rows = db.execute(query.order_by(AuditEvent.id.desc()).limit(limit + 1)).all()
    events = [
        EventView(
            row[0],
            _printable(row[1]),
            _printable(row[2]),
            _readable_detail(row[3]),
            None if row[4] is None else _printable(row[4]),
            row[5] or _EPOCH,
        )
        for row in rows[:limit]
    ]
    next_before = events[-1].id if len(rows) > limit else None
    return EventPage(events, next_before)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _printable(value: object) -> str:
    """Text that encodes as UTF-8 (a lone surrogate, which JSON's escapes can name, does
    not)."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def _readable(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_printable(key): _readable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_readable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity parse, but are not JSON
    return value


def _readable_detail(stored: str | None) -> dict[str, Any]:
    """A stored `detail` as a JSON object: a value that is not one is shown under `value`,
    text that is not JSON under `unreadable` (its length only)."""
    if stored is None:
        return {}
    try:
        readable = _readable(json.loads(stored))
    except ValueError:
        return {"unreadable": f"{len(stored)} characters that are not JSON"}
    except RecursionError:  # (both databases keep JSON nested thousands deep)
        return {"unreadable": f"{len(stored)} characters of JSON nested too deeply"}
    return readable if isinstance(readable, dict) else {"value": readable}
