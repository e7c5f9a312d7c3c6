"""Refreshing one connection's token, safely, from anywhere: a reader of `/api/v1/secrets`,
the background refresher, or a person pressing "refresh".

The rules (SPEC §3), and how they are kept:
- At most one refresh per connection at a time, across processes and replicas: a refresh is
  a *lease* written to the row (`claimed_by`, `claim_expires_at`) in a short transaction
  before the provider is called. Whoever fails to take the lease waits for the holder's
  result and returns the fresh token. Inside one process, concurrent callers share one
  refresh (`Broker.inflight`). A lease whose holder died expires and may be taken over.
- A rotating (single-use) refresh token is never sent twice: the new refresh token is stored
  in the same transaction that releases the lease, and a lease is only taken on a row whose
  token still needs refreshing.
- Transient failures (timeouts, connection errors, 5xx, 429) keep the connection and its
  still-valid token; the next attempt waits an exponential backoff with jitter (or what
  `Retry-After` asked), however many readers arrive in between: no refresh storms.
- `invalid_grant` re-reads the row first (another process may have refreshed meanwhile);
  only if nothing changed is the connection marked `needs_reauth`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, update

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.oauth_apps import client_for
from apiauth.domain.token_store import (
    CONNECTED,
    NEEDS_REAUTH,
    REFRESHING,
    lock_connection,
    open_token,
    put_token,
)
from apiauth.errors import InvalidGrant, NotFound, ProviderError, TokenRejected
from apiauth.oauth import protocol
from apiauth.oauth.token_set import TokenSet
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 900.0
WAIT_POLL_SECONDS = 0.1


class ConnectionState(Protocol):
    """What a `Due` rule reads of a connection: an ORM row, or a row of just these columns
    (the secrets read path loads no ORM objects)."""

    @property
    def status(self) -> str: ...

    @property
    def refresh_due_at(self) -> datetime | None: ...


Due = Callable[[ConnectionState, TokenSet | None, datetime], bool]


@dataclass(frozen=True)
class Refreshed:
    """A connection row as it stands after a refresh (or a decision not to refresh)."""

    connection: Connection
    token: TokenSet | None


@dataclass(frozen=True)
class Lease:
    connection_id: str
    version: int


def backoff_seconds(failures: int, retry_after: float | None = None) -> float:
    """5 s, 10 s, 20 s … up to 15 min, each with up to 20 % jitter; never less than the
    provider's `Retry-After`."""
    delay: float = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** max(0, failures - 1))
    delay *= 1 + random.uniform(0, 0.2)  # noqa: S311
    return max(delay, retry_after or 0.0)


def is_due_for_reader(broker: Broker) -> Due:
    """A reader refreshes a token about to expire, unless a failing connection's backoff
    says not yet (then it is handed out while valid, and as not logged in after)."""
    margin = timedelta(seconds=broker.settings.refresh_margin_seconds)

    def due(connection: ConnectionState, token: TokenSet | None, now: datetime) -> bool:
        return (
            token is not None
            and token.refresh_token is not None
            and connection.status != NEEDS_REAUTH
            and token.expires_within(margin, now)
            and connection.refresh_due_at is not None
            and connection.refresh_due_at <= now
        )

    return due


def is_refreshable(connection: ConnectionState, token: TokenSet | None, now: datetime) -> bool:
    """A person asked: refresh whenever there is a refresh token, backoff or not."""
    return token is not None and token.refresh_token is not None


def refresh_connection(
    broker: Broker, connection_id: str, due: Due, *, check_first: bool = True
) -> Refreshed:
    """Refresh the connection if `due` says so, sharing the work with every concurrent caller
    in this process and waiting for any other process that holds the lease. `check_first`:
    a token without an expiry is only refreshed when the provider refuses it."""
    with broker.inflight_lock:
        shared = broker.inflight.get(connection_id)
        leader = shared is None
        if shared is None:
            shared = Future()
            broker.inflight[connection_id] = shared
    if not leader:
        result: Refreshed = shared.result(timeout=_wait_limit(broker))
        return result
    try:
        outcome = _refresh_or_wait(broker, connection_id, due, check_first)
    except BaseException as exc:
        shared.set_exception(exc)
        raise
    finally:
        with broker.inflight_lock:
            broker.inflight.pop(connection_id, None)
    shared.set_result(outcome)
    return outcome


def _wait_limit(broker: Broker) -> float:
    return broker.settings.refresh_lease_seconds + 2 * broker.settings.http_timeout_seconds


def _refresh_or_wait(broker: Broker, connection_id: str, due: Due, check_first: bool) -> Refreshed:
    deadline = time.monotonic() + _wait_limit(broker)
    while True:
        lease, current = _take_lease(broker, connection_id, due)
        if lease is not None:
            return perform_refresh(broker, lease, check_first=check_first)
        if current is not None:
            return current
        # Another process holds the lease: wait for its result, or for the lease to lapse.
        if time.monotonic() > deadline:
            return _read(broker, connection_id)
        time.sleep(WAIT_POLL_SECONDS)


def _read(broker: Broker, connection_id: str) -> Refreshed:
    with broker.sessions() as db:
        connection = db.get(Connection, connection_id)
        if connection is None:
            raise NotFound("the connection was deleted")
        return Refreshed(connection, open_token(broker, connection))


def _lease_free(connection: Connection, now: datetime) -> bool:
    return connection.claim_expires_at is None or connection.claim_expires_at <= now


def _take_lease(
    broker: Broker, connection_id: str, due: Due
) -> tuple[Lease | None, Refreshed | None]:
    """(lease, None) when this process now holds the refresh; (None, row) when no refresh is
    needed; (None, None) when another process holds it."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        connection = lock_connection(db, select(Connection).where(Connection.id == connection_id))
        if connection is None:
            raise NotFound("the connection was deleted")
        token = open_token(broker, connection)
        if not due(connection, token, now):
            return None, Refreshed(connection, token)
        if not _lease_free(connection, now):
            return None, None
        return _claim(db, broker, connection.id, connection.version, now), None


def _claim(
    db: Any, broker: Broker, connection_id: str, version: int, now: datetime
) -> Lease | None:
    """Compare and set: the lease is ours only if nobody changed the row or took the lease
    since we read it (SQLite has no row locks; this holds on both databases)."""
    taken = db.execute(
        update(Connection)
        .where(
            Connection.id == connection_id,
            Connection.version == version,
            (Connection.claim_expires_at.is_(None)) | (Connection.claim_expires_at <= now),
        )
        .values(
            claimed_by=broker.worker_id,
            claim_expires_at=now + timedelta(seconds=broker.settings.refresh_lease_seconds),
            status=REFRESHING,
        )
        .execution_options(synchronize_session=False)
    )
    return Lease(connection_id, version) if taken.rowcount == 1 else None


def claim_due_connections(broker: Broker, limit: int) -> list[Lease]:
    """The refresher's batch: due rows whose lease is free, locked with SKIP LOCKED on
    PostgreSQL so that replicas take disjoint batches, leased in one short transaction."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        query = (
            select(Connection.id, Connection.version)
            .where(
                Connection.refresh_due_at <= now,
                Connection.status != NEEDS_REAUTH,
                (Connection.claim_expires_at.is_(None)) | (Connection.claim_expires_at <= now),
            )
            .order_by(Connection.refresh_due_at)
            .limit(limit)
        )
        if db.get_bind().dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        leases = [_claim(db, broker, row.id, row.version, now) for row in db.execute(query)]
        return [lease for lease in leases if lease is not None]


def next_due_time(broker: Broker) -> datetime | None:
    """When the refresher next has work, as far as the database knows: the soonest due row
    whose lease is free, or the soonest lease that lapses (its holder may have died)."""
    now = broker.clock()
    with broker.sessions() as db:
        soonest_due: datetime | None = db.scalar(
            select(func.min(Connection.refresh_due_at)).where(
                Connection.status != NEEDS_REAUTH,
                Connection.refresh_due_at.is_not(None),
                (Connection.claim_expires_at.is_(None)) | (Connection.claim_expires_at <= now),
            )
        )
        lapsing_lease: datetime | None = db.scalar(
            select(func.min(Connection.claim_expires_at)).where(Connection.claim_expires_at > now)
        )
    times = [t for t in (soonest_due, lapsing_lease) if t is not None]
    return min(times) if times else None


def perform_refresh(broker: Broker, lease: Lease, *, check_first: bool = True) -> Refreshed:
    """Call the provider for a leased connection and store the outcome, releasing the lease."""
    with broker.sessions() as db:
        connection = db.get(Connection, lease.connection_id)
        if connection is None:
            raise NotFound("the connection was deleted")
        site = db.get(Site, connection.site_id)
        assert site is not None
        token = open_token(broker, connection)
    provider = broker.catalog.get(connection.provider)
    now = broker.clock()
    try:
        if provider is None:
            raise ProviderError(f"the provider {connection.provider!r} is no longer configured")
        if token is None or token.refresh_token is None:
            raise ProviderError("there is no refresh token: reconnect")
        client = client_for(broker, site.team_id, provider.name)
        if token.expires_at is None and check_first:
            # No expiry to go by (Salesforce): ask the provider whether the token still works,
            # and refresh only when it says no.
            try:
                protocol.fetch_account(broker.http, provider, token)
            except TokenRejected:
                pass
            else:
                return _store_checked(broker, lease, now)
        fresh = protocol.refresh_token_set(broker.http, provider, client, token, now=now)
    except InvalidGrant as exc:
        return _store_refused(broker, lease, exc)
    except ProviderError as exc:
        return _store_failure(broker, lease, exc)
    except Exception as exc:
        # Never leave a lease behind: anything unexpected is a failure with backoff.
        log.exception("refresh of connection %s failed unexpectedly", lease.connection_id)
        return _store_failure(broker, lease, ProviderError(f"unexpected {type(exc).__name__}"))
    return _store_fresh(broker, lease, fresh, now)


def _locked_own_row(db: Any, lease: Lease) -> Connection:
    connection = lock_connection(db, select(Connection).where(Connection.id == lease.connection_id))
    if connection is None:
        raise NotFound("the connection was deleted")
    return connection


def _release(connection: Connection) -> None:
    connection.claimed_by = None
    connection.claim_expires_at = None


def _event(db: Any, connection: Connection, kind: str, detail: dict[str, Any]) -> None:
    site = db.get(Site, connection.site_id)
    if site is None:
        return
    detail = {"provider": connection.provider, **detail}
    if connection.visitor_id:
        detail["visitor_id"] = connection.visitor_id
    audit.record(db, site.id, kind, "refresher", detail)
    deliveries.enqueue(db, site, kind, detail)


def _settle(
    broker: Broker,
    lease: Lease,
    change: Callable[[Any, Connection], None],
    fresh: TokenSet | None = None,
) -> Refreshed:
    """Store a refresh's outcome on the leased row and release the lease, in one transaction.

    If the row's version moved on, our lease lapsed and another process stored a newer token
    meanwhile: theirs is kept and `change` is not applied."""
    with transaction(broker.sessions) as db:
        connection = _locked_own_row(db, lease)
        if connection.version != lease.version:
            return Refreshed(connection, open_token(broker, connection))
        change(db, connection)
        _release(connection)
        token = fresh if fresh is not None else open_token(broker, connection)
    broker.refresh_wakeup.set()
    return Refreshed(connection, token)


def _store_fresh(broker: Broker, lease: Lease, fresh: TokenSet, now: datetime) -> Refreshed:
    def change(db: Any, connection: Connection) -> None:
        put_token(broker, connection, fresh, now)
        connection.granted_scopes = list(fresh.granted_scopes)
        connection.status = CONNECTED
        connection.last_refreshed_at = now
        connection.last_error = None
        connection.failure_count = 0
        connection.version += 1
        _event(db, connection, "connection.refreshed", {})

    return _settle(broker, lease, change, fresh)


def _store_checked(broker: Broker, lease: Lease, now: datetime) -> Refreshed:
    def change(db: Any, connection: Connection) -> None:
        connection.status = CONNECTED
        connection.last_error = None
        connection.failure_count = 0
        connection.refresh_due_at = now + timedelta(
            seconds=broker.settings.validate_interval_seconds
        )

    return _settle(broker, lease, change)


def _store_refused(broker: Broker, lease: Lease, exc: InvalidGrant) -> Refreshed:
    def change(db: Any, connection: Connection) -> None:
        # (When another process refreshed with the same refresh token first, `_settle` keeps
        # its good token and this is not applied.)
        connection.status = NEEDS_REAUTH
        connection.last_error = exc.message
        connection.refresh_due_at = None
        _event(db, connection, "connection.needs_reauth", {"error": exc.message})

    return _settle(broker, lease, change)


def _store_failure(broker: Broker, lease: Lease, exc: ProviderError) -> Refreshed:
    def change(db: Any, connection: Connection) -> None:
        connection.failure_count += 1
        delay = backoff_seconds(connection.failure_count, exc.retry_after)
        connection.status = CONNECTED
        connection.last_error = exc.message
        connection.refresh_due_at = broker.clock() + timedelta(seconds=delay)
        _event(
            db,
            connection,
            "connection.refresh_failed",
            {"error": exc.message, "retry_in_seconds": round(delay, 1)},
        )
        log.warning(
            "refresh of %s failed (%s); next attempt in %.0f s",
            connection.provider,
            exc.message,
            delay,
        )

    return _settle(broker, lease, change)


def release_stale_statuses(broker: Broker) -> None:
    """At start: rows left `refreshing` by a process that died show as connected again; their
    lapsed leases make them due for the refresher."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        db.execute(
            update(Connection)
            .where(Connection.status == REFRESHING, Connection.claim_expires_at <= now)
            .values(status=CONNECTED)
        )
