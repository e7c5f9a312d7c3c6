"""The delivery worker: a thread that sends the outbox (deploy hooks and webhooks) and writes
the buffered audit events.

It sleeps until the earliest undelivered delivery is due, woken sooner when this process
enqueues one (`Runtime.delivery_wakeups`) or buffers an audit event; idle, it looks every
`IDLE_RECHECK_SECONDS` for rows other processes enqueued. Deliveries are POSTed by a small
pool of threads, and only as many are claimed as the pool has room for, so a claimed lease
never waits in a queue: a slow receiver occupies a pool thread, never a request.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from apiauth.domain import deliveries
from apiauth.domain.background import BackgroundThread
from apiauth.domain.backoff import Backoff, Failures
from apiauth.domain.broker import Broker
from apiauth.domain.deliveries import DueDelivery

log = logging.getLogger(__name__)

IDLE_RECHECK_SECONDS = 30.0
# After a failed round (the database away): 5 s, doubling while the failures go on, at most
# five minutes.
ERROR_PAUSE_SECONDS = 5.0
MAX_ERROR_PAUSE_SECONDS = 300.0
CONCURRENCY = 4
STOP_WAIT_SECONDS = 2.0


class DeliveryWorker(BackgroundThread):
    thread_name = "apiauth-deliveries"
    stop_wait_seconds = STOP_WAIT_SECONDS + 5

    def __init__(self, broker: Broker, *, concurrency: int = CONCURRENCY) -> None:
        super().__init__()
        self.broker = broker
        self.concurrency = concurrency
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="apiauth-delivery")
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self._failures = Failures(Backoff(ERROR_PAUSE_SECONDS, MAX_ERROR_PAUSE_SECONDS))

    def start(self) -> None:
        self.broker.runtime.delivery_wakeups.subscribe(self._wake.set)
        self.broker.runtime.audit_buffer.wakeup = self._wake.set
        super().start()

    def stop(self) -> None:
        """Stop claiming, give deliveries in flight a moment, and write the audit buffer.
        A delivery still in flight afterwards keeps its lease and is retried when it ends."""
        self.broker.runtime.delivery_wakeups.unsubscribe(self._wake.set)
        if self.broker.runtime.audit_buffer.wakeup == self._wake.set:
            self.broker.runtime.audit_buffer.wakeup = None
        super().stop()
        with self._in_flight_changed:
            self._in_flight_changed.wait_for(lambda: self._in_flight == 0, STOP_WAIT_SECONDS)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._flush_audit()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            try:
                timeout = self._step()
            except Exception as exc:
                timeout = self._failures.failed()
                log.warning(
                    "the delivery worker failed a round (%s); trying again in %.0f s",
                    type(exc).__name__,
                    timeout,
                )
            else:
                self._failures.succeeded()
            self._wake.wait(timeout)

    def _step(self) -> float:
        """One round: write the audit buffer if due, send what is due; returns how long to
        sleep before the next round (unless woken)."""
        audit_due = self.broker.runtime.audit_buffer.due_in()
        if audit_due == 0.0:
            self._flush_audit()
            audit_due = self.broker.runtime.audit_buffer.due_in()
        timeout = IDLE_RECHECK_SECONDS
        if audit_due is not None:
            timeout = min(timeout, audit_due)
        room = self.concurrency - self._in_flight
        if room <= 0:
            return timeout  # a delivery that finishes wakes us
        for due in deliveries.claim_due_deliveries(self.broker, room):
            self._submit(due)
        if self._in_flight >= self.concurrency:
            return timeout
        next_at = deliveries.next_attempt_time(self.broker)
        if next_at is not None:
            wait = (next_at - self.broker.clock()).total_seconds()
            timeout = min(timeout, max(wait, 0.05))
        return timeout

    def _submit(self, due: DueDelivery) -> None:
        with self._in_flight_changed:
            self._in_flight += 1
        self._pool.submit(self._deliver, due)

    def _deliver(self, due: DueDelivery) -> None:
        try:
            if not deliveries.deliver(self.broker, due):
                log.info("delivery %s (%s %s) failed; will retry", due.id, due.kind, due.event)
        except Exception as exc:
            # Its lease lapses and it is tried again (the database away), unless the row
            # itself is what fails: then it is set aside (`deliveries.set_aside`).
            log.warning("delivery %s could not be recorded (%s)", due.id, type(exc).__name__)
        finally:
            with self._in_flight_changed:
                self._in_flight -= 1
                self._in_flight_changed.notify_all()
            self._wake.set()

    def _flush_audit(self) -> None:
        try:
            self.broker.runtime.audit_buffer.flush(self.broker.sessions)
        except Exception:
            log.exception("could not write buffered audit events; keeping them for later")
