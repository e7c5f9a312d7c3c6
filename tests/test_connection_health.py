"""Health as a state machine (issue 17, SPEC §7): `connection.refresh_failed` fires once per
degradation, not on every retry; `connection.recovered` when a refresh succeeds after
failures; the connection resource says since when it is degraded. The
refresher's rounds are driven by the test against the in-process app (the fast tier) and its
emulator (faults at the token endpoint); SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from apiauth.domain import refresh
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Connection
from tests.in_process import InProcessServer
from tests.live_site import Site as LiveSite
from tests.servers import HookReceiver

pytestmark = pytest.mark.fast


@pytest.fixture
def server(app: InProcessServer) -> InProcessServer:
    """The app in-process: no refresher runs but the test's rounds."""
    return app


class Site(LiveSite):
    def refresh_round(self) -> list[str]:
        """Make the connection due (past any backoff or minimum interval) and run one
        refresher round; the outcomes' kinds."""
        with transaction(self.broker.sessions) as db:
            db.execute(
                update(Connection).values(
                    refresh_due_at=self.broker.clock(), refresh_not_before=None
                )
            )
        batch = refresh.lease_due_connections(self.broker, 100)
        outcomes = [
            refresh.attempt_refresh(self.broker, leased, batch.clients) for leased in batch.leased
        ]
        return [o.kind for o in refresh.store_outcomes(self.broker, outcomes, batch.sites)]

    def events(self) -> list[str]:
        with self.broker.sessions() as db:
            kinds = db.scalars(
                select(AuditEvent.kind)
                .where(AuditEvent.kind.like("connection.re%"))
                .order_by(AuditEvent.id)
            ).all()
        return [kind for kind in kinds if kind != "connection.refreshed"]

    def resource(self) -> dict[str, object]:
        answer = self.http.get(
            f"{self.server.url}/api/v1/sites/my-site/connections/box",
            headers={"Authorization": f"Bearer {self.pat}"},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body


def test_refresh_failed_fires_once_per_degradation_and_recovered_when_it_ends(
    server: InProcessServer, http: httpx.Client, hook_receiver: HookReceiver
) -> None:
    site = Site(server, http)
    answer = http.patch(
        f"{server.url}/api/v1/sites/my-site",
        json={"webhook_url": hook_receiver.url},
        headers={"Authorization": f"Bearer {site.pat}"},
    )
    assert answer.status_code == 200, answer.text
    site.connect("box")
    assert site.resource()["degraded_since"] is None

    site.fault("box", "token", times=3, status=503)
    assert [site.refresh_round() for _ in range(3)] == [["failed"]] * 3
    assert site.events() == ["connection.refresh_failed"]  # once, not three times
    degraded = site.resource()
    assert degraded["status"] == "connected"
    since = degraded["degraded_since"]
    assert isinstance(since, str)
    assert site.resource()["degraded_since"] == since  # the first failure, kept

    assert site.refresh_round() == ["fresh"]
    assert site.events() == ["connection.refresh_failed", "connection.recovered"]
    assert site.resource()["degraded_since"] is None
    # A new degradation is a new event.
    site.fault("box", "token", times=1, status=503)
    assert site.refresh_round() == ["failed"]
    assert site.events()[-1] == "connection.refresh_failed"
    assert site.events().count("connection.refresh_failed") == 2

    hooked = [post["event"] for post in hook_receiver.wait_for(5)]
    assert "connection.recovered" in hooked
    assert hooked.count("connection.refresh_failed") == 2


def test_a_waiter_shares_the_outcome_of_the_refresh_it_waited_for(
    server: InProcessServer, http: httpx.Client
) -> None:
    """A refresh asked for (the proxy's 401, a person) while another process holds the lease
    waits for it; when that one gives up with a failure, the waiter returns the row as it
    stands instead of asking the provider again."""
    site = Site(server, http)
    site.connect("box")
    broker = server.broker
    with transaction(broker.sessions) as db:
        connection_id = db.scalars(select(Connection.id)).one()
        db.execute(
            update(Connection).values(
                claimed_by="another-process",
                claim_expires_at=broker.clock() + timedelta(seconds=30),
                status="refreshing",
            )
        )
    results: list[refresh.Refreshed] = []
    waiter = threading.Thread(
        target=lambda: results.append(
            refresh.refresh_connection(
                broker, connection_id, refresh.is_refreshable, check_first=False
            )
        )
    )
    waiter.start()
    time.sleep(0.5)
    with transaction(broker.sessions) as db:  # the other process's refresh failed
        db.execute(
            update(Connection).values(
                claimed_by=None,
                claim_expires_at=None,
                status="connected",
                last_error="Box did not answer in time",
                failure_count=1,
            )
        )
    waiter.join(timeout=30)
    [result] = results
    assert result.connection.last_error == "Box did not answer in time"
    assert site.stats("box")["refreshes"] == 0
