"""Refreshing one connection's token, safely, from anywhere: a reader of `/api/v1/secrets`,
the background refresher, or a person pressing "refresh".

The rules (SPEC §3), and how they are kept:
- At most one refresh per connection at a time, across processes and replicas: a refresh is
  a *lease* written to the row (`claimed_by`, `claim_expires_at`) in a short transaction
  before the provider is called. Whoever fails to take the lease waits for the holder's
  result and returns the fresh token. Inside one process, concurrent callers share one
  refresh (`Runtime.inflight`). A lease whose holder died expires and may be taken over.
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
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import bindparam, func, select, update

from apiauth.domain import audit, deliveries
from apiauth.domain.backoff import Backoff
from apiauth.domain.broker import Broker
from apiauth.domain.oauth_apps import TeamClients, team_clients
from apiauth.domain.token_store import (
    CONNECTED,
    NEEDS_REAUTH,
    REFRESHING,
    SHORTEST_SANE_LIFETIME,
    expires_soon,
    is_short_lived,
    keep_alive_at,
    lock_connection,
    open_sealed_token,
    open_token,
    refresh_due_at,
    refresh_not_before,
    seal_token,
)
from apiauth.errors import (
    InvalidGrant,
    NotFound,
    ProviderError,
    ProviderNotConfigured,
)
from apiauth.oauth.modes import mode_of
from apiauth.oauth.token_set import TokenSet
from apiauth.store.db import transaction
from apiauth.store.dialect import claim_rows, counts_batched_writes, rows_matched
from apiauth.store.models import Connection, Site

log = logging.getLogger(__name__)

# 5 s, 10 s, 20 s ... up to 15 min between attempts of a failing connection.
BACKOFF = Backoff(base_seconds=5.0, max_seconds=900.0)
WAIT_POLL_SECONDS = 0.1
# A reader does not hand out a token this close to its expiry while someone else refreshes
# it: the caller could not use it before it expires (a function calls the provider after
# the read; on a busy machine that is more than a moment). It waits for the refreshed one.
USABLE_FOR = timedelta(seconds=2)


class ConnectionState(Protocol):
    """What a `Due` rule reads of a connection: an ORM row, or a row of just these columns
    (the secrets read path loads no ORM objects)."""

    @property
    def status(self) -> str: ...

    @property
    def refresh_due_at(self) -> datetime | None: ...

    @property
    def refresh_not_before(self) -> datetime | None: ...


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


def too_soon(connection: ConnectionState, now: datetime) -> bool:
    """The safety net: the connection was refreshed successfully too recently to be
    refreshed again (`token_store.refresh_not_before`), whatever its schedule says."""
    return connection.refresh_not_before is not None and now < connection.refresh_not_before


def is_due_for_reader(broker: Broker) -> Due:
    """A reader refreshes a token that expires and whose refresh time has come (the margin
    scales with the token's lifetime: `token_store.refresh_due_at`), unless a failing
    connection's backoff says not yet (then it is handed out while valid, and as not logged
    in after) or the connection was refreshed moments ago."""

    def due(connection: ConnectionState, token: TokenSet | None, now: datetime) -> bool:
        return (
            token is not None
            and mode_of(token).renewable(token)
            and token.expires_at is not None
            and connection.status != NEEDS_REAUTH
            and connection.refresh_due_at is not None
            and connection.refresh_due_at <= now
            and not too_soon(connection, now)
        )

    return due


S = TypeVar("S", bound=ConnectionState)


def refresh_if_due(
    broker: Broker, connection_id: str, state: S, token: TokenSet | None
) -> tuple[S | Connection, TokenSet | None]:
    """What a reader hands out (the secrets read, the proxy): the token as read, or, when
    `is_due_for_reader` says so, the connection and token after a refresh. A reader whose
    token is still valid never queues behind a refresh that someone else runs (another
    reader of this process, the refresher, another replica): it hands out the token it has.
    Only a reader whose token has expired, or expires within `USABLE_FOR`, waits for the
    refreshed one."""
    due = is_due_for_reader(broker)
    now = broker.clock()
    if not due(state, token, now):
        return state, token
    valid = (
        token is not None and token.expires_at is not None and token.expires_at > now + USABLE_FOR
    )
    refreshed = _refresh_connection(broker, connection_id, due, check_first=True, wait=not valid)
    if refreshed is None:
        return state, token
    return refreshed.connection, refreshed.token


def is_refreshable(connection: ConnectionState, token: TokenSet | None, now: datetime) -> bool:
    """A person asked: renew whenever the token's mode can (a refresh token, a key to
    re-verify), backoff or not."""
    return token is not None and mode_of(token).renewable(token)


def is_refreshable_after_rejection(
    connection: ConnectionState, token: TokenSet | None, now: datetime
) -> bool:
    """The provider refused the token (the proxy's 401): refresh whenever there is a refresh
    token, backoff or not, but not again moments after a successful refresh: a provider that
    refuses every token it issues is not asked for a new one on every call."""
    return is_refreshable(connection, token, now) and not too_soon(connection, now)


def refresh_connection(
    broker: Broker, connection_id: str, due: Due, *, check_first: bool = True
) -> Refreshed:
    """Refresh the connection if `due` says so, sharing the work with every concurrent caller
    in this process and waiting for any other process that holds the lease. `check_first`:
    a token without an expiry is only refreshed when the provider refuses it."""
    refreshed = _refresh_connection(broker, connection_id, due, check_first=check_first, wait=True)
    assert refreshed is not None
    return refreshed


def _refresh_connection(
    broker: Broker, connection_id: str, due: Due, *, check_first: bool, wait: bool
) -> Refreshed | None:
    """`refresh_connection`; `wait=False`: None at once when someone else (in this process
    or another) is refreshing the connection, instead of waiting for their result."""
    with broker.runtime.inflight_lock:
        shared = broker.runtime.inflight.get(connection_id)
        leader = shared is None
        if shared is None:
            shared = Future()
            broker.runtime.inflight[connection_id] = shared
    if not leader:
        if not wait:
            return None
        result: Refreshed = shared.result(timeout=_wait_limit(broker))
        return result
    try:
        outcome = _refresh_or_wait(broker, connection_id, due, check_first, wait)
    except BaseException as exc:
        shared.set_exception(exc)
        raise
    finally:
        with broker.runtime.inflight_lock:
            broker.runtime.inflight.pop(connection_id, None)
    shared.set_result(outcome)
    return outcome


def _wait_limit(broker: Broker) -> float:
    return broker.settings.refresh_lease_seconds + 2 * broker.settings.http_timeout_seconds


def _refresh_or_wait(
    broker: Broker, connection_id: str, due: Due, check_first: bool, wait: bool
) -> Refreshed | None:
    deadline = time.monotonic() + _wait_limit(broker)
    waited = False
    while True:
        lease, current = _take_lease(broker, connection_id, due, after_waiting=waited)
        if lease is not None:
            return perform_refresh(broker, lease, check_first=check_first)
        if current is not None:
            return current
        if not wait:
            return None
        # Another process holds the lease: wait for its result, or for the lease to lapse.
        if time.monotonic() > deadline:
            return _read(broker, connection_id)
        waited = True
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
    broker: Broker, connection_id: str, due: Due, *, after_waiting: bool = False
) -> tuple[Lease | None, Refreshed | None]:
    """(lease, None) when this process now holds the refresh; (None, row) when no refresh is
    needed; (None, None) when another process holds it. `after_waiting`: we waited for
    another process's refresh; once it released its lease, its outcome (a fresh token, or a
    failure) is ours too, and the row is returned as it stands: never a second refresh. Only
    a lease that lapsed (its holder died) is taken over."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        connection = lock_connection(db, select(Connection).where(Connection.id == connection_id))
        if connection is None:
            raise NotFound("the connection was deleted")
        token = open_token(broker, connection)
        if not due(connection, token, now) or (after_waiting and connection.claimed_by is None):
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
        .values(claimed_by=broker.runtime.worker_id, claim_expires_at=expires_at, status=REFRESHING)
        .execution_options(synchronize_session=False)
    )
    return Lease(connection_id, version, expires_at) if rows_matched(taken) == 1 else None


def _due_and_free(now: datetime) -> Any:
    return (
        (Connection.refresh_due_at <= now)
        & (Connection.status != NEEDS_REAUTH)
        & (Connection.refresh_not_before.is_(None) | (Connection.refresh_not_before <= now))
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
    refresh_due_at: datetime | None
    expiry_warned_at: datetime | None = None

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
            row.refresh_due_at,
            row.expiry_warned_at,
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
    Connection.refresh_due_at,
    Connection.expiry_warned_at,
)


def lease_due_connections(broker: Broker, limit: int) -> Batch:
    """Lease up to `limit` due connections in one short transaction: one UPDATE that is the
    compare-and-set of every lease (its WHERE checks again that the row is due and its lease
    free, so a row another process leased or refreshed meanwhile is not taken), and the
    reads their refreshes need. On PostgreSQL the candidates are locked with SKIP LOCKED so
    that replicas take disjoint batches."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        expires_at = _lease_expiry(broker, now)
        leased_rows = claim_rows(
            db,
            select(Connection.id)
            .where(_due_and_free(now))
            .order_by(Connection.refresh_due_at)
            .limit(limit),
            update(Connection)
            .where(_due_and_free(now))
            .values(
                claimed_by=broker.runtime.worker_id,
                claim_expires_at=expires_at,
                status=REFRESHING,
            ),
            Connection.id,
            _LEASED_COLUMNS,
        )
        if not leased_rows:
            return Batch([], {}, team_clients(broker, db, ()))
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
    leased = [
        LeasedConnection.of(row, Lease(row.id, row.version, expires_at), teams.get(row.site_id, ""))
        for row in leased_rows
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
                # Not one held back past its refresh time by its minimum interval (only when
                # something moved its refresh time earlier: a refresh schedules no sooner
                # than that interval): such a row is found by a recheck.
                Connection.refresh_not_before.is_(None)
                | (Connection.refresh_not_before <= now)
                | (Connection.refresh_not_before <= Connection.refresh_due_at),
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
    provider = clients.provider(leased.team_id, leased.provider)
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
        if token is None:
            raise ProviderError("there is no token: reconnect")
        mode = mode_of(token)
        if not mode.renewable(token):
            raise ProviderError("there is no refresh token: reconnect")
        try:
            client = clients.get(leased.team_id, provider.name) if mode.needs_client else None
        except ProviderNotConfigured as exc:
            raise ProviderError(exc.message) from None
        # The mode renews: a refresh grant (after a who-am-I check for a token without an
        # expiry, `check_first`), a re-verified key, a newly minted token. A refresh token
        # that dies unused is used once its keep-alive time comes, check or not.
        keep_alive = keep_alive_at(token, now)
        check_first = check_first and (keep_alive is None or now < keep_alive)
        with broker.runtime.metrics.timing_refresh(provider.name):
            fresh = mode.renew(
                broker.http_for(provider), provider, client, token, now=now, check_first=check_first
            )
        if fresh is None:
            return Outcome(leased, CHECKED, now)
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
    refresh_not_before=bindparam("refresh_not_before"),
    refresh_expires_at=bindparam("refresh_expires_at"),
    expiry_warned_at=bindparam("expiry_warned_at"),
    granted_scopes=bindparam("granted_scopes"),
    status=CONNECTED,
    last_refreshed_at=bindparam("now"),
    last_error=None,
    failure_count=0,
    degraded_since=None,
    # A new version: a lease taken on the old one can store nothing over this token.
    version=Connection.version + 1,
)
_STORE_CHECKED = _guarded(
    status=CONNECTED,
    last_error=None,
    failure_count=0,
    degraded_since=None,
    refresh_due_at=bindparam("refresh_due_at"),
)
_STORE_REFUSED = _guarded(status=NEEDS_REAUTH, last_error=bindparam("error"), refresh_due_at=None)
_STORE_UNTRIED = _guarded(status=CONNECTED)
_STORE_FAILURE = _guarded(
    status=CONNECTED,
    last_error=bindparam("error"),
    refresh_due_at=bindparam("refresh_due_at"),
    failure_count=Connection.failure_count + 1,
    degraded_since=func.coalesce(Connection.degraded_since, bindparam("now")),
)


def _write(broker: Broker, outcome: Outcome) -> tuple[Any, dict[str, Any], list[Event]]:
    """The guarded statement, its parameters and the events (kind, detail) for an outcome.
    Health is a state machine: `connection.refresh_failed` fires on the first failure of a
    degradation (not on every retry), `connection.recovered` when a refresh (or check)
    succeeds after failures."""
    recovered: list[Event] = (
        [("connection.recovered", {"failed_refreshes": outcome.leased.failure_count})]
        if outcome.leased.failure_count > 0
        else []
    )
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
            refresh_not_before=refresh_not_before(fresh, outcome.at),
            refresh_expires_at=fresh.refresh_expires_at,
            granted_scopes=list(fresh.granted_scopes),
            now=outcome.at,
        )
        # `connection.expiring` once, when the refresh token's end comes within the warning
        # (a later end, from a refresh token that lives longer, may be warned about again).
        expiring: list[Event] = []
        warned = leased.expiry_warned_at
        if not expires_soon(broker, fresh.refresh_expires_at, outcome.at):
            warned = None
        elif warned is None:
            warned = outcome.at
            assert fresh.refresh_expires_at is not None
            expiring.append(
                (
                    "connection.expiring",
                    {"refresh_expires_at": fresh.refresh_expires_at.isoformat()},
                )
            )
        params["expiry_warned_at"] = warned
        if is_short_lived(fresh, outcome.at):
            _log_short_lived(broker, leased.provider, fresh, outcome.at)
        return _STORE_FRESH, params, [("connection.refreshed", {}), *recovered, *expiring]
    if outcome.kind == UNTRIED:
        return _STORE_UNTRIED, params, []
    if outcome.kind == CHECKED:
        checked = outcome.at + timedelta(seconds=broker.settings.validate_interval_seconds)
        token = open_sealed_token(
            broker, leased.lease.connection_id, leased.token_enc, remember=False
        )
        keep_alive = None if token is None else keep_alive_at(token, outcome.at)
        params["refresh_due_at"] = min(checked, keep_alive or checked)
        return _STORE_CHECKED, params, recovered
    error = outcome.error
    assert error is not None
    params["error"] = error.message
    if outcome.kind == REFUSED:
        return _STORE_REFUSED, params, [("connection.needs_reauth", {"error": error.message})]
    delay = BACKOFF.delay(leased.failure_count + 1, error.retry_after)
    params["refresh_due_at"] = broker.clock() + timedelta(seconds=delay)
    params["now"] = outcome.at
    first = leased.failure_count == 0
    return (
        _STORE_FAILURE,
        params,
        [
            (
                "connection.refresh_failed",
                {"error": error.message, "retry_in_seconds": round(delay, 1)},
            )
        ]
        if first
        else [],
    )


def _log_short_lived(broker: Broker, provider: str, token: TokenSet, now: datetime) -> None:
    """Once per provider and process: its tokens live too short to refresh once a lifetime."""
    logged = broker.runtime.short_lived_providers
    if provider in logged:
        return
    logged.add(provider)
    assert token.expires_at is not None
    log.warning(
        "%s granted an access token that lives %.1f s; its connections are refreshed at most "
        "every %.0f s, and their tokens may be expired in between",
        provider,
        max((token.expires_at - now).total_seconds(), 0.0),
        SHORTEST_SANE_LIFETIME.total_seconds(),
        extra={"provider": provider},
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
    broker.runtime.metrics.refreshes_stored(stored)
    if stored:
        broker.runtime.refresh_wakeup.set()
    return stored


_Write = tuple[Outcome, Any, dict[str, Any], list[Event]]


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
        if together and counts_batched_writes(connection):
            batched = {index for index, write in enumerate(writes) if write[1] is _STORE_FRESH}
        if len(batched) > 1:
            params_list = [writes[index][2] for index in sorted(batched)]
            if connection.execute(_STORE_FRESH, params_list).rowcount != len(batched):
                raise _Overtaken
        else:
            batched = set()
        for index, (outcome, statement, params, events) in enumerate(writes):
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
                    extra={"provider": leased.provider, "outcome": FAILED},
                )
            site = sites.get(leased.site_id)
            if site is None:
                continue
            for kind, extra in events:
                detail: dict[str, Any] = {"provider": leased.provider, **extra}
                if leased.visitor_id:
                    detail["visitor_id"] = leased.visitor_id
                audit_events.append(audit.Event(site.id, kind, "refresher", detail))
                deliveries.enqueue(broker, db, site, kind, detail)
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
