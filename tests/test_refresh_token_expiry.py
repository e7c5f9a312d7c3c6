"""Refresh tokens that die (issue 17, SPEC §7): `refresh_expires_at` on the connection, from
the catalog's `refresh_token_lifetime` (not extended by refreshing), the provider's
`refresh_token_expires_in` or a JWT refresh token's `exp`; `connection.expiring` once,
`APIAUTH_EXPIRY_WARNING_DAYS` before; a refresh token that dies unused
(`refresh_token_idle_lifetime`) kept alive by refreshing, whether anyone reads or not.

A custom provider played by the emulator, a live server whose refresher the test drives
with an injected clock (days pass in a moment); SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from apiauth.domain import refresh
from apiauth.domain.scraped_gauges import BrokerGauges
from apiauth.oauth.protocol import _token_set
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Connection
from tests.in_process import Clock
from tests.live_site import Site as LiveSite
from tests.servers import HookReceiver, LiveServer, running_server

DAY = 86400
ACME = """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"
scope_separator = " "
scopes = [{ name = "read", description = "Read your data", default = true }]
userinfo_url = "https://api.acme.example/me"
client_id = "acme-client"
client_secret = "acme-secret"
emulate = true
"""


def serve(tmp_path: Path, database_url: str, entry: str) -> Iterator[LiveServer]:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(ACME + entry)
    with running_server(
        tmp_path,
        database_url,
        refresher=False,
        providers_file=providers_file,
        validate_interval_seconds=30 * DAY,
    ) as live:
        live.broker.clock = Clock()
        yield live


@pytest.fixture
def absolute(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    """Access tokens for an hour, refresh tokens 20 days from the authorization."""
    yield from serve(
        tmp_path,
        database_url,
        f"access_token_lifetime = 3600\nrefresh_token_lifetime = {20 * DAY}\n",
    )


@pytest.fixture
def idle(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    """Access tokens that never expire, refresh tokens that die after 2 days unused."""
    yield from serve(tmp_path, database_url, f"refresh_token_idle_lifetime = {2 * DAY}\n")


class Site(LiveSite):
    @property
    def clock(self) -> Clock:
        clock = self.broker.clock
        assert isinstance(clock, Clock)
        return clock

    def refresh_round(self, *, force: bool = False) -> int:
        """One refresher round at the clock's time (`force`: everything due now)."""
        if force:
            with transaction(self.broker.sessions) as db:
                db.execute(
                    update(Connection).values(refresh_due_at=self.clock(), refresh_not_before=None)
                )
        batch = refresh.lease_due_connections(self.broker, 100)
        outcomes = [
            refresh.attempt_refresh(self.broker, leased, batch.clients) for leased in batch.leased
        ]
        return len(refresh.store_outcomes(self.broker, outcomes, batch.sites))

    def resource(self) -> dict[str, object]:
        answer = self.http.get(
            f"{self.server.url}/api/v1/sites/my-site/connections/acme",
            headers={"Authorization": f"Bearer {self.pat}"},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body

    def refresh_expires_at(self) -> datetime | None:
        value = self.resource()["refresh_expires_at"]
        assert value is None or isinstance(value, str)
        return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))

    def dashboard(self, path: str) -> str:
        """A page of the dashboard, as the owner sees it (signed in with a client of its
        own)."""
        with httpx.Client(timeout=30) as browser:
            page = browser.get(f"{self.server.url}/sign-in").text
            found = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert found is not None
            signed_in = browser.post(
                f"{self.server.url}/sign-in",
                data={
                    "email": "owner@example.com",
                    "password": "correct horse battery",
                    "csrf_token": found.group(1),
                },
            )
            assert signed_in.status_code == 303, signed_in.text[:300]
            answer = browser.get(self.server.url + path)
            assert answer.status_code == 200
            return answer.text

    def connections_gauge(self) -> dict[str, float]:
        """What an operator's scrape says of the acme connections (`apiauth_connections`),
        by status."""
        families = BrokerGauges(self.broker, database_seconds=0).collect()
        family = next(f for f in families if f.name == "apiauth_connections")
        return {
            s.labels["status"]: s.value for s in family.samples if s.labels["provider"] == "acme"
        }

    def events(self, kind: str) -> int:
        with self.broker.sessions() as db:
            return len(db.scalars(select(AuditEvent.id).where(AuditEvent.kind == kind)).all())


def test_a_refresh_token_lifetime_is_shown_not_extended_and_warned_about_once(
    absolute: LiveServer, http: httpx.Client, hook_receiver: HookReceiver
) -> None:
    site = Site(absolute, http)
    patched = http.patch(
        f"{absolute.url}/api/v1/sites/my-site",
        json={"webhook_url": hook_receiver.url},
        headers={"Authorization": f"Bearer {site.pat}"},
    )
    assert patched.status_code == 200, patched.text
    connected_at = site.clock()
    site.connect("acme")
    dies = site.refresh_expires_at()
    assert dies is not None
    assert abs((dies - connected_at) - timedelta(days=20)) < timedelta(minutes=1)

    page = site.dashboard("/sites/my-site/api-auth")
    assert "Re-authorize before" in page
    assert dies.strftime("%Y-%m-%d") in page

    site.clock.advance(3 * DAY)
    assert site.refresh_round(force=True) == 1
    assert site.refresh_expires_at() == dies  # refreshing does not extend it
    assert site.events("connection.expiring") == 0
    assert site.connections_gauge() == {"connected": 1}

    site.clock.advance(4 * DAY)  # 13 days left: within the 14 days' warning
    assert site.connections_gauge() == {"expiring": 1}  # before any refresh notices
    assert site.refresh_round(force=True) == 1
    assert site.events("connection.expiring") == 1
    site.clock.advance(DAY)
    assert site.refresh_round(force=True) == 1
    assert site.events("connection.expiring") == 1  # once
    expiring = hook_receiver.wait_for_event("connection.expiring")
    assert expiring[0]["detail"]["provider"] == "acme"
    assert datetime.fromisoformat(expiring[0]["detail"]["refresh_expires_at"]) == dies
    # One delivery (days passing in a moment may make the at-least-once worker send it
    # again, under the same delivery id).
    ids = {
        hook.headers["apiauth-delivery"]
        for hook in hook_receiver.received
        if hook.headers.get("apiauth-event") == "connection.expiring"
    }
    assert len(ids) == 1


def test_a_refresh_token_that_dies_unused_is_kept_alive_without_readers(
    idle: LiveServer, http: httpx.Client
) -> None:
    site = Site(idle, http)
    site.connect("acme")
    with idle.broker.sessions() as db:
        due = db.scalars(select(Connection.refresh_due_at)).one()
    # Without the keep-alive it would be checked in 30 days (the validate interval).
    assert due is not None
    assert due <= site.clock() + timedelta(days=2) - timedelta(hours=9)
    days = 6
    for _ in range(days * 24):
        site.clock.advance(3600)
        site.refresh_round()
    refreshes = site.stats("acme")["refreshes"]
    # Every 38.4 h at most (a fifth of 2 days before the end): never 2 days unused.
    assert days * 24 / 48 <= refreshes <= days * 24 / 38 + 1
    with idle.broker.sessions() as db:
        due = db.scalars(select(Connection.refresh_due_at)).one()
    assert due is not None
    assert due - site.clock() < timedelta(days=2)
    assert site.refresh_expires_at() is None  # no absolute limit known


def _jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


@pytest.mark.fast
def test_the_refresh_token_expiry_is_read_from_the_answer_or_a_jwt(
    tmp_path: Path,
) -> None:
    from tests.servers import make_settings, open_test_broker

    broker = open_test_broker(make_settings(tmp_path, f"sqlite:///{tmp_path}/a.db", 8000))
    try:
        box = broker.catalog["box"]
        now = datetime(2026, 12, 1, tzinfo=UTC)
        sent = _token_set(
            box,
            {"access_token": "a", "refresh_token": "r", "refresh_token_expires_in": 15897600},
            (),
            now,
        )
        assert sent.refresh_expires_at == now + timedelta(seconds=15897600)
        exp = int((now + timedelta(days=30)).timestamp())
        jwt = _token_set(box, {"access_token": "a", "refresh_token": _jwt({"exp": exp})}, (), now)
        assert jwt.refresh_expires_at == datetime.fromtimestamp(exp, UTC)
        opaque = _token_set(box, {"access_token": "a", "refresh_token": "x.y.z"}, (), now)
        assert opaque.refresh_expires_at is None
    finally:
        broker.close()
