"""The proactive refresher: a thread that sleeps until the nearest `refresh_due_at`, claims
the due connections in batches, refreshes them concurrently with a bounded pool (each
result in its own transaction), and sleeps again.

Idle, it wakes only when its own process schedules something sooner
(`Broker.refresh_wakeup`) or every `refresher_recheck_seconds` (30 s) to notice what other
replicas scheduled or left behind: one small query, not a loop that polls every second.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import DBAPIError

from apiauth.domain.broker import Broker
from apiauth.domain.refresh import (
    Lease,
    claim_due_connections,
    next_due_time,
    perform_refresh,
    release_stale_statuses,
)
from apiauth.errors import NotFound

log = logging.getLogger(__name__)

ERROR_PAUSE_SECONDS = 5.0
MIN_SLEEP_SECONDS = 0.05
BATCH = 100


class Refresher:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshed = 0

    def start(self) -> None:
        try:
            release_stale_statuses(self.broker)
        except DBAPIError as exc:
            # A database refusing writes (read-only, failing over) must not keep the server
            # from starting and serving reads; lapsed leases are taken over later anyway.
            log.warning("could not release stale refresh statuses at start: %s", type(exc).__name__)
        self._thread = threading.Thread(target=self.run, name="apiauth-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.broker.refresh_wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=self.broker.settings.http_timeout_seconds + 5)

    def run(self) -> None:
        concurrency = self.broker.settings.refresh_concurrency
        with ThreadPoolExecutor(concurrency, thread_name_prefix="apiauth-refresh") as pool:
            while not self._stopping.is_set():
                try:
                    self._step(pool)
                except Exception:
                    log.exception("the refresher failed a round; trying again shortly")
                    self._stopping.wait(ERROR_PAUSE_SECONDS)

    def _refresh_one(self, lease: Lease) -> int:
        try:
            perform_refresh(self.broker, lease)
        except NotFound:
            return 0  # deleted while it was due
        except Exception:
            log.exception("refresh of connection %s failed", lease.connection_id)
            return 0
        return 1

    def _step(self, pool: ThreadPoolExecutor) -> None:
        wakeup = self.broker.refresh_wakeup
        wakeup.clear()
        leases = claim_due_connections(self.broker, BATCH)
        if leases:
            for done in pool.map(self._refresh_one, leases):
                self.refreshed += done
            return
        recheck = self.broker.settings.refresher_recheck_seconds
        due = next_due_time(self.broker)
        if due is None:
            delay = recheck
        else:
            until = (due - self.broker.clock()).total_seconds()
            delay = min(recheck, max(MIN_SLEEP_SECONDS, until))
        wakeup.wait(delay)
