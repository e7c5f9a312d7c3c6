"""Sign-in rate limiting: failed attempts per (client address, email), in memory.

In memory on purpose: it only has to slow down guessing against one process, and a restart
that forgets it costs an attacker a restart of our server, which they cannot cause.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from threading import Lock

MAX_FAILURES = 5
WINDOW_SECONDS = 300.0
_MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, address: str, email: str) -> int | None:
        """Seconds until another attempt is allowed, or None when one is allowed now."""
        key = (address, email.strip().lower())
        now = self.clock()
        with self._lock:
            failures = self._recent(key, now)
            if len(failures) < self.max_failures:
                return None
            return max(1, int(failures[0] + self.window - now) + 1)

    def failed(self, address: str, email: str) -> None:
        key = (address, email.strip().lower())
        now = self.clock()
        with self._lock:
            if len(self._failures) >= _MAX_KEYS:
                self._forget_old(now)
            failures = self._recent(key, now)
            failures.append(now)
            self._failures[key] = failures

    def succeeded(self, address: str, email: str) -> None:
        with self._lock:
            self._failures.pop((address, email.strip().lower()), None)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
            del self._failures[key]
