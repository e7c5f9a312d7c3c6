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

The background refresher works in batches: one transaction leases many connections
(`lease_due_connections`), their providers are called outside any transaction
(`attempt_refresh`), and one transaction stores every outcome (`store_outcomes`), each
write still guarded by its own lease's version. A single refresh goes the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, func, select, update

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.oauth_apps import TeamClients, team_clients
from apiauth.domain.token_store import (
    CONNECTED,
    NEEDS_REAUTH,
    REFRESHING,
    lock_connection,
    open_sealed_token,
    open_token,
    refresh_due_at,
    seal_token,
)
from apiauth.errors import (
    InvalidGrant,
    NotFound,
    ProviderError,
    ProviderNotConfigured,
    TokenRejected,
)
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
    expires_at: datetime


def _lease_expiry(broker: Broker, now: datetime) -> datetime:
    return now + timedelta(seconds=broker.settings.refresh_lease_seconds)


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
    expires_at = _lease_expiry(broker, now)
    taken = db.execute(
        update(Connection)
        .where(
            Connection.id == connection_id,
            Connection.version == version,
            (Connection.claim_expires_at.is_(None)) | (Connection.claim_expires_at <= now),
        )
        .values(claimed_by=broker.worker_id, claim_expires_at=expires_at, status=REFRESHING)
        .execution_options(synchronize_session=False)
    )
    return Lease(connection_id, version, expires_at) if taken.rowcount == 1 else None


def _due_and_free(now: datetime) -> Any:
    return (
        (Connection.refresh_due_at <= now)
        & (Connection.status != NEEDS_REAUTH)
        & ((Connection.claim_expires_at.is_(None)) | (Connection.claim_expires_at <= now))
    )


@dataclass(frozen=True)
class LeasedConnection:
    """A leased connection with what refreshing it needs, read when the lease was taken."""

    lease: Lease
    site_id: str
    team_id: str
    visitor_id: str
    provider: str
    token_enc: bytes | None
    failure_count: int

    @classmethod
    def of(cls, row: Any, lease: Lease, team_id: str) -> LeasedConnection:
        """From a row of `_LEASED_COLUMNS`."""
        return cls(
            lease,
            row.site_id,
            team_id,
            row.visitor_id,
            row.provider,
            row.token_enc,
            row.failure_count,
        )


@dataclass(frozen=True)
class SiteHooks:
    """What a refresh event needs of its site: the audit log's key and the hook URLs."""

    id: str
    name: str
    deploy_hook_url: str | None
    webhook_url: str | None


@dataclass(frozen=True)
class Batch:
    """The refresher's batch: leased connections, their sites and their teams' OAuth apps."""

    leased: list[LeasedConnection]
    sites: Mapping[str, SiteHooks]
    clients: TeamClients


_LEASED_COLUMNS = (
    Connection.id,
    Connection.version,
    Connection.site_id,
    Connection.visitor_id,
    Connection.provider,
    Connection.token_enc,
    Connection.failure_count,
)


def lease_due_connections(broker: Broker, limit: int) -> Batch:
    """Lease up to `limit` due connections in one short transaction: one UPDATE that is the
    compare-and-set of every lease (its WHERE checks again that the row is due and its lease
    free, so a row another process leased or refreshed meanwhile is not taken), and the
    reads their refreshes need. On PostgreSQL the candidates are locked with SKIP LOCKED so
    that replicas take disjoint batches."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        candidates = (
            select(Connection.id)
            .where(_due_and_free(now))
            .order_by(Connection.refresh_due_at)
            .limit(limit)
        )
        if db.get_bind().dialect.name != "sqlite":
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list(db.scalars(candidates))
        if not ids:
            return Batch([], {}, team_clients(broker, db, ()))
        expires_at = _lease_expiry(broker, now)
        rows = db.connection().execute(
            update(Connection)
            .where(Connection.id.in_(ids), _due_and_free(now))
            .values(claimed_by=broker.worker_id, claim_expires_at=expires_at, status=REFRESHING)
            .returning(*_LEASED_COLUMNS)
        )
        leased_rows = list(rows)
        site_rows = db.execute(
            select(Site.id, Site.team_id, Site.name, Site.deploy_hook_url, Site.webhook_url).where(
                Site.id.in_({row.site_id for row in leased_rows})
            )
        ).all()
        teams = {row.id: row.team_id for row in site_rows}
        sites = {
            row.id: SiteHooks(row.id, row.name, row.deploy_hook_url, row.webhook_url)
            for row in site_rows
        }
        clients = team_clients(broker, db, set(teams.values()))
    order = {connection_id: index for index, connection_id in enumerate(ids)}
    leased = [
        LeasedConnection.of(row, Lease(row.id, row.version, expires_at), teams.get(row.site_id, ""))
        for row in sorted(leased_rows, key=lambda row: order[row.id])
    ]
    return Batch(leased, sites, clients)


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


# --- calling the provider and storing the outcome -------------------------------------------

FRESH = "fresh"
CHECKED = "checked"
REFUSED = "refused"
FAILED = "failed"
UNTRIED = "untried"


Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What a refresh attempt found, to be stored on its leased row: a fresh token set, a
    token found still good (`CHECKED`), an `invalid_grant` (`REFUSED`), a failure, or a
    lease given back without calling the provider (`UNTRIED`)."""

    leased: LeasedConnection
    kind: str
    at: datetime
    token: TokenSet | None = None
    error: ProviderError | None = None


def attempt_refresh(
    broker: Broker, leased: LeasedConnection, clients: TeamClients, *, check_first: bool = True
) -> Outcome:
    """Call the provider for a leased connection, outside any transaction. Never raises:
    whatever goes wrong is an outcome, so that no lease is left behind."""
    provider = broker.catalog.get(leased.provider)
    now = broker.clock()
    if now + _provider_time(broker) >= leased.lease.expires_at:
        # The lease waited in a queue (a slow provider) and could lapse before the provider
        # answers; another process could then send the same refresh token. Give it back.
        return untried(leased, now)
    try:
        token = open_sealed_token(
            broker, leased.lease.connection_id, leased.token_enc, remember=False
        )
        if provider is None:
            raise ProviderError(f"the provider {leased.provider!r} is no longer configured")
        if token is None or token.refresh_token is None:
            raise ProviderError("there is no refresh token: reconnect")
        try:
            client = clients.get(leased.team_id, provider.name)
        except ProviderNotConfigured as exc:
            raise ProviderError(exc.message) from None
        if token.expires_at is None and check_first:
            # No expiry to go by (Salesforce): ask the provider whether the token still works,
            # and refresh only when it says no.
            try:
                protocol.fetch_account(broker.http, provider, token)
            except TokenRejected:
                pass
            else:
                return Outcome(leased, CHECKED, now)
        fresh = protocol.refresh_token_set(broker.http, provider, client, token, now=now)
    except InvalidGrant as exc:
        return Outcome(leased, REFUSED, now, error=exc)
    except ProviderError as exc:
        return Outcome(leased, FAILED, now, error=exc)
    except Exception as exc:
        log.exception("refresh of connection %s failed unexpectedly", leased.lease.connection_id)
        return Outcome(leased, FAILED, now, error=ProviderError(f"unexpected {type(exc).__name__}"))
    return Outcome(leased, FRESH, now, token=fresh)


def _provider_time(broker: Broker) -> timedelta:
    """How much of its lease a refresh must have left to call the provider: the longest a
    who-am-I check and a refresh can take, or half a lease if leases are shorter (a lease
    just taken is always used)."""
    settings = broker.settings
    return timedelta(
        seconds=min(2 * settings.http_timeout_seconds, settings.refresh_lease_seconds / 2)
    )


def untried(leased: LeasedConnection, now: datetime) -> Outcome:
    """The outcome of a lease given back before its provider was called (a stopping
    refresher): nothing changes but the lease, and the connection stays due."""
    return Outcome(leased, UNTRIED, now)


def perform_refresh(broker: Broker, lease: Lease, *, check_first: bool = True) -> Refreshed:
    """Call the provider for a leased connection and store the outcome, releasing the lease."""
    with broker.sessions() as db:
        row = db.execute(
            select(
                *_LEASED_COLUMNS, Site.team_id, Site.name, Site.deploy_hook_url, Site.webhook_url
            )
            .join(Site, Site.id == Connection.site_id)
            .where(Connection.id == lease.connection_id)
        ).one_or_none()
        if row is None:
            raise NotFound("the connection was deleted")
        clients = team_clients(broker, db, [row.team_id])
    leased = LeasedConnection.of(row, lease, row.team_id)
    site = SiteHooks(row.site_id, row.name, row.deploy_hook_url, row.webhook_url)
    outcome = attempt_refresh(broker, leased, clients, check_first=check_first)
    stored = store_outcomes(broker, [outcome], {site.id: site})
    current = _read(broker, lease.connection_id)
    if stored and outcome.token is not None:
        return Refreshed(current.connection, outcome.token)
    return current


# Every outcome is written by an UPDATE guarded by the lease's version: if the row's version
# moved on, our lease lapsed and another process stored a newer token meanwhile (or the
# connection was made anew): theirs is kept and nothing of ours is written. This is also the
# re-read `invalid_grant` needs: a refused refresh token that another process had already
# used successfully does not mark the connection `needs_reauth`. Each write releases the lease.
def _guarded(**values: Any) -> Any:
    return (
        update(Connection)
        .where(Connection.id == bindparam("b_id"), Connection.version == bindparam("b_version"))
        .values(claimed_by=None, claim_expires_at=None, **values)
    )


_STORE_FRESH = _guarded(
    token_enc=bindparam("token_enc"),
    expires_at=bindparam("expires_at"),
    refresh_due_at=bindparam("refresh_due_at"),
    granted_scopes=bindparam("granted_scopes"),
    status=CONNECTED,
    last_refreshed_at=bindparam("now"),
    last_error=None,
    failure_count=0,
    # A new version: a lease taken on the old one can store nothing over this token.
    version=Connection.version + 1,
)
_STORE_CHECKED = _guarded(
    status=CONNECTED, last_error=None, failure_count=0, refresh_due_at=bindparam("refresh_due_at")
)
_STORE_REFUSED = _guarded(status=NEEDS_REAUTH, last_error=bindparam("error"), refresh_due_at=None)
_STORE_UNTRIED = _guarded(status=CONNECTED)
_STORE_FAILURE = _guarded(
    status=CONNECTED,
    last_error=bindparam("error"),
    refresh_due_at=bindparam("refresh_due_at"),
    failure_count=Connection.failure_count + 1,
)


def _write(broker: Broker, outcome: Outcome) -> tuple[Any, dict[str, Any], Event | None]:
    """The guarded statement, its parameters and the event (kind, detail) for an outcome."""
    leased = outcome.leased
    params: dict[str, Any] = {
        "b_id": leased.lease.connection_id,
        "b_version": leased.lease.version,
    }
    if outcome.kind == FRESH:
        fresh = outcome.token
        assert fresh is not None
        params.update(
            token_enc=seal_token(broker, leased.lease.connection_id, fresh),
            expires_at=fresh.expires_at,
            refresh_due_at=refresh_due_at(broker, fresh, outcome.at),
            granted_scopes=list(fresh.granted_scopes),
            now=outcome.at,
        )
        return _STORE_FRESH, params, ("connection.refreshed", {})
    if outcome.kind == UNTRIED:
        return _STORE_UNTRIED, params, None
    if outcome.kind == CHECKED:
        params["refresh_due_at"] = outcome.at + timedelta(
            seconds=broker.settings.validate_interval_seconds
        )
        return _STORE_CHECKED, params, None
    error = outcome.error
    assert error is not None
    params["error"] = error.message
    if outcome.kind == REFUSED:
        return _STORE_REFUSED, params, ("connection.needs_reauth", {"error": error.message})
    delay = backoff_seconds(leased.failure_count + 1, error.retry_after)
    params["refresh_due_at"] = broker.clock() + timedelta(seconds=delay)
    return (
        _STORE_FAILURE,
        params,
        (
            "connection.refresh_failed",
            {"error": error.message, "retry_in_seconds": round(delay, 1)},
        ),
    )


class _Overtaken(Exception):
    """A batch write matched fewer rows than it had outcomes: someone else wrote one."""


def store_outcomes(
    broker: Broker, outcomes: Sequence[Outcome], sites: Mapping[str, SiteHooks]
) -> list[Outcome]:
    """Store outcomes and release their leases in one transaction, with their audit events
    and deploy hook / webhook deliveries; returns the outcomes stored (see `_guarded`).
    A rotating refresh token is stored in the same transaction that releases its lease."""
    # Sealed before the transaction begins, so that it holds its locks for less time.
    writes = [(outcome, *_write(broker, outcome)) for outcome in outcomes]
    try:
        stored = _store(broker, writes, sites, together=True)
    except _Overtaken:
        stored = _store(broker, writes, sites, together=False)
    if stored:
        broker.refresh_wakeup.set()
    return stored


_Write = tuple[Outcome, Any, dict[str, Any], Event | None]


def _store(
    broker: Broker, writes: Sequence[_Write], sites: Mapping[str, SiteHooks], *, together: bool
) -> list[Outcome]:
    """`together`: the fresh tokens in one executemany, which must match a row each (else
    `_Overtaken` rolls it all back, and the caller writes them one by one to learn which
    were overtaken); the rarer outcomes always one by one."""
    stored: list[Outcome] = []
    audit_events: list[audit.Event] = []
    with transaction(broker.sessions) as db:
        connection = db.connection()
        batched: set[int] = set()
        if together and connection.dialect.supports_sane_multi_rowcount:
            batched = {index for index, write in enumerate(writes) if write[1] is _STORE_FRESH}
        if len(batched) > 1:
            params_list = [writes[index][2] for index in sorted(batched)]
            if connection.execute(_STORE_FRESH, params_list).rowcount != len(batched):
                raise _Overtaken
        else:
            batched = set()
        for index, (outcome, statement, params, event) in enumerate(writes):
            if index not in batched and connection.execute(statement, params).rowcount != 1:
                continue
            stored.append(outcome)
            leased = outcome.leased
            if outcome.kind == FAILED:
                assert outcome.error is not None
                log.warning(
                    "refresh of %s failed (%s); next attempt in %.0f s",
                    leased.provider,
                    outcome.error.message,
                    (params["refresh_due_at"] - broker.clock()).total_seconds(),
                )
            site = sites.get(leased.site_id)
            if event is None or site is None:
                continue
            kind, extra = event
            detail: dict[str, Any] = {"provider": leased.provider, **extra}
            if leased.visitor_id:
                detail["visitor_id"] = leased.visitor_id
            audit_events.append(audit.Event(site.id, kind, "refresher", detail))
            deliveries.enqueue(db, site, kind, detail)
        audit.record_many(db, audit_events)
    return stored


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
