"""Concurrent lookups of one key share one call, but nobody joins a call that began longer
ago than its answer may be used: a request arriving 1 s after a revocation on another
replica must not be answered by a (slow) lookup that read the database before it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from apiauth.server.single_flight import SingleFlight

pytestmark = pytest.mark.fast


def test_a_call_older_than_max_age_is_not_joined() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        release.wait(5)
        return len(calls)

    async def scenario() -> tuple[int, int, int]:
        flights = SingleFlight[int](max_age=0.2)
        first = flights.start("token", slow)
        joined = flights.start("token", slow)  # at once: the same call
        assert joined is first
        await asyncio.sleep(0.3)  # the first call is now older than its answer may be used
        late = flights.start("token", slow)
        assert late is not first
        release.set()
        return await first, await joined, await late

    first, joined, late = asyncio.run(scenario())
    assert len(calls) == 2
    assert first == joined
    assert late == 2


def test_without_max_age_every_caller_joins_the_call_under_way() -> None:
    release = threading.Event()

    async def scenario() -> bool:
        flights = SingleFlight[int]()
        first = flights.start("token", lambda: release.wait(5) and 1)
        await asyncio.sleep(0.3)
        same = flights.start("token", lambda: 2) is first
        release.set()
        await first
        return same

    assert asyncio.run(scenario())
