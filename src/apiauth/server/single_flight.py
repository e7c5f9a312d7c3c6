"""One database lookup at a time per key, however many requests arrive for it at once.

When a remembered answer lapses (each second), every request in flight for that token misses
together; without this each would take a worker thread and a database connection to ask the
same question. With it, the first asks and the others await its answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from apiauth.server.loop_threads import LoopThreads

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run a blocking call in a worker thread, shared by concurrent callers of one key. Put
    what makes an answer stale into the key (a cache generation): a caller arriving after a
    change starts its own call instead of joining one that began before it."""

    def __init__(self, threads: LoopThreads | None = None, max_age: float | None = None) -> None:
        """`threads`: where the calls run (by default the framework's pool). `max_age`: a
        caller does not join a call that began longer ago than this (seconds) - its answer
        may predate a change the caller must see, such as a token revoked on another replica
        a second before (a slow lookup, under load) - but starts its own."""
        self._pending: dict[Hashable, tuple[float, asyncio.Future[T]]] = {}
        self._threads = threads
        self._max_age = max_age

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, key: Hashable, call: Callable[[], T]) -> T:
        # The call is a task of its own: a caller that goes away (client disconnected)
        # cancels only its own wait, never the others'.
        return await asyncio.shield(self.start(key, call))

    def start(self, key: Hashable, call: Callable[[], T]) -> asyncio.Future[T]:
        """The call under way for `key`, started now if there is none. Not awaited, it runs
        in the background: its result and any error are left to the cache it fills."""
        now = time.monotonic()
        pending = self._pending.get(key)
        if pending is not None and (self._max_age is None or now - pending[0] <= self._max_age):
            return pending[1]
        task: asyncio.Future[T]
        if self._threads is None:
            task = asyncio.ensure_future(run_in_threadpool(call))
        else:
            task = self._threads.run(call)
        self._pending[key] = (now, task)
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: Hashable, task: asyncio.Future[T]) -> None:
        pending = self._pending.get(key)
        if pending is not None and pending[1] is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved: no warning if every waiter went away
