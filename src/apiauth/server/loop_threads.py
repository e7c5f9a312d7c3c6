"""Threads of their own for blocking calls awaited on the event loop, with a lighter hop than
`loop.run_in_executor`: a call and its asyncio future go through one queue, and the result
comes back with one `call_soon_threadsafe`, without the `concurrent.futures.Future` (and the
`threading.Condition` it makes) that an executor creates per call - which cost more than a
first read's query (benchmarks/profiles/).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LoopThreads"]

T = TypeVar("T")

_Work = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any], Any]


class LoopThreads:
    """`count` daemon threads, started when first needed, stopped by `shutdown`."""

    def __init__(self, count: int, name: str) -> None:
        self.count = count
        self.name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped = False

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """`call()` on one of the threads, with the current task's context (its log fields);
        its result or exception in the returned future. Call from the event loop."""
        if self._stopped:
            raise RuntimeError(f"the {self.name} threads are shut down")
        if not self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, call, contextvars.copy_context()))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for index in range(self.count):
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}_{index}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            loop, future, call, context = work
            try:
                result = context.run(call)
            except BaseException as exc:  # to the awaiting task, as an executor would
                _answer(loop, future, None, exc)
            else:
                _answer(loop, future, result, None)
            del work, future, call, context

    def shutdown(self) -> None:
        """Let the threads finish what they run and stop; calls queued after are refused."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody awaits it
        loop.call_soon_threadsafe(settle)
