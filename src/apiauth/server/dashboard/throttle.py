"""Sign-in rate limiting: failed attempts per (client address, email), in memory.

In memory on purpose: it only has to slow down guessing against one process, and a restart
that forgets it costs an attacker a restart of our server, which they cannot cause. Only
failures count, and a success forgets them: a `SlidingWindow` of failures per key.

An attempt is counted as a failure *before* its password is checked (`attempt`, one atomic
check-and-record) and forgiven when it succeeds: so guesses sent in parallel cannot all pass
the check before the first failure is recorded - at most `max_failures` passwords are
checked per window, however many arrive at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from apiauth.server.rate_limits import SlidingWindow

MAX_FAILURES = 5
WINDOW_SECONDS = 300.0


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures = SlidingWindow(max_failures, window_seconds, clock)

    @staticmethod
    def _key(address: str, email: str) -> tuple[str, str]:
        return (address, email.strip().lower())

    def attempt(self, address: str, email: str) -> int | None:
        """Begin one attempt: None when it may check the password (counted as a failure
        until `succeeded`), else seconds until another attempt is allowed."""
        return self._failures.take(self._key(address, email))

    def retry_after(self, address: str, email: str) -> int | None:
        """Seconds until another attempt is allowed, or None when one is allowed now."""
        return self._failures.retry_after(self._key(address, email))

    def succeeded(self, address: str, email: str) -> None:
        self._failures.clear(self._key(address, email))
