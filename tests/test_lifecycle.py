"""The token lifecycle against an emulated provider that misbehaves on request: the
background refresher, transient failures with backoff, `invalid_grant`, no refresh storms,
tokens without an expiry checked on a schedule, and refreshes asked for by a person.
The fast tier: the app and its emulator in-process, SQLite and PostgreSQL; the test is the
background refresher, round by round, and moves time for the broker and the emulated
providers alike (`InProcessServer.advance`) instead of waiting for it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from apiauth.domain import connect_flow, refresh
from apiauth.domain.backoff import Backoff
from apiauth.store.db import transaction
from apiauth.store.models import Connection
from tests.consent import consent
from tests.in_process import InProcessServer
from tests.live_site import Site as LiveSite

pytestmark = pytest.mark.fast

TTL = 4
MARGIN = 2


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of minutes between attempts, so that a test sees several."""
    monkeypatch.setattr(refresh, "BACKOFF", Backoff(base_seconds=0.5, max_seconds=2.0))


@pytest.fixture
def app_settings() -> dict[str, object]:
    return {
        "emulator_token_ttl": TTL,
        "refresh_margin_seconds": MARGIN,
        "validate_interval_seconds": 2,
        "http_timeout_seconds": 1.0,
        "refresh_lease_seconds": 5,
    }


class Site(LiveSite):
    def __init__(self, app: InProcessServer, http: httpx.Client) -> None:
        super().__init__(app, http)
        self.app = app


@pytest.fixture
def site(app: InProcessServer, http: httpx.Client) -> Site:
    return Site(app, http)


STEP = 0.1


def run_until(
    site: Site, condition: Callable[[], bool], seconds: float, *, reads: int = 0
) -> float:
    """The server running for at most `seconds`, STEP by STEP: the refresher's round, then
    `reads` reads of the site's secrets, until `condition` holds; how long it took."""
    server = site.app
    elapsed = 0.0
    while True:
        server.refresher_round()
        for _ in range(reads):
            site.read("box")
        if condition():
            return elapsed
        assert elapsed < seconds, "the condition did not come true in time"
        server.advance(STEP)
        elapsed += STEP


def test_the_refresher_refreshes_before_expiry_without_any_reader(site: Site) -> None:
    site.connect("box")
    first = site.connection("box")
    run_until(site, lambda: site.stats("box")["refreshes"] >= 2, 4 * TTL)
    later = site.connection("box")
    assert later.last_refreshed_at is not None
    assert later.expires_at is not None
    assert first.expires_at is not None
    assert later.expires_at > first.expires_at
    assert later.status == "connected"
    assert site.stats("box")["refresh_token_reuse"] == 0


def test_transient_failures_keep_the_connection_and_are_retried_with_backoff(
    site: Site,
) -> None:
    site.connect("spotify")
    bearer = site.read("spotify")["bearer_token"]
    site.fault("spotify", "token", times=2, status=503, body={"error": "temporarily_unavailable"})
    run_until(site, lambda: site.connection("spotify").last_error is not None, 2 * TTL)
    failing = site.connection("spotify")
    assert failing.status == "connected"  # never needs_reauth
    assert failing.last_error is not None
    assert "503" in failing.last_error
    served = site.read("spotify")
    if served["is_logged_in"]:
        assert site.accepted("spotify", served["bearer_token"])
    # Retried with backoff (0.5 s, then 1 s, +20 % jitter at most), not at once.
    retried = run_until(
        site,
        lambda: (
            site.stats("spotify")["refreshes"] >= 1
            and site.connection("spotify").last_error is None
        ),
        3 * TTL,
    )
    assert retried >= 0.5 + 1.0 - STEP
    assert site.stats("spotify")["faults_served"] == 2
    recovered = site.connection("spotify")
    assert recovered.last_error is None
    assert recovered.status == "connected"
    fresh = site.read("spotify")
    assert fresh["bearer_token"] != bearer
    assert site.accepted("spotify", fresh["bearer_token"])


def test_a_429_is_retried_no_sooner_than_retry_after(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", status=429, body={}, headers={"Retry-After": "30"})
    run_until(site, lambda: site.stats("box")["faults_served"] == 1, 2 * TTL)
    assert "429" in (site.connection("box").last_error or "")
    with site.server.broker.sessions() as db:
        row = db.query(Connection).one()
        assert row.refresh_due_at is not None
        assert row.refresh_due_at >= site.server.broker.clock() + timedelta(seconds=25)
    # Nothing asks the provider again for 25 s, however much is read meanwhile; then it does.
    server = site.app
    for _ in range(25):
        server.advance(1)
        server.refresher_round()
        site.read("box")
    assert site.stats("box")["faults_served"] == 1
    assert site.stats("box")["refreshes"] == 0
    run_until(site, lambda: site.stats("box")["refreshes"] == 1, 3 * TTL)
    assert site.connection("box").last_error is None


def test_a_provider_that_does_not_answer_in_time_is_a_transient_failure(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", status=500, delay_seconds=3)
    run_until(site, lambda: "in time" in (site.connection("box").last_error or ""), 3 * TTL)
    assert site.connection("box").status == "connected"  # never needs_reauth
    run_until(site, lambda: site.stats("box")["refreshes"] >= 1, 3 * TTL)
    assert site.connection("box").status == "connected"


def test_invalid_grant_marks_the_connection_for_reauthorization(site: Site) -> None:
    site.connect("box")
    site.fault(
        "box", "token", status=400, body={"error": "invalid_grant", "error_description": "gone"}
    )
    run_until(site, lambda: site.connection("box").status == "needs_reauth", 3 * TTL)
    view = site.connection("box")
    assert view.last_error is not None
    assert "invalid_grant" in view.last_error
    run_until(site, lambda: site.read("box")["is_logged_in"] is False, 2 * TTL)
    assert site.read("box")["bearer_token"] is None


def test_a_failing_provider_is_not_stormed_however_many_readers_arrive(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", times=1000, status=500, body={})
    server = site.app
    reads = 0
    elapsed = 0.0
    while elapsed < 3 * TTL:  # three reads every 0.1 s, the refresher running between
        server.refresher_round()
        for _ in range(3):
            site.read("box")
            reads += 1
        server.advance(STEP)
        elapsed += STEP
    attempts = site.stats("box")["faults_served"]
    # Due after 3.2 s, then backoff 0.5 s, 1 s, 2 s, 2 s … (+20 % jitter) up to 12 s: a
    # handful of attempts, not `reads`.
    assert reads > 50
    assert 3 <= attempts <= 10
    assert site.connection("box").status == "connected"  # never needs_reauth


def test_a_token_without_expiry_is_checked_and_refreshed_when_refused(site: Site) -> None:
    # Salesforce's answer has no expires_in, but its session times out (the emulator's after
    # TTL seconds, like an org's 2 hours): the checks find it refused and refresh, no fault
    # injected.
    site.connect("salesforce")
    assert site.connection("salesforce").expires_at is None
    bearer = site.read("salesforce")["bearer_token"]
    run_until(site, lambda: site.stats("salesforce")["refreshes"] >= 1, 15)
    assert site.stats("salesforce")["userinfo_rejected"] >= 1
    fresh = site.read("salesforce")["bearer_token"]
    assert fresh != bearer
    assert site.accepted("salesforce", fresh)


def test_a_person_can_refresh_a_connection_now(site: Site) -> None:
    site.connect("stripe")
    site.connect("github")
    before = site.read("stripe")["bearer_token"]
    api = f"{site.server.url}/api/v1/sites/my-site/connections"
    headers = {"Authorization": f"Bearer {site.pat}"}
    refreshed = site.http.post(f"{api}/stripe/refresh", headers=headers)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["last_refreshed_at"] is not None
    assert site.read("stripe")["bearer_token"] != before
    github = site.http.post(f"{api}/github/refresh", headers=headers)
    assert github.status_code == 409
    assert "cannot be refreshed" in github.json()["error"]["message"]
    assert site.http.post(f"{api}/box/refresh", headers=headers).status_code == 404


def test_changing_scopes_keeps_the_old_token_until_the_new_one_is_stored(site: Site) -> None:
    site.connect("github")
    old = site.read("github")["bearer_token"]
    start = connect_flow.start_connection(
        site.server.broker, site.owner, "my-site", "github", ["repo", "gist"]
    )
    assert site.read("github")["bearer_token"] == old  # the flow is open, the old one serves
    assert consent(site.http, start.authorize_url).status_code == 200
    now = site.read("github")
    assert now["bearer_token"] != old
    assert now["granted_scopes"] == ["repo", "gist"]


def test_a_lease_left_by_a_dead_process_lapses_and_the_refresh_happens(
    site: Site,
) -> None:
    site.connect("box")
    broker = site.server.broker
    with transaction(broker.sessions) as db:
        db.execute(
            update(Connection).values(
                claimed_by="dead-process",
                claim_expires_at=broker.clock() + timedelta(seconds=2),
                status="refreshing",
                refresh_due_at=broker.clock(),
            )
        )
    server = site.app
    assert server.refresher_round() == []  # held by the dead process: not leased
    lapsed = run_until(site, lambda: site.connection("box").last_refreshed_at is not None, 3 * TTL)
    assert lapsed >= 2 - STEP  # not before its lease lapsed
    view = site.connection("box")
    assert site.stats("box")["refreshes"] == 1
    assert view.status == "connected"  # no longer held by the dead process
    assert isinstance(view.last_refreshed_at, datetime)
