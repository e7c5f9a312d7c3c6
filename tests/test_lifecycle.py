"""The token lifecycle against an emulated provider that misbehaves on request: the
background refresher, transient failures with backoff, `invalid_grant`, no refresh storms,
tokens without an expiry checked on a schedule, and refreshes asked for by a person.
A live server (real HTTP), SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from apiauth.domain import connections, refresh
from conftest import LiveServer, running_server
from consent import consent
from live_site import Site

TTL = 4
MARGIN = 2


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of minutes between attempts, so that a test sees several."""
    monkeypatch.setattr(refresh, "BACKOFF_BASE_SECONDS", 0.5)
    monkeypatch.setattr(refresh, "BACKOFF_MAX_SECONDS", 2.0)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    with running_server(
        tmp_path,
        database_url,
        emulator_token_ttl=TTL,
        refresh_margin_seconds=MARGIN,
        validate_interval_seconds=2,
        http_timeout_seconds=1.0,
        refresh_lease_seconds=5,
        # These tests read as fast as they can on purpose (refresh storms); the per-token
        # rate limit, which would answer 429 first, has tests of its own.
        rate_limit_per_token=100_000,
        rate_limit_burst=100_000,
    ) as live:
        yield live


@pytest.fixture
def site(server: LiveServer, http: httpx.Client) -> Site:
    return Site(server, http)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.1)


def test_the_refresher_refreshes_before_expiry_without_any_reader(site: Site) -> None:
    site.connect("box")
    first = site.connection("box")
    wait_until(lambda: site.stats("box")["refreshes"] >= 2, timeout=4 * TTL)
    later = site.connection("box")
    assert later.last_refreshed_at is not None
    assert later.expires_at is not None
    assert first.expires_at is not None
    assert later.expires_at > first.expires_at
    assert later.status in ("connected", "refreshing")  # the next refresh may be under way
    assert site.stats("box")["refresh_token_reuse"] == 0


def test_transient_failures_keep_the_connection_and_are_retried_with_backoff(
    site: Site,
) -> None:
    site.connect("spotify")
    bearer = site.read("spotify")["bearer_token"]
    site.fault("spotify", "token", times=2, status=503, body={"error": "temporarily_unavailable"})
    wait_until(lambda: site.connection("spotify").last_error is not None, timeout=2 * TTL)
    failing = site.connection("spotify")
    assert failing.status in ("connected", "refreshing")  # never needs_reauth
    assert failing.last_error is not None
    assert "503" in failing.last_error
    served = site.read("spotify")
    if served["is_logged_in"]:
        assert site.accepted("spotify", served["bearer_token"])
    # The emulator counts a refresh when it answers, a moment before apiauth stores it.
    wait_until(
        lambda: (
            site.stats("spotify")["refreshes"] >= 1
            and site.connection("spotify").last_error is None
        ),
        timeout=3 * TTL,
    )
    recovered = site.connection("spotify")
    assert recovered.last_error is None
    assert recovered.status in ("connected", "refreshing")
    fresh = site.read("spotify")
    assert fresh["bearer_token"] != bearer
    assert site.accepted("spotify", fresh["bearer_token"])


def test_a_429_is_retried_no_sooner_than_retry_after(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", status=429, body={}, headers={"Retry-After": "30"})
    wait_until(lambda: site.stats("box")["faults_served"] == 1, timeout=2 * TTL)
    wait_until(lambda: site.connection("box").last_error is not None)
    with site.server.broker.sessions() as db:
        from apiauth.store.models import Connection

        row = db.query(Connection).one()
        assert row.refresh_due_at is not None
        assert row.refresh_due_at >= site.server.broker.clock() + timedelta(seconds=25)
    assert "429" in (site.connection("box").last_error or "")


def test_a_provider_that_does_not_answer_in_time_is_a_transient_failure(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", status=500, delay_seconds=3)
    wait_until(lambda: "in time" in (site.connection("box").last_error or ""), timeout=3 * TTL)
    assert site.connection("box").status in ("connected", "refreshing")  # never needs_reauth
    wait_until(lambda: site.stats("box")["refreshes"] >= 1, timeout=3 * TTL)
    assert site.connection("box").status in ("connected", "refreshing")


def test_invalid_grant_marks_the_connection_for_reauthorization(site: Site) -> None:
    site.connect("box")
    site.fault(
        "box", "token", status=400, body={"error": "invalid_grant", "error_description": "gone"}
    )
    wait_until(lambda: site.connection("box").status == "needs_reauth", timeout=3 * TTL)
    view = site.connection("box")
    assert view.last_error is not None
    assert "invalid_grant" in view.last_error
    wait_until(lambda: site.read("box")["is_logged_in"] is False, timeout=2 * TTL)
    assert site.read("box")["bearer_token"] is None


def test_a_failing_provider_is_not_stormed_however_many_readers_arrive(site: Site) -> None:
    site.connect("box")
    site.fault("box", "token", times=1000, status=500, body={})
    started = time.monotonic()
    wait_until(lambda: site.stats("box")["faults_served"] >= 1, timeout=2 * TTL)
    reads = 0
    while time.monotonic() - started < 3 * TTL:
        site.read("box")
        reads += 1
    attempts = site.stats("box")["faults_served"]
    # Backoff 0.5 s, 1 s, 2 s, 2 s … (+20 % jitter) over at most 12 s: a handful, not `reads`.
    assert reads > 50
    assert attempts <= 10
    assert site.connection("box").status in ("connected", "refreshing")  # never needs_reauth


def test_a_token_without_expiry_is_checked_and_refreshed_when_refused(site: Site) -> None:
    site.connect("salesforce")
    assert site.connection("salesforce").expires_at is None
    wait_until(lambda: site.stats("salesforce")["userinfo_ok"] >= 3, timeout=10)
    assert site.stats("salesforce")["refreshes"] == 0
    bearer = site.read("salesforce")["bearer_token"]
    site.fault("salesforce", "userinfo", status=401, body={"error": "INVALID_SESSION_ID"})
    wait_until(lambda: site.stats("salesforce")["refreshes"] == 1, timeout=10)
    # The provider counts the refresh when it answers; the refresher stores it just after.
    wait_until(lambda: site.read("salesforce")["bearer_token"] != bearer, timeout=5)
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
    start = connections.start_connection(
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
    from sqlalchemy import update

    from apiauth.store.db import transaction
    from apiauth.store.models import Connection

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
    broker.refresh_wakeup.set()
    # The emulator counts a refresh when it answers, a moment before apiauth stores it.
    wait_until(lambda: site.connection("box").last_refreshed_at is not None, timeout=3 * TTL)
    view = site.connection("box")
    assert site.stats("box")["refreshes"] >= 1
    assert view.status in ("connected", "refreshing")  # no longer held by the dead process
    assert isinstance(view.last_refreshed_at, datetime)
