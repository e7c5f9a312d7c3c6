"""Members and personal access tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apiauth.config import Settings
from apiauth.domain.broker import Broker
from apiauth.domain.members import (
    authenticate_personal_token,
    create_member,
    create_personal_token,
    get_member,
    verify_password,
)
from apiauth.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound
from tests.servers import open_test_broker


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Broker]:
    broker = open_test_broker(Settings(data_dir=tmp_path / "data", database_url=database_url))
    yield broker
    broker.close()


def test_the_first_member_owns_a_new_default_team(store: Broker) -> None:
    first = create_member(store, "Owner@Example.com", "correct horse battery")
    second = create_member(store, "dev@example.com", "another password")
    assert (first.email, first.role, first.team_name) == ("owner@example.com", "owner", "default")
    assert (second.role, second.team_id) == ("member", first.team_id)
    assert get_member(store) == first


def test_passwords_are_checked_and_never_stored_in_clear(store: Broker) -> None:
    create_member(store, "owner@example.com", "correct horse battery")
    assert verify_password(store, "owner@example.com", "correct horse battery").role == "owner"
    for email, password in [
        ("owner@example.com", "wrong password"),
        ("nobody@example.com", "correct horse battery"),
    ]:
        with pytest.raises(AuthenticationFailed, match="wrong email or password"):
            verify_password(store, email, password)
    from sqlalchemy import select

    from apiauth.store.models import Member

    with store.sessions() as db:
        stored = db.scalars(select(Member.password_hash)).one()
    assert stored is not None
    assert "correct horse battery" not in stored
    assert stored.startswith("$argon2")


@pytest.mark.parametrize(
    ("email", "password", "error"),
    [
        ("not-an-email", "long enough pw", InvalidInput),
        ("owner@example.com", "short", InvalidInput),
    ],
)
def test_bad_member_input_is_refused(
    store: Broker, email: str, password: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        create_member(store, email, password)


def test_an_email_is_used_once(store: Broker) -> None:
    create_member(store, "owner@example.com", "correct horse battery")
    with pytest.raises(Conflict):
        create_member(store, "OWNER@example.com", "correct horse battery")


def test_with_several_teams_the_cli_must_be_told_which(store: Broker) -> None:
    create_member(store, "a@example.com", "correct horse battery", team_name="alpha")
    create_member(store, "b@example.com", "correct horse battery", team_name="beta")
    with pytest.raises(InvalidInput, match="--team"):
        create_member(store, "c@example.com", "correct horse battery")
    with pytest.raises(InvalidInput, match="--member"):
        get_member(store)


def test_no_member_yet_says_how_to_create_one(store: Broker) -> None:
    with pytest.raises(NotFound, match="apiauth users create"):
        get_member(store)


def test_a_personal_token_authenticates_its_member_only(store: Broker) -> None:
    owner = create_member(store, "owner@example.com", "correct horse battery")
    token = create_personal_token(store, owner, "laptop")
    assert token.startswith("apiauth_pat_")
    assert authenticate_personal_token(store, token) == owner
    with pytest.raises(AuthenticationFailed):
        authenticate_personal_token(store, token[:-1] + ("x" if token[-1] != "x" else "y"))
