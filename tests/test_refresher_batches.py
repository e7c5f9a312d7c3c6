"""The refresher's batches: leased together, providers called outside any transaction, the
outcomes stored together. The rules of a single refresh hold for each member of a batch: a
token stored meanwhile by someone else is never overwritten, a refused refresh token that
someone else already used does not mark the connection for re-authorization, a team's OAuth
app changed between two refreshes is the one used, and a lease that waited too long is
given back untried. The batch is driven step by step against the in-process app (the fast
tier: no refresher of its own) and its emulator; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from apiauth.domain import oauth_apps, refresh
from apiauth.providers import demo_client
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Connection
from tests.in_process import InProcessServer
from tests.live_site import Site as LiveSite

pytestmark = pytest.mark.fast


@pytest.fixture
def server(app: InProcessServer) -> InProcessServer:
    """The app in-process: no refresher runs but the test's rounds."""
    return app


class Site(LiveSite):
    """A live site, and the refresher's steps run by hand."""

    def make_due(self) -> None:
        """Due now, past the minimum interval since the last refresh too."""
        with transaction(self.broker.sessions) as db:
            db.execute(
                update(Connection).values(
                    refresh_due_at=self.broker.clock(), refresh_not_before=None
                )
            )

    def refreshes(self, provider: str) -> int:
        return self.stats(provider)["refreshes"]

    def events(self, kind: str) -> int:
        with self.broker.sessions() as db:
            return len(db.scalars(select(AuditEvent.id).where(AuditEvent.kind == kind)).all())

    def refresh_batch(self) -> list[refresh.Outcome]:
        """One round of the refresher: lease, call the providers, store; the outcomes
        stored."""
        batch = refresh.lease_due_connections(self.broker, 100)
        outcomes = [
            refresh.attempt_refresh(self.broker, leased, batch.clients) for leased in batch.leased
        ]
        return refresh.store_outcomes(self.broker, outcomes, batch.sites)


@pytest.fixture
def site(server: InProcessServer, http: httpx.Client) -> Site:
    return Site(server, http)


def test_a_batch_leases_every_due_connection_once_and_stores_fresh_tokens(site: Site) -> None:
    site.connect("box")
    site.connect("spotify")
    before = {name: site.read(name)["bearer_token"] for name in ("box", "spotify")}
    site.make_due()
    batch = refresh.lease_due_connections(site.broker, 100)
    assert sorted(leased.provider for leased in batch.leased) == ["box", "spotify"]
    assert refresh.lease_due_connections(site.broker, 100).leased == []  # leased already
    outcomes = [
        refresh.attempt_refresh(site.broker, leased, batch.clients) for leased in batch.leased
    ]
    stored = refresh.store_outcomes(site.broker, outcomes, batch.sites)
    assert sorted(outcome.kind for outcome in stored) == ["fresh", "fresh"]
    for name in ("box", "spotify"):
        view = site.connection(name)
        assert view.status == "connected"
        assert view.last_refreshed_at is not None
        assert site.read(name)["bearer_token"] != before[name]
    assert site.events("connection.refreshed") == 2
    assert refresh.lease_due_connections(site.broker, 100).leased == []  # no longer due


def test_a_batch_never_overwrites_a_token_stored_meanwhile(site: Site) -> None:
    site.connect("box")
    site.make_due()
    batch = refresh.lease_due_connections(site.broker, 100)
    [outcome] = [
        refresh.attempt_refresh(site.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert outcome.kind == "fresh"
    # Meanwhile the owner connects Box again: a newer token, stored by someone else.
    site.connect("box")
    newer = site.read("box")["bearer_token"]
    assert refresh.store_outcomes(site.broker, [outcome], batch.sites) == []
    assert outcome.token is not None
    assert site.read("box")["bearer_token"] == newer != outcome.token.access_token
    assert site.connection("box").status == "connected"
    assert site.events("connection.refreshed") == 0


def test_in_a_batch_only_the_overtaken_connection_keeps_the_other_token(site: Site) -> None:
    site.connect("box")
    site.connect("spotify")
    site.make_due()
    batch = refresh.lease_due_connections(site.broker, 100)
    outcomes = [
        refresh.attempt_refresh(site.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert [outcome.kind for outcome in outcomes] == ["fresh", "fresh"]
    site.connect("spotify")  # a newer Spotify token, stored meanwhile
    newer = site.read("spotify")["bearer_token"]
    stored = refresh.store_outcomes(site.broker, outcomes, batch.sites)
    assert [outcome.leased.provider for outcome in stored] == ["box"]
    fresh_box = next(o.token for o in outcomes if o.leased.provider == "box")
    assert fresh_box is not None
    assert site.read("box")["bearer_token"] == fresh_box.access_token
    assert site.read("spotify")["bearer_token"] == newer
    assert site.events("connection.refreshed") == 1


def test_a_refused_refresh_after_another_process_refreshed_keeps_the_connection(
    site: Site,
) -> None:
    """Box rotates refresh tokens: if our lease lapsed and another process refreshed, our
    refresh token is spent and Box answers invalid_grant; the newer token stays and the
    connection is not marked for re-authorization."""
    site.connect("box")
    site.make_due()
    batch = refresh.lease_due_connections(site.broker, 100)
    [leased] = batch.leased
    with transaction(site.broker.sessions) as db:
        db.execute(update(Connection).values(claim_expires_at=site.broker.clock()))
    other = refresh.refresh_connection(
        site.broker, leased.lease.connection_id, refresh.is_refreshable
    )
    assert other.token is not None
    [outcome] = [refresh.attempt_refresh(site.broker, leased, batch.clients)]
    assert outcome.kind == "refused"
    assert refresh.store_outcomes(site.broker, [outcome], batch.sites) == []
    view = site.connection("box")
    assert view.status == "connected"
    assert site.read("box")["bearer_token"] == other.token.access_token
    assert site.events("connection.needs_reauth") == 0


def test_a_refused_refresh_marks_needs_reauth_and_fires_the_event(site: Site) -> None:
    site.connect("box")
    site.make_due()
    site.http.post(
        f"{site.server.url}/_emulator/_admin/faults",
        json={
            "provider": "box",
            "endpoint": "token",
            "status": 400,
            "body": {"error": "invalid_grant", "error_description": "gone"},
        },
    ).raise_for_status()
    [outcome] = site.refresh_batch()
    assert outcome.kind == "refused"
    view = site.connection("box")
    assert view.status == "needs_reauth"
    assert view.last_error is not None
    assert "invalid_grant" in view.last_error
    assert site.events("connection.needs_reauth") == 1
    assert refresh.lease_due_connections(site.broker, 100).leased == []


def test_a_changed_team_oauth_app_is_used_by_the_next_refresh(site: Site) -> None:
    site.connect("box")
    demo_id, demo_secret = demo_client("box")
    oauth_apps.set_oauth_app(site.broker, site.owner, "box", demo_id, "not-the-secret")
    site.make_due()
    [failed] = site.refresh_batch()
    assert failed.kind == "failed"
    assert "invalid_client" in (site.connection("box").last_error or "")
    # The right secret, set a moment later, is used by the very next refresh.
    oauth_apps.set_oauth_app(site.broker, site.owner, "box", demo_id, demo_secret)
    site.make_due()
    [fresh] = site.refresh_batch()
    assert fresh.kind == "fresh"
    assert site.connection("box").last_error is None
    # And a wrong one again (a new ciphertext for the same app row) is noticed too.
    oauth_apps.set_oauth_app(site.broker, site.owner, "box", demo_id, "wrong-again")
    site.make_due()
    [failed_again] = site.refresh_batch()
    assert failed_again.kind == "failed"
    # Without a team app, the server-wide one serves again.
    oauth_apps.remove_oauth_app(site.broker, site.owner, "box")
    site.make_due()
    [fresh_again] = site.refresh_batch()
    assert fresh_again.kind == "fresh"


def test_a_failed_refresh_keeps_the_token_and_backs_off(site: Site) -> None:
    site.connect("spotify")
    token = site.read("spotify")["bearer_token"]
    site.make_due()
    site.http.post(
        f"{site.server.url}/_emulator/_admin/faults",
        json={"provider": "spotify", "endpoint": "token", "times": 1, "status": 503},
    ).raise_for_status()
    [outcome] = site.refresh_batch()
    assert outcome.kind == "failed"
    assert site.read("spotify")["bearer_token"] == token
    assert site.connection("spotify").status == "connected"
    with site.broker.sessions() as db:
        row = db.scalars(select(Connection)).one()
    assert row.failure_count == 1
    assert row.claimed_by is None
    assert row.refresh_due_at is not None
    assert row.refresh_due_at >= site.broker.clock() + timedelta(
        seconds=refresh.BACKOFF.base_seconds - 1
    )
    assert site.events("connection.refresh_failed") == 1


def test_a_lease_that_waited_too_long_is_given_back_without_calling_the_provider(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.connect("box")
    site.make_due()
    batch = refresh.lease_due_connections(site.broker, 100)
    [leased] = batch.leased
    refreshes = site.refreshes("box")
    # The lease waited in the queue until it has less left than a provider call may take.
    late = leased.lease.expires_at - timedelta(seconds=1)
    monkeypatch.setattr(site.broker, "clock", lambda: late)
    outcome = refresh.attempt_refresh(site.broker, leased, batch.clients)
    monkeypatch.undo()
    assert outcome.kind == "untried"
    assert site.refreshes("box") == refreshes
    assert refresh.store_outcomes(site.broker, [outcome], batch.sites) == [outcome]
    with site.broker.sessions() as db:
        row = db.scalars(select(Connection)).one()
    assert (row.claimed_by, row.claim_expires_at, row.status) == (None, None, "connected")
    # Still due: the next round refreshes it.
    [fresh] = site.refresh_batch()
    assert fresh.kind == "fresh"
    assert site.refreshes("box") == refreshes + 1
