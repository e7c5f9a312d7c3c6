"""The proactive refresher: a thread that sleeps until the nearest `refresh_due_at`, leases
the due connections in batches (one short transaction), calls their providers concurrently
with a bounded pool (outside any transaction), stores the batch's outcomes in one more
transaction, and sleeps again.

Idle, it wakes only when its own process schedules something sooner
(`Runtime.refresh_wakeup`) or every `refresher_recheck_seconds` (30 s) to notice what other
replicas scheduled or left behind: one small query, not a loop that polls every second.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from apiauth.domain.background import BackgroundThread
from apiauth.domain.backoff import Backoff, Failures
from apiauth.domain.broker import Broker
from apiauth.domain.refresh import (
    Batch,
    Outcome,
    attempt_refresh,
    lease_due_connections,
    next_due_time,
    release_stale_statuses,
    store_outcomes,
    untried,
)
from apiauth.store.db import database_unavailable

log = logging.getLogger(__name__)

# After a failed round (the database away): 5 s, doubling while it goes on, at most 5 min.
ERROR_PAUSE_SECONDS = 5.0
MAX_ERROR_PAUSE_SECONDS = 300.0
MIN_SLEEP_SECONDS = 0.05
BATCH = 100
# A batch's outcomes exist only in memory until stored (a rotating refresh token has been
# spent): a failing store is tried again this many times before its leases are left to lapse.
STORE_ATTEMPTS = 4
STORE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class _InFlight:
    """A leased batch whose provider calls are running in the pool."""

    batch: Batch
    attempts: list[Future[Outcome]]


class Refresher(BackgroundThread):
    thread_name = "apiauth-refresher"

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        # The provider calls in flight end within the HTTP timeout.
        self.stop_wait_seconds = broker.settings.http_timeout_seconds + 5

    def start(self) -> None:
        try:
            release_stale_statuses(self.broker)
        except DBAPIError as exc:
            # A database refusing writes (read-only, failing over) must not keep the server
            # from starting and serving reads; lapsed leases are taken over later anyway.
            log.warning("could not release stale refresh statuses at start: %s", type(exc).__name__)
        super().start()

    def wake(self) -> None:
        self.broker.runtime.refresh_wakeup.set()

    def run(self) -> None:
        """Two batches at a time: while the pool calls the providers of one, this thread
        stores the outcomes of the one before and leases the next, so that the pool never
        waits for the database."""
        concurrency = self.broker.settings.refresh_concurrency
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="apiauth-refresh")
        in_flight: _InFlight | None = None
        failures = Failures(Backoff(ERROR_PAUSE_SECONDS, MAX_ERROR_PAUSE_SECONDS))
        try:
            while not self.stopping.is_set():
                try:
                    in_flight = self._step(pool, in_flight)
                except Exception as exc:
                    in_flight = None  # (only leasing raises: nothing was leased)
                    pause = failures.failed()
                    log.warning(
                        "the refresher failed a round (%s); trying again in %.0f s",
                        type(exc).__name__,
                        pause,
                    )
                    self.stopping.wait(pause)
                else:
                    failures.succeeded()
        finally:
            # Calls not yet started give their leases back, so that the connections are
            # refreshed at once by whoever runs next instead of when the leases lapse.
            pool.shutdown(wait=True, cancel_futures=True)
            if in_flight is not None:
                self._store(in_flight)

    def _step(self, pool: ThreadPoolExecutor, previous: _InFlight | None) -> _InFlight | None:
        wakeup = self.broker.runtime.refresh_wakeup
        wakeup.clear()
        current = None
        try:
            batch = lease_due_connections(self.broker, BATCH)
            if batch.leased:
                current = _InFlight(
                    batch,
                    [
                        pool.submit(attempt_refresh, self.broker, leased, batch.clients)
                        for leased in batch.leased
                    ],
                )
        finally:
            if previous is not None:
                self._store(previous)
        if current is not None or previous is not None:
            return current
        recheck = self.broker.settings.refresher_recheck_seconds
        due = next_due_time(self.broker)
        if due is None:
            delay = recheck
        else:
            until = (due - self.broker.clock()).total_seconds()
            delay = min(recheck, max(MIN_SLEEP_SECONDS, until))
        wakeup.wait(delay)
        return None

    def _store(self, in_flight: _InFlight) -> None:
        """Store a batch's outcomes; never raises, so that the batch leased after it keeps
        running. If the database stays away, the leases lapse and are taken over."""
        outcomes = [
            untried(leased, self.broker.clock()) if attempt.cancelled() else attempt.result()
            for leased, attempt in zip(in_flight.batch.leased, in_flight.attempts, strict=True)
        ]
        for tries_left in reversed(range(STORE_ATTEMPTS)):
            try:
                store_outcomes(self.broker, outcomes, in_flight.batch.sites)
            except DBAPIError as exc:
                if not database_unavailable(exc):  # a row's value: see below
                    log.error(
                        "could not store %d refresh outcomes together (%s); one by one",
                        len(outcomes),
                        type(exc).__name__,
                    )
                    self._store_one_by_one(outcomes, in_flight.batch)
                    return
                log.warning(
                    "could not store %d refresh outcomes (%s)%s",
                    len(outcomes),
                    type(exc).__name__,
                    "; trying again" if tries_left else "; their leases will lapse",
                )
                self.stopping.wait(STORE_RETRY_SECONDS if tries_left else 0)
            except Exception as exc:
                # Not the database: something in one outcome. Store them one by one, so
                # that one connection's odd answer does not lose the batch's refreshes.
                log.error(
                    "could not store %d refresh outcomes together (%s); one by one",
                    len(outcomes),
                    type(exc).__name__,
                )
                self._store_one_by_one(outcomes, in_flight.batch)
                return
            else:
                return

    def _store_one_by_one(self, outcomes: list[Outcome], batch: Batch) -> None:
        """Each outcome in its own transaction; one that cannot be stored is set aside:
        logged by connection id, its lease left to lapse, so that the connection is tried
        again a lease later (`APIAUTH_REFRESH_LEASE_SECONDS`), not at once in a loop."""
        for outcome in outcomes:
            try:
                store_outcomes(self.broker, [outcome], batch.sites)
            except Exception as exc:
                log.error(
                    "set aside the refresh outcome of connection %s (%s); tried again "
                    "when its lease lapses",
                    outcome.leased.lease.connection_id,
                    type(exc).__name__,
                )
