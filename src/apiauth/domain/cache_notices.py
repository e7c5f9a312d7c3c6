"""Cross-process invalidation of the read path's memories (`read_caches`) on PostgreSQL.

A process that revokes tokens (a rotation, API Authentication disabled, a site or visitor
deleted) forgets its remembered tokens at once and announces it with `NOTIFY` on
`CHANNEL`; every `apiauth serve` process (each `--workers` process, each replica) listens
on its own connection and forgets its remembered tokens when the notice arrives, so that a
revoked token is refused everywhere within milliseconds instead of when the entries age
out. A notice can be lost (the listening connection drops, the database restarts, or it is
sent while the process is starting): the one-second age limit of every entry
(`SITE_TOKEN_CACHE_SECONDS`) stays the bound then, and a listener that reconnects forgets
everything first, since it may have missed notices.

SQLite serves one process, which forgets at once on its own: no notices are sent there.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from apiauth.domain.background import BackgroundThread
from apiauth.domain.backoff import Backoff, Failures
from apiauth.domain.broker import Broker

__all__ = ["CHANNEL", "CacheNoticeListener", "Forget", "announce"]

log = logging.getLogger(__name__)

CHANNEL = "apiauth_read_caches"
# A lost listening connection: again after a second, doubling while the database stays
# away (the one-second age limit bounds what is missed meanwhile), at most a minute.
RECONNECT_SECONDS = 1.0
MAX_RECONNECT_SECONDS = 60.0
# How often the listener checks that it is asked to stop. It does not delay a notice:
# psycopg's `notifies()` yields each one the moment its packet arrives (select() on the
# socket), and it is acted on at once (benchmark 11: median 2.2 ms, max 32 ms, README).
_POLL_SECONDS = 0.5


class Forget(Enum):
    """What a notice asks every process to forget."""

    TOKENS = "tokens"  # the tokens found valid (`Runtime.site_tokens`)
    ANSWERS = "answers"  # the remembered secrets answers (`Runtime.answers`)


def _forget(broker: Broker, what: Forget) -> None:
    if what is Forget.TOKENS:
        broker.runtime.site_tokens.clear()
    else:
        broker.runtime.answers.clear()


def _notices_sent(broker: Broker) -> bool:
    return broker.engine.dialect.name == "postgresql"


def announce(broker: Broker, what: Forget) -> None:
    """Forget `what` in this process now and tell every other process to (call after the
    change committed). The notice names its sender, which does not act on it twice."""
    _forget(broker, what)
    if not _notices_sent(broker):
        return
    payload = f"{what.value} {broker.runtime.worker_id}"
    try:
        with broker.engine.connect() as db:
            db.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": payload},
            )
            db.commit()
    except DBAPIError as exc:  # the change stands; elsewhere the age limit bounds it
        log.warning("could not announce a revocation to other processes (%s)", type(exc).__name__)


class CacheNoticeListener(BackgroundThread):
    """The background thread that listens for notices (a `workers.Worker`); does nothing
    on SQLite."""

    thread_name = "apiauth-cache-notices"

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        self._failures = Failures(Backoff(RECONNECT_SECONDS, MAX_RECONNECT_SECONDS))
        # Set once listening: a notice sent before is not heard.
        self.listening = broker.runtime.hears_revocations

    def start(self) -> None:
        if _notices_sent(self.broker):
            super().start()

    def run(self) -> None:
        reconnecting = False
        while not self.stopping.is_set():
            try:
                self._listen(reconnecting)
            except Exception as exc:
                log.warning(
                    "lost the notices of revocations (%s); reconnecting", type(exc).__name__
                )
            self.listening.clear()
            reconnecting = True
            self.stopping.wait(self._failures.failed())

    def _listen(self, reconnecting: bool) -> None:
        pooled = self.broker.engine.raw_connection()
        # Its own connection for as long as it listens, outside the pool.
        pooled.detach()
        connection: Any = pooled.dbapi_connection
        try:
            connection.rollback()
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
            if reconnecting:  # notices sent while nobody listened are lost: forget all
                for what in Forget:
                    _forget(self.broker, what)
            self.listening.set()
            self._failures.succeeded()
            own = self.broker.runtime.worker_id
            while not self.stopping.is_set():
                for notice in connection.notifies(timeout=_POLL_SECONDS):
                    kind, _, sender = str(notice.payload).partition(" ")
                    if sender == own:
                        continue
                    try:
                        _forget(self.broker, Forget(kind))
                    except ValueError:  # a notice of another version: forget everything
                        for what in Forget:
                            _forget(self.broker, what)
        finally:
            connection.close()
