"""Class 4 of docs/SECURITY.md: every value has one length everywhere. What the API and the
CLI take is stored at its maximum length and refused one past it (422 naming the field and
the limit), and what is derived from it (the actor `visitor <id>`) or chosen by a provider
(account ids and logins) fits its column - on PostgreSQL, where VARCHAR(n) is enforced, and
on SQLite."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain import audit
from apiauth.domain.audit import MAX_ACTOR_LENGTH
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.sites import create_site
from apiauth.errors import InvalidInput
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Connection, Member, Team
from tests.consent import consent, press_connect
from tests.servers import LiveServer

VISITOR = 255
URL = 2048
SITE_NAME = 63


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def url_of_length(base: str, length: int) -> str:
    return base + "/" + "a" * (length - len(base) - 1)


def refused(answer: httpx.Response, field: str, limit: int) -> None:
    assert answer.status_code == 422, answer.text
    assert field in answer.text
    assert str(limit) in answer.text


@pytest.fixture
def pat(broker: Broker, owner: MemberView) -> dict[str, str]:
    return bearer(create_personal_token(broker, owner, "tests"))


def test_each_value_the_api_takes_is_stored_at_its_maximum_and_refused_one_past_it(
    live: LiveServer, http: httpx.Client, pat: dict[str, str]
) -> None:
    api = live.url + "/api/v1"
    hook = url_of_length(live.url, URL)
    longest = "a" * SITE_NAME
    refused(http.post(f"{api}/sites", json={"name": longest + "a"}, headers=pat), "name", 63)
    created = http.post(
        f"{api}/sites", json={"name": longest, "deploy_hook_url": hook}, headers=pat
    )
    assert created.status_code == 201, created.text
    site = f"{api}/sites/{longest}"
    refused(http.patch(site, json={"webhook_url": hook + "a"}, headers=pat), "webhook_url", URL)
    assert http.patch(site, json={"webhook_url": hook}, headers=pat).status_code == 200
    for control in ("\x00", "\x01", "\x1f", "\x7f"):  # fit no HTTP request: refused here
        odd = http.patch(site, json={"webhook_url": f"{live.url}/a{control}b"}, headers=pat)
        assert odd.status_code == 422, odd.text
        assert "webhook" in odd.text
    token = http.post(f"{site}/api-auth", headers=pat).json()["token"]

    visitor = "v" * VISITOR
    refused(
        http.get(f"{api}/secrets", params={"visitor_id": visitor + "v"}, headers=bearer(token)),
        "visitor_id",
        VISITOR,
    )
    assert http.get(
        f"{api}/secrets", params={"visitor_id": visitor}, headers=bearer(token)
    ).is_success
    minting = {"ttl_seconds": 60, "visitor_id": visitor}
    refused(
        http.post(
            f"{api}/function-tokens",
            json={**minting, "visitor_id": visitor + "v"},
            headers=bearer(token),
        ),
        "visitor_id",
        VISITOR,
    )
    minted = http.post(f"{api}/function-tokens", json=minting, headers=bearer(token))
    assert minted.status_code == 201, minted.text
    assert http.get(f"{api}/secrets", headers=bearer(minted.json()["token"])).is_success

    link: dict[str, Any] = {
        "visitor_id": visitor,
        "providers": ["github"],
        "return_url": url_of_length("https://example.com", URL),
    }
    for field, value, limit in (
        ("visitor_id", visitor + "v", VISITOR),
        ("return_url", link["return_url"] + "a", URL),
    ):
        refused(
            http.post(
                f"{api}/connect-sessions", json={**link, field: value}, headers=bearer(token)
            ),
            field,
            limit,
        )
    made = http.post(f"{api}/connect-sessions", json=link, headers=bearer(token))
    assert made.status_code == 201, made.text
    # The visitor connects: the audit actor `visitor <255 characters>` is derived, longer
    # than its column, and cut to fit.
    with httpx.Client(timeout=15) as browser:
        pressed = press_connect(browser, made.json()["url"], "github")
        assert pressed.status_code == 303, pressed.text
        back = consent(browser, pressed.headers["location"])
        assert back.status_code in (200, 303), back.text[:300]

    page = http.get(f"{site}/events?limit=200", headers=pat)
    assert page.status_code == 200, page.text
    logged = page.json()["events"]
    connected = [e for e in logged if e["kind"] == "connection.created"]
    assert len(connected) == 1
    actor = connected[0]["actor"]
    assert len(actor) == MAX_ACTOR_LENGTH
    assert actor.startswith("visitor vvvv")
    reads = [e for e in logged if e["kind"] == "secrets.read"]
    assert {e["detail"].get("visitor_id") for e in reads} == {visitor}
    visitor_secrets = http.get(
        f"{api}/secrets", params={"visitor_id": visitor}, headers=bearer(token)
    )
    assert set(visitor_secrets.json()) == {"github"}


def test_a_providers_overlong_account_id_and_login_are_cut_to_their_columns(
    live: LiveServer, http: httpx.Client, pat: dict[str, str], broker: Broker
) -> None:
    """GitHub's who-am-I answering a 300-digit id and a 1000-character login (a provider
    chooses these): the connection is made, and both fit their 255 characters."""
    api = live.url + "/api/v1"
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    queued = http.post(
        f"{live.url}/_emulator/_admin/faults",
        json={
            "provider": "github",
            "endpoint": "userinfo",
            "status": 200,
            "body": {"id": "9" * 300, "login": "L" * 1000},
            "times": 5,
        },
    )
    assert queued.status_code == 200, queued.text
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "github"}, headers=pat
    )
    assert started.status_code == 200, started.text
    assert consent(http, started.json()["authorize_url"]).status_code == 200
    with broker.sessions() as db:
        row = db.scalars(select(Connection).where(Connection.provider == "github")).one()
    assert row.account_login == "L" * 255
    assert row.account_id == "9" * 255
    shown = http.get(f"{api}/sites/my-site/connections/github", headers=pat)
    assert shown.status_code == 200
    assert http.get(f"{api}/sites/my-site/events", headers=pat).status_code == 200


def test_emails_team_and_token_names_at_their_limits_and_one_past(broker: Broker) -> None:
    """What the CLI's `users create` and `tokens create` take (through the same functions):
    an email of 254 characters, a team name of 100 and a token name of 100 are stored; one
    more is refused with the limit named."""
    local = "a" * 64
    domain = ".".join(["b" * 61] * 3)  # 185 characters
    email = f"{local}@{domain}"
    email = (
        email[: 254 - 4] + ".com" if len(email) > 254 else email + "." + "c" * (253 - len(email))
    )
    assert len(email) == 254
    with pytest.raises(InvalidInput, match="254"):
        create_member(broker, "x" + email, "correct horse battery")
    owner = create_member(broker, email, "correct horse battery", team_name="t" * 100)
    with pytest.raises(InvalidInput, match="100"):
        create_member(broker, "other@example.com", "correct horse battery", team_name="t" * 101)
    with pytest.raises(InvalidInput, match="100"):
        create_personal_token(broker, owner, "n" * 101)
    create_personal_token(broker, owner, "n" * 100)
    with broker.sessions() as db:
        assert db.scalar(select(Member.email)) == email
        assert db.scalar(select(Team.name)) == "t" * 100


def test_an_overlong_actor_is_cut_with_a_hash_that_keeps_two_apart(broker: Broker) -> None:
    owner = create_member(broker, "owner@example.com", "correct horse battery")
    site = create_site(broker, owner, "my-site")
    first, second = "visitor " + "v" * 300 + "1", "visitor " + "v" * 300 + "2"
    with transaction(broker.sessions) as db:
        audit.record(db, site.id, "test.event", first)
        audit.record(db, site.id, "test.event", second)
    with broker.sessions() as db:
        actors = list(db.scalars(select(AuditEvent.actor).where(AuditEvent.kind == "test.event")))
    assert all(len(actor) == MAX_ACTOR_LENGTH for actor in actors)
    assert len(set(actors)) == 2


@pytest.mark.parametrize("expires_in", [1e20, "1e300", 10**12, "inf", -5])
def test_an_expires_in_beyond_any_date_connects_or_is_refused_without_a_5xx(
    live: LiveServer, http: httpx.Client, pat: dict[str, str], expires_in: Any
) -> None:
    """A token answer's `expires_in` past the year 9999 (or infinite, or negative): the
    callback answers without a 5xx, and a connection it made reads its secrets."""
    api = live.url + "/api/v1"
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    token = http.post(f"{api}/sites/my-site/api-auth", headers=pat).json()["token"]
    queued = http.post(
        f"{live.url}/_emulator/_admin/faults",
        json={
            "provider": "spotify",
            "endpoint": "token",
            "status": 200,
            "body": {"access_token": "odd-token", "token_type": "Bearer", "expires_in": expires_in},
        },
    )
    assert queued.status_code == 200, queued.text
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "spotify"}, headers=pat
    )
    assert started.status_code == 200, started.text
    back = consent(http, started.json()["authorize_url"])
    assert back.status_code < 500, back.text[:300]
    read = http.get(f"{api}/secrets", headers=bearer(token))
    assert read.status_code == 200, read.text
    connection = http.get(f"{api}/sites/my-site/connections/spotify", headers=pat)
    assert connection.status_code in (200, 404), connection.text


def test_scope_lists_at_their_limits_and_one_past(
    live: LiveServer, http: httpx.Client, pat: dict[str, str]
) -> None:
    """100 scopes of 200 characters start a flow (stored with it on both databases); a 201st
    character or a 101st scope is a 422 naming the limit."""
    api = live.url + "/api/v1"
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    start = f"{api}/sites/my-site/connections"
    longest = [f"{n:03d}" + "s" * 197 for n in range(100)]
    started = http.post(start, json={"provider": "github", "scopes": longest}, headers=pat)
    assert started.status_code == 200, started.text
    too_long = http.post(start, json={"provider": "github", "scopes": ["s" * 201]}, headers=pat)
    assert too_long.status_code == 422
    assert "200" in too_long.text
    too_many = http.post(
        start, json={"provider": "github", "scopes": [*longest, "one-more"]}, headers=pat
    )
    assert too_many.status_code == 422
    assert "100" in too_many.text
