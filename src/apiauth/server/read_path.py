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

from datetime import datetime
from functools import partial

from apiauth.domain.broker import Broker
from apiauth.domain.connections import answer_key, remembered_secrets, secrets_answer
from apiauth.domain.read_caches import Answer
from apiauth.domain.sites import SiteCaller, authenticate_site_token
from apiauth.domain.token_format import hash_token
from apiauth.server.single_flight import SingleFlight


class ReadPath:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._site_lookups = SingleFlight[SiteCaller]()
        self._secret_reads = SingleFlight[Answer]()

    def remembered_caller(self, token_hash: str, now: datetime) -> SiteCaller | None:
        """The caller of a token found valid within the last second, if any."""
        return self.broker.site_tokens.get(token_hash, now)

    async def caller(self, token: str) -> SiteCaller:
        """The site a site or function token reads (`authenticate_site_token`)."""
        token_hash = hash_token(token)
        caller = self.remembered_caller(token_hash, self.broker.clock())
        if caller is None:
            caller = await self._site_lookups.run(
                self._lookup_key(token_hash), partial(authenticate_site_token, self.broker, token)
            )
        return caller

    async def answer(self, caller: SiteCaller, whose: str) -> Answer:
        """The encoded secrets answer (`connections.secrets_answer`)."""
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
        if broker.site_tokens.renewal_due(token_hash):
            self._site_lookups.start(
                self._lookup_key(token_hash),
                partial(authenticate_site_token, broker, token, renew=True),
            )
        if broker.answers.renewal_due(answer_key(caller, whose)):
            self._secret_reads.start(
                self._answer_key(caller, whose), partial(secrets_answer, broker, caller, whose)
            )

    def _lookup_key(self, token_hash: str) -> tuple[str, int]:
        return token_hash, self.broker.site_tokens.generation

    def _answer_key(self, caller: SiteCaller, whose: str) -> tuple[tuple[str, str], int]:
        return answer_key(caller, whose), self.broker.answers.generation
