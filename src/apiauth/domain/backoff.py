"""How long to wait before trying again after failures - one rule for refreshes and for
deploy hook and webhook deliveries.

Doubling from a base, capped, with jitter so that many things failing together (a provider's
outage, a receiver that is down) do not come back together; the jitter only ever adds, so no
attempt comes sooner than the schedule says, nor sooner than the other side asked
(`Retry-After`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["JITTER", "Backoff", "Failures"]

# Up to this fraction of the delay is added at random.
JITTER = 0.2


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    max_seconds: float

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt after `failures` in a row: the base after the
        first, doubling after each one more, at most `max_seconds`, plus jitter; never less
        than `retry_after`."""
        nominal = min(self.max_seconds, self.base_seconds * 2.0 ** max(0, failures - 1))
        jittered = nominal * (1 + random.uniform(0, JITTER))  # noqa: S311 (jitter, not a secret)
        return max(jittered, retry_after or 0.0)


class Failures:
    """A background worker's failed rounds in a row, and how long to pause after the latest:
    the pause doubles with each (`Backoff`), so that a database that stays away, or a row
    that keeps failing, is retried ever less often instead of in a busy loop; one good round
    starts again from the base."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.in_a_row = 0

    def failed(self) -> float:
        """Count a failed round; the seconds to pause before the next."""
        self.in_a_row += 1
        return self.backoff.delay(self.in_a_row)

    def succeeded(self) -> None:
        self.in_a_row = 0
