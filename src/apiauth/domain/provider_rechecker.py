"""The provider re-checker: a thread that fetches the metadata of providers added by URL
again (`provider_rechecks.recheck_due_providers`) when their time comes, and soon after one of
their connections failed to refresh (it looks every `FAILURE_LOOK_SECONDS`)."""

from __future__ import annotations

import logging

from apiauth.domain import provider_rechecks
from apiauth.domain.background import BackgroundThread
from apiauth.domain.backoff import Backoff, Failures
from apiauth.domain.broker import Broker

log = logging.getLogger(__name__)

FAILURE_LOOK_SECONDS = 60.0


class ProviderRechecker(BackgroundThread):
    thread_name = "apiauth-rechecks"

    def __init__(self, broker: Broker, *, look_seconds: float = FAILURE_LOOK_SECONDS) -> None:
        super().__init__()
        self.broker = broker
        self.look_seconds = look_seconds

    def run(self) -> None:
        # The database away: the usual look, then doubling while it stays away (at most 30 min).
        failures = Failures(Backoff(self.look_seconds, 1800.0))
        while not self.stopping.is_set():
            wait = self.look_seconds
            try:
                provider_rechecks.recheck_due_providers(self.broker)
                soonest = provider_rechecks.next_recheck_at(self.broker)
            except Exception as exc:
                wait = failures.failed()
                log.warning("provider re-checks failed (%s); trying again", type(exc).__name__)
                soonest = None
            else:
                failures.succeeded()
            if soonest is not None:
                wait = min(wait, max(1.0, (soonest - self.broker.clock()).total_seconds()))
            self.stopping.wait(wait)
