"""Housekeeping: rows that have outlived their use are deleted on a schedule, in bounded
batches, so that no table grows with every read, sign-in or flow for ever.

What goes (`prune`):

- function tokens an hour after they expired (a read with one is refused either way; the
  hour keeps "expired" and "unknown" apart in the logs of a build that just ran);
- OAuth flows (`auth_states`) an hour after they were finished or expired (`apiauth connect`
  waits for a flow's outcome, at most its ten minutes);
- visitors' connect links an hour after they expired (their flows go with them);
- dashboard sessions once expired;
- deliveries delivered, or given up, more than `APIAUTH_DELIVERY_RETENTION_DAYS` ago.

Each batch is one short transaction of at most `APIAUTH_HOUSEKEEPING_BATCH_SIZE` rows, its
candidates read with SKIP LOCKED on PostgreSQL: every process of a deployment (each
`--workers` process, each replica) may run it at once, each deleting rows the others are not,
and no batch holds the SQLite writer for long. The audit log is kept: it is the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select

from apiauth.domain.background import BackgroundThread
from apiauth.domain.backoff import Backoff, Failures
from apiauth.domain.broker import Broker
from apiauth.domain.deliveries import MAX_ATTEMPTS
from apiauth.store.db import transaction
from apiauth.store.dialect import rows_matched, skip_locked
from apiauth.store.models import AuthState, ConnectSession, Delivery, Session, SiteToken

__all__ = ["FINISHED_GRACE", "Housekeeper", "prune"]

log = logging.getLogger(__name__)

# How long a finished flow, an expired link or function token is kept (see the docstring).
FINISHED_GRACE = timedelta(hours=1)
# A round ends after this many batches of one kind; the next round goes on.
MAX_BATCHES_PER_ROUND = 100
ERROR_PAUSE_SECONDS = 30.0
MAX_ERROR_PAUSE_SECONDS = 3600.0
# The first round after a start: soon, not at once (the start has other work).
FIRST_ROUND_SECONDS = 5.0


def _prunable(broker: Broker, now: datetime) -> dict[str, tuple[Any, ColumnElement[bool]]]:
    finished = now - FINISHED_GRACE
    kept_since = now - timedelta(days=broker.settings.delivery_retention_days)
    return {
        "function_tokens": (
            SiteToken,
            (SiteToken.kind == "function") & (SiteToken.expires_at < finished),
        ),
        "auth_states": (
            AuthState,
            (AuthState.expires_at < finished) | (AuthState.used_at < finished),
        ),
        "connect_sessions": (ConnectSession, ConnectSession.expires_at < finished),
        "sessions": (Session, Session.expires_at < now),
        "deliveries": (
            Delivery,
            (Delivery.delivered_at < kept_since)
            | (
                Delivery.delivered_at.is_(None)
                & (Delivery.attempts >= MAX_ATTEMPTS)
                & (Delivery.created_at < kept_since)
            ),
        ),
    }


def prune(broker: Broker, *, stopping: Callable[[], bool] = lambda: False) -> Mapping[str, int]:
    """One round: delete what has outlived its use (see the module's docstring), batch by
    batch; returns how many rows of each kind went."""
    batch_size = broker.settings.housekeeping_batch_size
    pruned: dict[str, int] = {}
    for what, (model, condition) in _prunable(broker, broker.clock()).items():
        count = 0
        for _ in range(MAX_BATCHES_PER_ROUND):
            if stopping():
                break
            with transaction(broker.sessions) as db:
                ids = list(
                    db.scalars(skip_locked(db, select(model.id).where(condition).limit(batch_size)))
                )
                if ids:
                    # What this process deleted: on SQLite another may have taken some first.
                    count += rows_matched(db.execute(delete(model).where(model.id.in_(ids))))
            if len(ids) < batch_size:
                break
        pruned[what] = count
        if count:
            broker.runtime.metrics.housekeeping_pruned(what, count)
    if any(pruned.values()):
        log.info(
            "housekeeping pruned %s",
            ", ".join(f"{count} {what}" for what, count in pruned.items() if count),
        )
    return pruned


class Housekeeper(BackgroundThread):
    """The background thread that runs `prune` every `APIAUTH_HOUSEKEEPING_INTERVAL_SECONDS`
    (a `workers.Worker`); failed rounds are retried ever less often."""

    thread_name = "apiauth-housekeeping"

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    def run(self) -> None:
        failures = Failures(Backoff(ERROR_PAUSE_SECONDS, MAX_ERROR_PAUSE_SECONDS))
        wait = FIRST_ROUND_SECONDS
        while not self.stopping.wait(wait):
            try:
                prune(self.broker, stopping=self.stopping.is_set)
            except Exception as exc:
                wait = failures.failed()
                log.warning(
                    "housekeeping failed (%s); trying again in %.0f s", type(exc).__name__, wait
                )
            else:
                failures.succeeded()
                wait = self.broker.settings.housekeeping_interval_seconds
