"""Many small writes of the same kind in one transaction, without waiting for a timer: the
first caller writes its own row and every row queued behind it meanwhile; whoever arrives
while a write is under way waits for the next one. Under load a transaction carries dozens
of rows (one commit, one flush of the database's log, one round trip of each statement);
alone, a caller writes at once, as if there were no batching at all.

Each caller gets its own outcome: if a batch fails, its rows are written again one at a
time, so a row that cannot be stored fails only its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Pending(Generic[T]):
    __slots__ = ("error", "item", "lead", "woken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.woken = threading.Event()
        self.lead = False
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """See the module's docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Pending[T]] = []
        self._writing = False

    def submit(self, item: T, write: Callable[[Sequence[T]], None]) -> None:
        """Store `item` (with whatever else is queued) by `write`, which stores a batch in
        one transaction and is the same for every caller of one `GroupCommit`; returns once
        the item is committed, or raises what storing it raised."""
        pending = _Pending(item)
        with self._lock:
            self._queue.append(pending)
            if not self._writing:
                self._writing = True
                pending.lead = True
        if not pending.lead:
            pending.woken.wait()
        if pending.lead:
            self._lead(pending, write)
        if pending.error is not None:
            raise pending.error

    def _lead(self, leader: _Pending[T], write: Callable[[Sequence[T]], None]) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            _store(batch, write)
        finally:
            with self._lock:
                # Whoever queued meanwhile: the first of them writes the next batch.
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].woken.set()
                else:
                    self._writing = False
            for pending in batch:
                if pending is not leader:
                    pending.woken.set()


def _store(batch: list[_Pending[T]], write: Callable[[Sequence[T]], None]) -> None:
    try:
        write([pending.item for pending in batch])
        return
    except Exception as exc:  # one bad row must not fail the others: one at a time
        if len(batch) == 1:
            batch[0].error = exc
            return
    for pending in batch:
        try:
            write([pending.item])
        except Exception as exc:
            pending.error = exc
