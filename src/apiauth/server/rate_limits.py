"""Rate limits, in memory: requests per token, OAuth flows started per member and per
client address, requests with a wrong token per client address, and (in
`dashboard/throttle.py`, on `SlidingWindow`) failed sign-ins. Client addresses are those of
`client_address.py`.

In memory on purpose: a limit only has to keep one caller from starving the others or
guessing fast, and a shared counter would cost every read a write. The per-token limit holds
for the deployment all the same: each server process enforces its share of it, the
configured rate (and burst) divided by the server processes it sees alive - every
`serve --workers` process and every replica writes a heartbeat (`replicas.serving_replicas`,
counted after each beat). A caller spread over the processes (a load balancer, the kernel
handing connections to the workers) gets the configured rate in all; one whose requests all
reach a single process gets that process's share. A process that starts or stops is counted
by the others within a heartbeat (30 s). The other limits are per process.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from threading import Lock

from fastapi import Request

from apiauth.config import Settings
from apiauth.domain.token_format import hash_token
from apiauth.errors import RateLimited

# Keys beyond this are forgotten oldest-idle first: a flood of new keys costs memory once.
MAX_KEYS = 10_000
OAUTH_START_WINDOW_SECONDS = 60.0
BAD_TOKEN_WINDOW_SECONDS = 60.0


class TokenBucket:
    """`rate` events per second on average, `burst` at once, per key."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key: (tokens, at)
        self._lock = Lock()

    def take(self, key: Hashable) -> float | None:
        """Spend one event for `key`: None when allowed, else seconds until one is."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if len(self._buckets) >= MAX_KEYS:
                # dicts keep insertion order, and a used key is re-inserted: oldest idle first.
                del self._buckets[next(iter(self._buckets))]
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class SlidingWindow:
    """At most `limit` events per key within any `window` seconds."""

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self._events: dict[Hashable, deque[float]] = {}
        self._lock = Lock()

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        events = self._events.get(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def retry_after(self, key: Hashable) -> int | None:
        """Whole seconds until another event is allowed, or None when one is allowed now."""
        now = self.clock()
        with self._lock:
            events = self._recent(key, now)
            if len(events) < self.limit:
                return None
            return max(1, int(events[0] + self.window - now) + 1)

    def take(self, key: Hashable) -> int | None:
        """Check and record one event at once (under one lock): None when it was allowed
        and is counted, else whole seconds until one is. Parallel callers cannot all pass
        the check before any of them records."""
        now = self.clock()
        with self._lock:
            events = self._recent(key, now)
            if len(events) >= self.limit:
                return max(1, int(events[0] + self.window - now) + 1)
            if len(self._events) >= MAX_KEYS and key not in self._events:
                self._forget_old(now)
            events.append(now)
            self._events[key] = events
            return None

    def record(self, key: Hashable) -> None:
        now = self.clock()
        with self._lock:
            if len(self._events) >= MAX_KEYS:
                self._forget_old(now)
            events = self._recent(key, now)
            events.append(now)
            self._events[key] = events

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._events.pop(key, None)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, v in self._events.items() if not v or v[-1] <= now - self.window]:
            del self._events[key]


class RateLimits:
    """The server's request limits, built from the settings; a limit of 0 is no limit."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_token_rate = settings.rate_limit_per_token
        self._per_token_burst = settings.rate_limit_burst
        self.per_token = (
            TokenBucket(settings.rate_limit_per_token, settings.rate_limit_burst, clock)
            if settings.rate_limit_per_token > 0
            else None
        )
        starts = settings.rate_limit_oauth_starts
        self.oauth_starts = (
            SlidingWindow(starts, OAUTH_START_WINDOW_SECONDS, clock) if starts > 0 else None
        )
        bad = settings.rate_limit_bad_tokens
        self.bad_tokens = SlidingWindow(bad, BAD_TOKEN_WINDOW_SECONDS, clock) if bad > 0 else None

    def check_address(self, address: str) -> None:
        """Before a token is looked up: an address that sent too many wrong tokens waits."""
        if self.bad_tokens is None:
            return
        wait = self.bad_tokens.retry_after(address)
        if wait is not None:
            raise RateLimited(
                f"too many requests with a wrong token from this address (at most "
                f"{self.bad_tokens.limit} a minute); try again in {wait} s",
                retry_after=wait,
            )

    def address_limited(self, address: str) -> bool:
        """`check_address` without raising: True when `address` must wait."""
        return self.bad_tokens is not None and self.bad_tokens.retry_after(address) is not None

    def bad_token(self, address: str) -> None:
        """A request from `address` carried a token that was refused."""
        if self.bad_tokens is not None:
            self.bad_tokens.record(address)

    def share_among(self, processes: int) -> None:
        """Enforce this process's share of the per-token limit when `processes` server
        processes are live (see the module's docstring)."""
        if self.per_token is None:
            return
        processes = max(1, processes)
        self.per_token.rate = self._per_token_rate / processes
        self.per_token.burst = max(1.0, self._per_token_burst / processes)

    def check_token(self, token: str) -> None:
        """One request made with `token` (keyed by its hash: the token itself is not kept)."""
        if self.per_token is None:
            return
        wait = self.per_token.take(hash_token(token))
        if wait is not None:
            raise RateLimited(
                "too many requests with this token; slow down and retry after the "
                "Retry-After header's seconds",
                retry_after=max(1, math.ceil(wait)),
            )

    def allow_token_hash(self, token_hash: str) -> bool:
        """`check_token` for a token already hashed (`hash_token`): False when over the
        limit (a refused request spends nothing, so the caller may still raise the 429 by
        `check_token`)."""
        return self.per_token is None or self.per_token.take(token_hash) is None

    def check_oauth_start(self, member_id: str, address: str) -> None:
        """One OAuth flow started by a member from an address: both must be under the limit."""
        if self.oauth_starts is None:
            return
        keys = [("member", member_id), ("address", address)]
        waits = [w for w in (self.oauth_starts.retry_after(k) for k in keys) if w is not None]
        if waits:
            raise RateLimited(
                f"too many connections started (at most {self.oauth_starts.limit} a minute); "
                f"try again in {max(waits)} s",
                retry_after=max(waits),
            )
        for key in keys:
            self.oauth_starts.record(key)


def rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits
