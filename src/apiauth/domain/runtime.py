"""What one broker coordinates inside its process, apart from the infrastructure it talks to.

`Broker` holds the parts that reach outside the process - the database engine and its
sessions, the vault, the catalog, the HTTP client, the settings and the URL policy.
`Runtime` holds what this process remembers and who waits for whom: refreshes in flight,
the wake-ups of the background workers, the read path's memories, the audit buffer and the
metrics registry.

Every broker opens its own runtime, and nothing of it lives in a module global, so two
brokers in one process (tests, an application embedding apiauth) share nothing by
accident: a refresh in flight, a remembered token or a buffered audit event of one is never
seen by the other (tests/test_runtime.py).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apiauth.domain.audit import AuditBuffer
from apiauth.domain.group_commit import GroupCommit
from apiauth.domain.read_caches import SITE_TOKEN_CACHE_SECONDS, Answers, AuthCache, OpenedTokens
from apiauth.metrics import Metrics

if TYPE_CHECKING:
    from apiauth.domain.sites import SiteCaller
    from apiauth.oauth.token_set import TokenSet

__all__ = ["Runtime", "Wakeups", "new_worker_id"]


def new_worker_id() -> str:
    """Who holds a lease: unique per process (and per broker in it), readable in the
    database - the host, the process id and a few random characters."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Wakeups:
    """Callbacks to run when there is new work: `enqueue` wakes the delivery workers of its
    broker after its transaction commits. Rows enqueued by other processes are noticed when
    a worker's idle wait ends."""

    def __init__(self) -> None:
        self._waiting: set[Callable[[], None]] = set()
        self._lock = threading.Lock()

    def subscribe(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.add(wake)

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.discard(wake)

    def notify(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
        for wake in waiting:
            wake()


@dataclass
class Runtime:
    """One broker's in-process coordination; see the module's docstring."""

    # Who holds a refresh or delivery lease taken by this broker.
    worker_id: str = field(default_factory=new_worker_id)
    # Refreshes in flight, by connection id: concurrent readers share one (`refresh.py`).
    inflight: dict[str, Future[Any]] = field(default_factory=dict)
    inflight_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set when a connection's refresh time may have moved earlier: the refresher wakes.
    refresh_wakeup: threading.Event = field(default_factory=threading.Event)
    # The delivery workers to wake when a delivery is enqueued (`deliveries.enqueue`).
    delivery_wakeups: Wakeups = field(default_factory=Wakeups)
    # Secrets reads waiting to be written to the audit log by the delivery worker.
    audit_buffer: AuditBuffer = field(default_factory=AuditBuffer)
    # The read path's memories (`read_caches`): tokens found valid (for at most a second),
    # connection token sets and OAuth client secrets already decrypted (keyed by row id and
    # ciphertext), whole secrets answers (for at most a second).
    site_tokens: AuthCache[SiteCaller] = field(default_factory=AuthCache)
    opened_tokens: OpenedTokens[TokenSet] = field(default_factory=OpenedTokens)
    opened_secrets: OpenedTokens[str] = field(default_factory=OpenedTokens)
    answers: Answers = field(default_factory=Answers)
    # Set while this process hears the revocations of others (`cache_notices`, PostgreSQL).
    hears_revocations: threading.Event = field(default_factory=threading.Event)
    # Function tokens being minted, written many to a transaction (`function_tokens`).
    minted_tokens: GroupCommit[Any] = field(default_factory=GroupCommit)
    # Providers already logged for granting tokens too short-lived to refresh once a
    # lifetime (`refresh._log_short_lived`).
    short_lived_providers: set[str] = field(default_factory=set)
    # This broker's Prometheus registry and instruments (`apiauth.metrics`).
    metrics: Metrics = field(default_factory=lambda: Metrics(enabled=False))

    @classmethod
    def open(
        cls, read_cache_seconds: float = SITE_TOKEN_CACHE_SECONDS, metrics: Metrics | None = None
    ) -> Runtime:
        """A runtime whose one-second memories last `read_cache_seconds`
        (`APIAUTH_READ_CACHE_SECONDS`; 0 asks the database on every read), recording into
        `metrics` (by default a registry no one scrapes)."""
        return cls(
            site_tokens=AuthCache(seconds=read_cache_seconds),
            answers=Answers(seconds=read_cache_seconds),
            metrics=metrics or Metrics(enabled=False),
        )
