"""What the dashboard's accounts rest on: the first-start setup link, sign-in sessions, and
owners managing members; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apiauth.config import Settings
from apiauth.domain import members, setup, web_sessions
from apiauth.domain.broker import Broker
from apiauth.errors import Conflict, PermissionDenied
from apiauth.server.dashboard.throttle import LoginThrottle
from tests.servers import open_test_broker

PASSWORD = "correct horse battery"


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Broker]:
    broker = open_test_broker(Settings(data_dir=tmp_path / "data", database_url=database_url))
    yield broker
    broker.close()


def test_the_setup_link_makes_one_owner_and_then_stops_working(store: Broker) -> None:
    token = setup.issue_setup_token(store)
    assert token is not None
    assert not setup.setup_token_valid(store, "not-the-token")
    owner = setup.create_owner(store, token, "owner@example.com", PASSWORD, "Acme")
    assert (owner.role, owner.team_name) == ("owner", "Acme")
    assert not setup.setup_token_valid(store, token)
    with pytest.raises(PermissionDenied):
        setup.create_owner(store, token, "second@example.com", PASSWORD, "Acme")
    assert setup.issue_setup_token(store) is None  # a server with members prints no link


def test_a_restart_replaces_the_setup_link(store: Broker) -> None:
    first = setup.issue_setup_token(store)
    second = setup.issue_setup_token(store)
    assert not setup.setup_token_valid(store, first)
    assert setup.setup_token_valid(store, second)


def test_sessions_know_their_member_until_they_end_or_expire(store: Broker) -> None:
    owner = members.create_member(store, "owner@example.com", PASSWORD)
    session = web_sessions.start_session(store, owner)
    who = web_sessions.signed_in(store, session.token)
    assert who is not None
    assert who.member == owner
    assert who.csrf_matches(session.csrf_token)
    assert not who.csrf_matches("forged")
    assert session.token not in repr(session)
    assert web_sessions.signed_in(store, "apiauth_sess_forged") is None

    real_clock = store.clock
    store.clock = lambda: real_clock() + web_sessions.SESSION_LIFETIME + timedelta(seconds=1)
    assert web_sessions.signed_in(store, session.token) is None
    store.clock = real_clock

    web_sessions.end_session(store, session.token)
    assert web_sessions.signed_in(store, session.token) is None


def test_owners_manage_members_and_a_team_keeps_an_owner(store: Broker) -> None:
    owner = members.create_member(store, "owner@example.com", PASSWORD)
    dev = members.add_member(store, owner, "dev@example.com", PASSWORD)
    assert [m.email for m in members.list_members(store, owner)] == [owner.email, dev.email]
    with pytest.raises(PermissionDenied, match="Only team owners can add members"):
        members.add_member(store, dev, "x@example.com", PASSWORD)
    with pytest.raises(PermissionDenied):
        members.remove_member(store, dev, owner.id)
    with pytest.raises(Conflict, match="at least one owner"):
        members.set_role(store, owner, owner.id, "member")
    with pytest.raises(Conflict, match="at least one owner"):
        members.remove_member(store, owner, owner.id)

    members.set_role(store, owner, dev.id, "owner")
    members.set_role(store, owner, owner.id, "member")  # now allowed: dev owns the team
    session = web_sessions.start_session(store, owner)
    promoted = members.get_member(store, "dev@example.com")
    members.remove_member(store, promoted, owner.id)
    assert [m.email for m in members.list_members(store, promoted)] == [dev.email]
    assert web_sessions.signed_in(store, session.token) is None  # signed out with them


def test_sign_in_throttle_counts_failures_per_address_and_email() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_failures=2, window_seconds=60, clock=lambda: now[0])
    for _ in range(2):
        assert throttle.attempt("10.0.0.1", "A@example.com") is None
    assert throttle.attempt("10.0.0.1", "a@example.com") == 61
    assert throttle.retry_after("10.0.0.1", "a@example.com") == 61
    assert throttle.retry_after("10.0.0.2", "a@example.com") is None
    assert throttle.retry_after("10.0.0.1", "b@example.com") is None
    now[0] = 61.0
    assert throttle.retry_after("10.0.0.1", "a@example.com") is None
