"""The gauges read when Prometheus scrapes: the state of the deployment and of this process.

Nothing here is updated as the broker works; `collect` looks, which keeps the hot paths free
of bookkeeping. What it reads from the database (connections by status, the outbox) is one
aggregate query each, at most once per `database_seconds` of the broker's clock however
often the scrapes come (several Prometheus servers, a dashboard reloading), and on
PostgreSQL under a statement timeout, so that a scrape cannot become a load on the
database. Those numbers describe the whole deployment, so every replica reports the same
ones: aggregate them with `max`, not `sum`. What it reads from memory (audit buffer, read
caches, pool) is this process's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from apiauth.domain.deliveries import OutboxCounts, outbox_counts
from apiauth.domain.token_store import count_by_status

if TYPE_CHECKING:
    from apiauth.domain.broker import Broker

log = logging.getLogger(__name__)

DATABASE_SECONDS = 5.0
STATEMENT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class _DatabaseState:
    connections: Mapping[tuple[str, str], int]
    outbox: OutboxCounts
    read_at: datetime


class BrokerGauges(Collector):
    def __init__(self, broker: Broker, database_seconds: float = DATABASE_SECONDS) -> None:
        self.broker = broker
        self.database_seconds = database_seconds
        self._state: _DatabaseState | None = None
        self._state_at: datetime | None = None  # by the broker's clock
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        state = self._database_state()
        up = 1 if state is not None else 0
        yield _gauge("apiauth_database_up", "1 when the database answered the last query.", up)
        if state is not None:
            yield from _database_metrics(state)
        yield from self._process_metrics()

    def _database_state(self) -> _DatabaseState | None:
        with self._lock:
            now = self.broker.clock()
            if self._state_at is not None and (
                timedelta(0) <= now - self._state_at < timedelta(seconds=self.database_seconds)
            ):
                return self._state
            try:
                state = self._query()
            except DBAPIError as exc:
                log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
                state = None
            self._state, self._state_at = state, now
            return state

    def _query(self) -> _DatabaseState:
        broker = self.broker
        with broker.sessions() as db, db.begin():
            if db.get_bind().dialect.name == "postgresql":
                db.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            now = broker.clock()
            expiring_before = now + timedelta(days=broker.settings.expiry_warning_days)
            return _DatabaseState(count_by_status(db, expiring_before), outbox_counts(db), now)

    def _process_metrics(self) -> Iterable[Metric]:
        broker = self.broker
        buffer = broker.runtime.audit_buffer
        yield _gauge(
            "apiauth_audit_buffer_events",
            "Audit events (secrets reads) waiting in memory to be written.",
            len(buffer),
        )
        dropped = CounterMetricFamily(
            "apiauth_audit_dropped_events",
            "Audit events dropped because the buffer was full (the database stayed away).",
        )
        dropped.add_metric([], buffer.dropped)
        yield dropped
        set_aside = CounterMetricFamily(
            "apiauth_audit_rows_set_aside",
            "Audit events the database refused to store (their site deleted meanwhile, a "
            "value a column refuses): logged without their content and left out, while the "
            "rest of their batch was stored.",
        )
        set_aside.add_metric([], buffer.set_aside)
        yield set_aside
        lookups = CounterMetricFamily(
            "apiauth_read_cache_lookups",
            "Lookups in the read path's memories (site_tokens: tokens found valid; answers: "
            "encoded secrets answers; opened_tokens, opened_secrets: decrypted token sets "
            "and OAuth client secrets), hit or missed.",
            labels=["cache", "result"],
        )
        for name, cache in (
            ("site_tokens", broker.runtime.site_tokens),
            ("answers", broker.runtime.answers),
            ("opened_tokens", broker.runtime.opened_tokens),
            ("opened_secrets", broker.runtime.opened_secrets),
        ):
            lookups.add_metric([name, "hit"], cache.hits)
            lookups.add_metric([name, "miss"], cache.misses)
        yield lookups
        yield from _pool_metrics(broker)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _database_metrics(state: _DatabaseState) -> Iterable[Metric]:
    connections = GaugeMetricFamily(
        "apiauth_connections",
        "Connections by provider and status (connected, refreshing, needs_reauth; degraded: "
        "its last refresh failed and is being retried; expiring: its refresh token dies "
        "within APIAUTH_EXPIRY_WARNING_DAYS).",
        labels=["provider", "status"],
    )
    for (provider, status), count in sorted(state.connections.items()):
        connections.add_metric([provider, status], count)
    yield connections
    pending = GaugeMetricFamily(
        "apiauth_outbox_pending",
        "Deploy hook and webhook deliveries waiting to be sent (or retried), by kind.",
        labels=["kind"],
    )
    for kind in ("deploy_hook", "webhook"):
        pending.add_metric([kind], state.outbox.pending.get(kind, 0))
    yield pending
    oldest = state.outbox.oldest_pending_at
    age = 0.0 if oldest is None else max(0.0, (state.read_at - oldest).total_seconds())
    yield _gauge(
        "apiauth_outbox_oldest_pending_seconds",
        "Age of the oldest delivery still waiting (0 when none is).",
        age,
    )
    yield _gauge(
        "apiauth_outbox_given_up",
        "Deliveries given up after their last attempt (kept in the outbox).",
        state.outbox.given_up,
    )


def _pool_metrics(broker: Broker) -> Iterable[Metric]:
    pool = broker.engine.pool
    if not isinstance(pool, QueuePool):  # a pool without counts (SQLite in memory)
        return
    in_use = GaugeMetricFamily(
        "apiauth_db_pool_connections",
        "Database connections of this process's pool, in use (checked_out) or idle.",
        labels=["state"],
    )
    in_use.add_metric(["checked_out"], pool.checkedout())
    in_use.add_metric(["idle"], pool.checkedin())
    yield in_use
    yield _gauge(
        "apiauth_db_pool_max_connections",
        "The most connections this process's pool opens (pool size plus overflow).",
        pool.size() + max(0, pool._max_overflow),
    )
