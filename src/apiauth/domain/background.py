"""The one thread of a background worker (a `server.workers.Worker`): the refresher, the
delivery worker, housekeeping, the provider re-checker, the heartbeat, the cache-notice
listener and a worker process's metrics snapshot all start, stop and wait the same way.

`start` runs `run` on a daemon thread named `thread_name`; `stop` sets `stopping`, wakes the
thread (`wake`, for a worker that sleeps on an event of its own) and waits up to
`stop_wait_seconds` for it to end. `run` loops until `stopping` is set, pausing with
`stopping.wait(seconds)` (or its own event) so that a stop ends the pause at once.
"""

from __future__ import annotations

import threading
from typing import ClassVar

__all__ = ["BackgroundThread"]


class BackgroundThread:
    thread_name: ClassVar[str]
    stop_wait_seconds: float = 5.0

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and wait (at most `stop_wait_seconds`) until it has."""
        self.stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_wait_seconds)

    def wake(self) -> None:
        """End the thread's pause now (it sleeps on `stopping` unless this says otherwise)."""

    def run(self) -> None:
        raise NotImplementedError
