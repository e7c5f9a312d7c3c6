"""Class 10 of docs/SECURITY.md: what has outlived its use is pruned on a schedule in
bounded batches (on SQLite and PostgreSQL, with an injected clock), and the audit log's
coalescing of repeated reads cannot be bypassed by varying what the caller controls."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from apiauth.domain.broker import Broker
from apiauth.domain.deliveries import MAX_ATTEMPTS
from apiauth.domain.housekeeping import Housekeeper, prune
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.sites import create_site
from apiauth.server.workers import background_workers
from apiauth.store.models import (
    AuthState,
    ConnectSession,
    Delivery,
    Session,
    Site,
    SiteToken,
    new_id,
)
from tests.in_process import Clock, InProcessServer
from tests.servers import free_port, make_settings, open_test_broker
from tests.stored_connections import store_connection


@pytest.fixture
def clocked(tmp_path: Path, database_url: str) -> Iterator[tuple[Broker, Clock]]:
    clock = Clock()
    broker = open_test_broker(
        make_settings(tmp_path, database_url, free_port(), housekeeping_batch_size=2)
    )
    broker.clock = clock
    try:
        yield broker, clock
    finally:
        broker.close()


def _hash() -> str:
    return new_id("h").ljust(64, "0")


def seed(broker: Broker, member: MemberView, site_id: str) -> dict[str, list[str]]:
    """Rows that must go (`gone_*`) and rows that must stay (`kept_*`), around `now`."""
    now = broker.clock()
    ids: dict[str, list[str]] = {}

    def add(key: str, row: Any) -> None:
        ids.setdefault(key, []).append(row.id)
        with broker.sessions() as db, db.begin():
            db.add(row)

    def token(expires: Any) -> SiteToken:
        return SiteToken(
            id=new_id("tok"),
            site_id=site_id,
            kind="function",
            token_hash=_hash(),
            expires_at=expires,
        )

    for _ in range(5):  # more than two batches
        add("gone_function_tokens", token(now - timedelta(hours=2)))
    add("kept_function_tokens", token(now - timedelta(minutes=10)))  # within the grace
    add("kept_function_tokens", token(now + timedelta(minutes=10)))

    def state(expires: Any, used: Any = None) -> AuthState:
        return AuthState(
            id=new_id("st"),
            state_hash=_hash(),
            site_id=site_id,
            provider="github",
            scopes=[],
            expires_at=expires,
            used_at=used,
        )

    add("gone_auth_states", state(now - timedelta(hours=2)))
    add("gone_auth_states", state(now + timedelta(minutes=5), used=now - timedelta(hours=3)))
    add("kept_auth_states", state(now - timedelta(minutes=5), used=now - timedelta(minutes=5)))
    add("kept_auth_states", state(now + timedelta(minutes=5)))

    def link(expires: Any) -> ConnectSession:
        return ConnectSession(
            id=new_id("cs"),
            token_hash=_hash(),
            site_id=site_id,
            visitor_id="v",
            providers=["github"],
            return_url="https://example.com/",
            expires_at=expires,
        )

    add("gone_connect_sessions", link(now - timedelta(days=2)))
    add("kept_connect_sessions", link(now + timedelta(minutes=20)))

    def session(expires: Any) -> Session:
        return Session(
            id=new_id("ses"),
            member_id=member.id,
            token_hash=_hash(),
            csrf_token="c",
            expires_at=expires,
        )

    add("gone_sessions", session(now - timedelta(seconds=1)))
    add("kept_sessions", session(now + timedelta(hours=1)))

    def delivery(created: Any, *, delivered: Any = None, attempts: int = 1) -> Delivery:
        return Delivery(
            id=new_id("dlv"),
            site_id=site_id,
            kind="webhook",
            event="connection.created",
            url="https://example.com/hook",
            payload={},
            attempts=attempts,
            next_attempt_at=created,
            delivered_at=delivered,
            created_at=created,
        )

    month = now - timedelta(days=31)
    add("gone_deliveries", delivery(month, delivered=month))
    add("gone_deliveries", delivery(month, attempts=MAX_ATTEMPTS))  # given up
    add("kept_deliveries", delivery(month))  # still being retried
    add("kept_deliveries", delivery(now - timedelta(days=1), delivered=now - timedelta(days=1)))
    return ids


MODELS = {
    "function_tokens": SiteToken,
    "auth_states": AuthState,
    "connect_sessions": ConnectSession,
    "sessions": Session,
    "deliveries": Delivery,
}


def remaining(broker: Broker, model: Any, ids: list[str]) -> set[str]:
    with broker.sessions() as db:
        return set(db.scalars(select(model.id).where(model.id.in_(ids))))


def test_housekeeping_prunes_what_outlived_its_use_in_batches_and_keeps_the_rest(
    clocked: tuple[Broker, Clock],
) -> None:
    broker, clock = clocked
    member = create_member(broker, "owner@example.com", "correct horse battery")
    site = create_site(broker, member, "my-site")
    ids = seed(broker, member, site.id)

    pruned = prune(broker)

    for what, model in MODELS.items():
        assert pruned[what] == len(ids[f"gone_{what}"]), what
        assert remaining(broker, model, ids[f"gone_{what}"]) == set(), what
        assert remaining(broker, model, ids[f"kept_{what}"]) == set(ids[f"kept_{what}"]), what
    counted = broker.runtime.metrics.registry.get_sample_value(
        "apiauth_housekeeping_pruned_total", {"what": "function_tokens"}
    )
    assert counted == 5
    # A second round finds nothing; two hours later, what was kept has outlived its use too.
    assert not any(prune(broker).values())
    clock.advance(2 * 3600)
    later = prune(broker)
    assert later["function_tokens"] == 2
    assert later["auth_states"] == 2
    assert later["connect_sessions"] == 1


def test_housekeeping_stops_between_batches_when_the_server_stops(
    clocked: tuple[Broker, Clock],
) -> None:
    broker, _ = clocked
    member = create_member(broker, "owner@example.com", "correct horse battery")
    site = create_site(broker, member, "my-site")
    ids = seed(broker, member, site.id)
    calls = iter([False, True])
    pruned = prune(broker, stopping=lambda: next(calls, True))
    assert pruned["function_tokens"] == 2  # one batch of two, then it stopped
    assert len(remaining(broker, SiteToken, ids["gone_function_tokens"])) == 3


def test_two_processes_pruning_at_once_each_take_other_rows(
    clocked: tuple[Broker, Clock], tmp_path: Path, database_url: str
) -> None:
    """Two brokers on one database (as `--workers` or replicas): together they delete each
    pruned row exactly once and fail nothing."""
    broker, clock = clocked
    member = create_member(broker, "owner@example.com", "correct horse battery")
    site = create_site(broker, member, "my-site")
    ids = seed(broker, member, site.id)
    other = open_test_broker(make_settings(tmp_path / "b", database_url, free_port()))
    other.clock = clock
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(prune, [broker, other]))
    finally:
        other.close()
    total = sum(result["function_tokens"] for result in results)
    assert total == len(ids["gone_function_tokens"])
    with broker.sessions() as db:
        assert db.scalar(select(func.count()).select_from(SiteToken)) == 2


def test_the_housekeeper_runs_as_a_worker_of_the_server(clocked: tuple[Broker, Clock]) -> None:
    broker, _ = clocked
    assert any(isinstance(w, Housekeeper) for w in background_workers(broker, refresher=False))


# --- coalescing ---------------------------------------------------------------------------


def site_with_token(app: InProcessServer, member: MemberView) -> tuple[str, dict[str, str]]:
    pat = {"Authorization": f"Bearer {create_personal_token(app.broker, member, 'tests')}"}
    http = app.client
    assert http.post(f"{app.url}/api/v1/sites", json={"name": "my-site"}, headers=pat).is_success
    enabled = http.post(f"{app.url}/api/v1/sites/my-site/api-auth", headers=pat)
    return enabled.json()["token"], pat


def secrets_reads(app: InProcessServer, pat: dict[str, str]) -> list[dict[str, Any]]:
    page = app.client.get(f"{app.url}/api/v1/sites/my-site/events?limit=200", headers=pat)
    assert page.status_code == 200, page.text
    return [event for event in page.json()["events"] if event["kind"] == "secrets.read"]


@pytest.mark.fast
def test_varying_what_the_caller_controls_does_not_bypass_audit_coalescing(
    app: InProcessServer,
) -> None:
    """Within the buffer's second, 60 reads by one token from one address are one event,
    however they vary: `?visitor_id=` (any string a site token likes), the query string,
    the providers that answered (a visitor with connections), `X-Forwarded-For` from an
    untrusted peer, letter case of the header. Every read is counted; other visitors are
    named up to ten, the rest counted; the owner's read is noted."""
    member = create_member(app.broker, "owner@example.com", "correct horse battery")
    token, pat = site_with_token(app, member)
    with app.broker.sessions() as db:
        site_id = db.scalar(select(Site.id).where(Site.name == "my-site"))
    assert site_id is not None
    store_connection(app.broker, site_id, "github", "gh-token", visitor_id="visitor-0")
    http = app.client
    reads = 0
    for n in range(50):
        answer = http.get(
            f"{app.url}/api/v1/secrets",
            params={"visitor_id": f"visitor-{n}", "cache-buster": str(n)},
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": f"10.0.0.{n}"},
        )
        assert answer.status_code == 200, answer.text
        reads += 1
    for n in range(10):
        answer = http.get(
            f"{app.url}/api/v1/secrets?x={n}", headers={"authorization": f"bearer {token}"}
        )
        assert answer.status_code == 200
        reads += 1

    logged = secrets_reads(app, pat)
    assert len(logged) == 1, [event["detail"] for event in logged]
    detail = logged[0]["detail"]
    assert detail["count"] == reads
    assert detail["visitor_id"] == "visitor-0"
    assert detail["providers"] == ["github"]
    assert len(detail["other_visitor_ids"]) == 10
    assert detail["other_visitor_reads_omitted"] == 39
    assert detail["site_owner_read"] is True
    assert "gh-token" not in str(detail)


@pytest.mark.fast
def test_another_token_or_the_next_second_is_still_an_event_of_its_own(
    app: InProcessServer,
) -> None:
    member = create_member(app.broker, "owner@example.com", "correct horse battery")
    token, pat = site_with_token(app, member)
    minted = app.client.post(
        f"{app.url}/api/v1/function-tokens",
        json={"ttl_seconds": 300},
        headers={"Authorization": f"Bearer {token}"},
    ).json()["token"]
    for bearer in (token, token, minted):
        answer = app.client.get(
            f"{app.url}/api/v1/secrets", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert answer.status_code == 200
    logged = secrets_reads(app, pat)
    assert sorted(event["detail"]["count"] for event in logged) == [1, 2]
    app.client.get(f"{app.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"})
    assert len(secrets_reads(app, pat)) == 3
