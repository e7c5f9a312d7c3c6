"""Function tokens minted at once share transactions (`group_commit`): whoever arrives while
a write is under way is written with the next one, each caller learns its own outcome, and a
caller alone is written at once."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from apiauth.domain.group_commit import GroupCommit

pytestmark = pytest.mark.fast


class _Store:
    """A write that holds its first batch until told, and refuses the item "bad"."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()

    def write(self, items: Sequence[str]) -> None:
        if not self.batches:
            self.batches.append(list(items))
            self.first_started.set()
            self.release_first.wait(10)
            return
        if "bad" in items:
            raise ValueError("refused")
        self.batches.append(list(items))


def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    group: GroupCommit[str] = GroupCommit()
    store = _Store()
    errors: dict[str, Exception] = {}

    def submit(item: str) -> None:
        try:
            group.submit(item, store.write)
        except Exception as exc:
            errors[item] = exc

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    assert store.first_started.wait(10)
    others = [threading.Thread(target=submit, args=(f"t{i}",)) for i in range(8)]
    for thread in others:
        thread.start()
    while len(group._queue) < 8:  # every other caller is waiting behind the first write
        threading.Event().wait(0.01)
    store.release_first.set()
    for thread in [first, *others]:
        thread.join(10)
    assert errors == {}
    assert store.batches[0] == ["first"]
    assert sorted(store.batches[1]) == sorted(f"t{i}" for i in range(8))
    assert len(store.batches) == 2


def test_a_refused_item_fails_only_its_own_caller() -> None:
    group: GroupCommit[str] = GroupCommit()
    store = _Store()
    store.release_first.set()
    group.submit("alone", store.write)  # written at once, in a batch of its own
    assert store.batches == [["alone"]]

    written: list[list[str]] = []

    def write(items: Sequence[str]) -> None:
        if "bad" in items:
            raise ValueError("refused")
        written.append(list(items))

    results: dict[str, str] = {}
    gate = threading.Barrier(6)

    def submit(item: str) -> None:
        gate.wait(10)
        try:
            group.submit(item, write)
            results[item] = "stored"
        except ValueError:
            results[item] = "refused"

    threads = [threading.Thread(target=submit, args=(i,)) for i in ("a", "b", "bad", "c", "d", "e")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {
        "a": "stored",
        "b": "stored",
        "bad": "refused",
        "c": "stored",
        "d": "stored",
        "e": "stored",
    }
    assert sorted(item for batch in written for item in batch) == ["a", "b", "c", "d", "e"]
