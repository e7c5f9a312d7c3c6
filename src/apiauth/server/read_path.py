"""The secrets read path's memories and the lookups that fill them, in one place for the
three that use them: the fast path (`fast_path.py`), the `current_site` dependency and the
`GET /api/v1/secrets` route.

A remembered caller or answer is used on the event loop. A miss goes to a worker thread, and
concurrent misses of one key share that lookup (`SingleFlight`; the key holds the memory's
generation, so a caller arriving after a change does not join a lookup begun before it).
Past half its second, a memory in use is looked up again in the background (`renew`), so a
steady reader never waits for the database.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime
from functools import partial

from sqlalchemy import Engine, event

from apiauth.domain.broker import Broker
from apiauth.domain.read_caches import Answer
from apiauth.domain.secrets_read import (
    FirstReads,
    answer_key,
    first_read,
    remembered_secrets,
    secrets_answer,
)
from apiauth.domain.sites import SiteCaller, authenticate_site_token
from apiauth.domain.token_format import hash_token
from apiauth.server.loop_threads import LoopThreads
from apiauth.server.single_flight import SingleFlight

# As many as a busy read path keeps busy on 2 cores with PostgreSQL answering in a few
# hundred microseconds; each keeps one database connection (besides the engine's pool).
FIRST_READ_THREADS = 8


class ReadPath:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        # A lookup's answer is good for a second from when it began (SPEC: a revoked token
        # works at most 1 s on another replica): nobody joins one that began before that.
        fresh = broker.runtime.site_tokens.seconds
        self._site_lookups = SingleFlight[SiteCaller](max_age=fresh)
        self._secret_reads = SingleFlight[Answer](max_age=fresh)
        # First reads on threads of their own, each with its driver connection
        # (`FirstReads`): a hop to them costs less than one to the framework's pool.
        self._first_read_threads = LoopThreads(FIRST_READ_THREADS, "apiauth-read")
        self._first_reads = SingleFlight[tuple[SiteCaller, Answer]](
            self._first_read_threads, max_age=fresh
        )
        self._driver_reads = FirstReads(broker, FIRST_READ_THREADS)
        event.listen(broker.engine, "engine_disposed", self._disposed)

    def _disposed(self, _engine: Engine) -> None:
        self._first_read_threads.shutdown()

    def remembered_caller(self, token_hash: str, now: datetime) -> SiteCaller | None:
        """The caller of a token found valid within the last second, if any."""
        return self.broker.runtime.site_tokens.get(token_hash, now)

    async def caller(self, token: str) -> SiteCaller:
        """The site a site or function token reads (`authenticate_site_token`)."""
        token_hash = hash_token(token)
        caller = self.remembered_caller(token_hash, self.broker.clock())
        if caller is None:
            caller = await self._site_lookups.run(
                self._lookup_key(token_hash), partial(authenticate_site_token, self.broker, token)
            )
        return caller

    async def first_read(self, token: str, token_hash: str) -> tuple[SiteCaller, Answer]:
        """The caller and its own answer in one query (`secrets_read.first_read`): a
        token that no memory holds, such as a function token's first read."""
        return await self._first_reads.run(
            self._lookup_key(token_hash),
            partial(first_read, self.broker, token, self._driver_reads),
        )

    async def answer(self, caller: SiteCaller, whose: str) -> Answer:
        """The encoded secrets answer (`secrets_read.secrets_answer`)."""
        answer = remembered_secrets(self.broker, caller, whose, self.broker.clock())
        if answer is None:
            answer = await self._secret_reads.run(
                self._answer_key(caller, whose),
                partial(secrets_answer, self.broker, caller, whose),
            )
        return answer

    def renew(self, token: str, token_hash: str, caller: SiteCaller, whose: str) -> None:
        """Look the caller and the answer up again in the background when past half their
        second; the remembered ones serve meanwhile."""
        broker = self.broker
        if broker.runtime.site_tokens.renewal_due(token_hash):
            self._site_lookups.start(
                self._lookup_key(token_hash),
                partial(authenticate_site_token, broker, token, renew=True),
            )
        if broker.runtime.answers.renewal_due(answer_key(caller, whose)):
            self._secret_reads.start(
                self._answer_key(caller, whose), partial(secrets_answer, broker, caller, whose)
            )

    def _lookup_key(self, token_hash: str) -> tuple[str, int]:
        return token_hash, self.broker.runtime.site_tokens.generation

    def _answer_key(self, caller: SiteCaller, whose: str) -> tuple[Hashable, int]:
        return answer_key(caller, whose), self.broker.runtime.answers.generation
