"""The memories of the `/api/v1/secrets` read path, each bounded in size and age.

`AuthCache`: site and function tokens found valid, so that a busy function does not cost a
database lookup per read. Why it is safe: an entry lives at most `SITE_TOKEN_CACHE_SECONDS`
(1 s) from the moment its lookup began, so a token revoked on any replica (rotation,
disable, a site deleted) stops working there within a second, without any message between
replicas. A revocation made in this process clears the cache at once. Only positive answers
are kept: a new token works at once, and a bad token always costs a lookup. An entry keeps
its token's own expiry, checked at every hit, so a function token still dies on the second
its TTL ends. Entries are keyed by the token's SHA-256 hash, never by the token.

`OpenedTokens`: connection token sets already decrypted (see its docstring).

`Answers`: whole `/api/v1/secrets` answers, encoded, for at most a second (see its docstring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, event

SITE_TOKEN_CACHE_SECONDS = 1.0
CAPACITY = 10_000

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    deadline: float  # monotonic
    value: T
    expires_at: datetime | None


class AuthCache(Generic[T]):
    """Positive lookups for at most `seconds` (and never past their own `expires_at`),
    keyed by token hash (`OpenedTokens`: by row id and ciphertext; `Answers`: by site, whose
    and the providers a token names)."""

    def __init__(
        self,
        seconds: float = SITE_TOKEN_CACHE_SECONDS,
        capacity: int = CAPACITY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._monotonic = monotonic
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        # For `apiauth_read_cache_lookups_total`: plain integers, not locked (a race loses a
        # count, never an entry), so that a lookup costs the read path two additions at most.
        self.hits = 0
        self.misses = 0

    @property
    def generation(self) -> int:
        """Changes with every `clear()`."""
        return self._generation

    def begin(self) -> tuple[float, int]:
        """Call before the lookup: its start bounds the entry's life, and a `clear()` that
        happens during the lookup keeps its (possibly stale) answer out of the cache."""
        return self._monotonic(), self._generation

    def get(self, key: Hashable, now: datetime) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.deadline <= self._monotonic() or (
            entry.expires_at is not None and entry.expires_at <= now
        ):
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry.value

    def renewal_due(self, key: Hashable) -> bool:
        """The entry is past half its life: a lookup made now would keep the key answered
        from memory without a gap (the read path starts one in the background)."""
        entry = self._entries.get(key)
        return entry is not None and self._monotonic() >= entry.deadline - self.seconds / 2

    def put(
        self, key: Hashable, value: T, expires_at: datetime | None, began: tuple[float, int]
    ) -> None:
        started, generation = began
        if self.seconds <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._entries) >= self.capacity:
                self._evict()
            self._entries[key] = _Entry(started + self.seconds, value, expires_at)

    def clear(self) -> None:
        """Forget everything (a token was revoked, a connection changed, in this process)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        now = self._monotonic()
        live = {k: e for k, e in self._entries.items() if e.deadline > now}
        if len(live) >= self.capacity:
            live.clear()  # a second's worth of distinct tokens: start over
        self._entries = live


OPENED_TOKENS_SECONDS = 300.0


class OpenedTokens(AuthCache[T]):
    """Token sets already decrypted, keyed by their row id *and* ciphertext: a row whose token
    changed (refresh, re-consent, key rotation) has a new ciphertext and misses, so an answer
    is never stale, and a ciphertext copied to another row misses too and is opened - and
    refused - by the vault. What it saves is the two AES-GCM opens and the JSON parse of each
    token on every read. Bounded in size and age: a plaintext token stays here at most five
    minutes after it was last opened from the database."""

    def __init__(
        self,
        seconds: float = OPENED_TOKENS_SECONDS,
        capacity: int = CAPACITY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(seconds, capacity, monotonic)


@dataclass(frozen=True)
class Answer:
    """One `/api/v1/secrets` answer: the encoded body, and which providers it names (for the
    audit log)."""

    body: bytes
    providers: tuple[str, ...]

    def __repr__(self) -> str:  # the body holds bearer tokens
        return f"Answer(providers={self.providers!r})"


class Answers(AuthCache[Answer]):
    """Encoded secrets answers by what they are made of (site, whose, the providers a token
    names: `secrets_read.answer_key`), so that a busy function's reads, and the first reads
    of the other tokens of its site, cost a dictionary lookup instead of encoding an answer.
    Why it is never stale by more than the promise:

    - an entry lives at most `seconds` (1 s) from the moment its query began, the same bound
      as a revocation on another replica (`AuthCache`);
    - never past the moment a token in it expires or falls due for a refresh (its
      `expires_at`, wall clock), so a reader that would refresh still does;
    - any write to the `connections` table made by this process (a refresh, a connect, a
      disconnect, a lease) forgets every entry when it executes and again when it commits
      (`watch_writes`), and an answer whose query overlapped such a write is not kept.

    The caller's token is checked before every hit (`AuthCache`), so a revoked or expired
    token never reaches an entry."""


_WROTE = "apiauth_wrote"


def written_table(context: Any) -> str | None:
    """The table an executed INSERT, UPDATE or DELETE wrote to, from SQLAlchemy's execution
    context (the statement it compiled), or None for anything else. Every write apiauth
    makes is a Core or ORM statement; SQL written out as text is not looked into."""
    if context is None or not (context.isinsert or context.isupdate or context.isdelete):
        return None
    table = getattr(getattr(context.compiled, "statement", None), "table", None)
    name = getattr(table, "name", None)
    return name if isinstance(name, str) else None


def watch_writes(engine: Engine, tables: frozenset[str], changed: Callable[[], None]) -> None:
    """Call `changed` whenever a statement of this engine writes to one of `tables`, and
    again when that connection goes back to the pool, after its commit or rollback: an
    answer kept in between (while the new rows were not yet visible) is forgotten then, and
    an answer whose query began before it is never kept (`Answers.put`)."""

    @event.listens_for(engine, "after_cursor_execute")
    def _executed(
        conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if written_table(context) in tables:
            conn.info[_WROTE] = True
            changed()

    def _ended(_dbapi_connection: Any, record: Any, *_args: Any) -> None:
        if record is not None and record.info.pop(_WROTE, False):
            changed()

    event.listen(engine, "checkin", _ended)
    event.listen(engine, "invalidate", _ended)
    event.listen(engine, "soft_invalidate", _ended)
