"""The one retry rule of refreshes and deliveries: doubling, capped, jittered only upwards,
never sooner than the provider or receiver asked."""

from __future__ import annotations

import pytest

from apiauth.domain.backoff import JITTER, Backoff
from apiauth.domain.deliveries import MAX_BACKOFF_SECONDS
from apiauth.domain.refresh import BACKOFF

pytestmark = pytest.mark.fast


def test_a_failing_refresh_waits_5_10_20_seconds_and_at_most_15_minutes() -> None:
    for failures, nominal in [(1, 5.0), (2, 10.0), (3, 20.0), (9, 900.0), (40, 900.0)]:
        delays = [BACKOFF.delay(failures) for _ in range(200)]
        assert nominal <= min(delays)
        assert max(delays) <= nominal * (1 + JITTER)


def test_retries_that_fail_together_do_not_come_back_together() -> None:
    delays = {round(BACKOFF.delay(3), 6) for _ in range(50)}

    assert len(delays) > 40


def test_a_retry_is_never_sooner_than_the_provider_asked() -> None:
    assert BACKOFF.delay(1, retry_after=120.0) == 120.0
    assert BACKOFF.delay(1, retry_after=None) >= 5.0


def test_delivery_retries_double_from_the_configured_wait_up_to_an_hour() -> None:
    backoff = Backoff(base_seconds=2.0, max_seconds=MAX_BACKOFF_SECONDS)

    assert 8.0 <= backoff.delay(3) <= 8.0 * (1 + JITTER)
    assert MAX_BACKOFF_SECONDS <= backoff.delay(30) <= MAX_BACKOFF_SECONDS * (1 + JITTER)
