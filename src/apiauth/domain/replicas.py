"""Which processes work on this database: every `apiauth serve` and `apiauth refresher`
writes a heartbeat (a row `replica:<worker id>` in `server_state`) when it starts and every
`HEARTBEAT_SECONDS`, and deletes it when it stops. `apiauth doctor` reads them: is a server
running, is anything refreshing tokens, do the replicas run the same version, are their
clocks right.

Cheap on purpose: one small write per process every 30 s. The clock is compared with the
database server's (PostgreSQL) at each beat, since token expiry depends on every replica's
clock; on SQLite the database is a file of this machine, read with its clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from apiauth.client import __version__
from apiauth.domain.background import BackgroundThread
from apiauth.domain.broker import Broker
from apiauth.store.db import database_now, transaction
from apiauth.store.models import ServerState

__all__ = [
    "HEARTBEAT_SECONDS",
    "Heartbeat",
    "Replica",
    "Role",
    "beat",
    "recent_replicas",
    "serving_replicas",
]

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
FORGET_AFTER = timedelta(days=1)
KEY_PREFIX = "replica:"
Role = Literal["serve", "refresher"]


@dataclass(frozen=True)
class Replica:
    worker_id: str
    role: Role
    refresher: bool
    host: str
    pid: int
    version: str
    public_url: str
    started_at: datetime
    seen_at: datetime
    clock_skew_seconds: float | None  # its clock minus the database's, when known


def _key(worker_id: str) -> str:
    return (KEY_PREFIX + worker_id)[:64]


def beat(broker: Broker, *, role: Role, refresher: bool, started_at: datetime) -> None:
    """Write this process's heartbeat (and forget replicas silent for a day)."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        database_clock = database_now(db)
        skew = None if database_clock is None else (now - database_clock).total_seconds()
        value = json.dumps(
            {
                "role": role,
                "refresher": refresher,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "public_url": broker.settings.public_url,
                "started_at": started_at.isoformat(),
                "clock_skew_seconds": skew,
            }
        )
        key = _key(broker.runtime.worker_id)
        written = db.connection().execute(
            update(ServerState).where(ServerState.key == key).values(value=value, updated_at=now)
        )
        if written.rowcount == 0:
            db.add(ServerState(key=key, value=value, updated_at=now))
        db.execute(
            delete(ServerState).where(
                ServerState.key.startswith(KEY_PREFIX), ServerState.updated_at < now - FORGET_AFTER
            )
        )


def forget(broker: Broker) -> None:
    with transaction(broker.sessions) as db:
        db.execute(delete(ServerState).where(ServerState.key == _key(broker.runtime.worker_id)))


def recent_replicas(db: Session) -> list[Replica]:
    """Every replica heard from within the last day, most recently seen first."""
    rows = db.scalars(select(ServerState).where(ServerState.key.startswith(KEY_PREFIX)))
    replicas = []
    for row in rows:
        try:
            fields: dict[str, Any] = json.loads(row.value)
            replicas.append(
                Replica(
                    worker_id=row.key.removeprefix(KEY_PREFIX),
                    role=fields["role"],
                    refresher=bool(fields["refresher"]),
                    host=str(fields["host"]),
                    pid=int(fields["pid"]),
                    version=str(fields["version"]),
                    public_url=str(fields.get("public_url", "")),
                    started_at=datetime.fromisoformat(fields["started_at"]),
                    seen_at=row.updated_at,
                    clock_skew_seconds=fields.get("clock_skew_seconds"),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # a row written by another version: not worth failing over
    return sorted(replicas, key=lambda replica: replica.seen_at, reverse=True)


# A process is live while its heartbeat is this recent: two beats may be missed.
LIVE_WITHIN = timedelta(seconds=2.5 * HEARTBEAT_SECONDS)


def serving_replicas(broker: Broker) -> int:
    """How many `apiauth serve` processes (every `--workers` process counts) beat within
    `LIVE_WITHIN`, this one included: at least 1."""
    now = broker.clock()
    with broker.sessions() as db:
        live = [
            replica
            for replica in recent_replicas(db)
            if replica.role == "serve" and replica.seen_at >= now - LIVE_WITHIN
        ]
    return max(1, len(live))


class Heartbeat(BackgroundThread):
    """The background thread that beats (a `workers.Worker`). `replicas_seen`: called after
    each beat with `serving_replicas` (the per-token rate limit takes its share by it)."""

    thread_name = "apiauth-heartbeat"

    def __init__(
        self,
        broker: Broker,
        *,
        role: Role,
        refresher: bool,
        replicas_seen: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.role: Role = role
        self.refresher = refresher
        self.replicas_seen = replicas_seen
        self.started_at = broker.clock()

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(DBAPIError):  # (else the row is forgotten after a day)
            forget(self.broker)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                beat(
                    self.broker,
                    role=self.role,
                    refresher=self.refresher,
                    started_at=self.started_at,
                )
                if self.replicas_seen is not None:
                    self.replicas_seen(serving_replicas(self.broker))
            except DBAPIError as exc:
                log.warning("could not write the heartbeat (%s)", type(exc).__name__)
            except Exception:
                log.exception("could not write the heartbeat")
            self.stopping.wait(HEARTBEAT_SECONDS)
