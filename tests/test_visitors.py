"""Visitor connections: a site's function hands one of its visitors a single-use connect link,
the visitor connects their own account, and the site's functions read that visitor's tokens
and nobody else's; deleting the visitor revokes and erases them. Over real HTTP against a live
server with its emulated providers, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

import apiauth
from apiauth.domain import sites
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, Connection, ConnectSession
from tests.consent import consent, press_connect
from tests.servers import LiveServer
from tests.stored_connections import store_connection

pytestmark = pytest.mark.fast

RETURN_URL = "http://127.0.0.1:9/account?tab=apps"
PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def _fresh_client_cache() -> Iterator[None]:
    apiauth.clear_cache()
    yield
    apiauth.clear_cache()


@pytest.fixture
def site_token(live: LiveServer, owner: MemberView) -> str:
    sites.create_site(live.broker, owner, "my-site")
    return sites.enable_api_auth(live.broker, owner, "my-site")


def connect_link(
    live: LiveServer, http: httpx.Client, token: str, visitor_id: str, **body: Any
) -> str:
    body = {"providers": ["github", "box"], "return_url": RETURN_URL, **body}
    answer = http.post(
        f"{live.url}/api/v1/connect-sessions",
        json={"visitor_id": visitor_id, **body},
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    url: str = answer.json()["url"]
    return url


def visitor_connects(
    live: LiveServer, http: httpx.Client, token: str, visitor_id: str, provider: str = "github"
) -> httpx.Response:
    """The visitor opens the link, presses Connect and consents: the way back to the site."""
    link = connect_link(live, http, token, visitor_id)
    pressed = press_connect(http, link, provider)
    assert pressed.status_code == 303, pressed.text
    return consent(http, pressed.headers["location"])


def secrets_of(
    live: LiveServer, http: httpx.Client, token: str, visitor_id: str | None = None
) -> httpx.Response:
    params = {"visitor_id": visitor_id} if visitor_id is not None else {}
    return http.get(f"{live.url}/api/v1/secrets", params=params, headers=bearer(token))


def function_token(live: LiveServer, http: httpx.Client, token: str, **body: Any) -> str:
    minted = http.post(f"{live.url}/api/v1/function-tokens", json=body, headers=bearer(token))
    assert minted.status_code == 201, minted.text
    value: str = minted.json()["token"]
    return value


def test_a_visitor_connects_through_the_hosted_page_and_lands_back_on_the_site(
    live: LiveServer, http: httpx.Client, owner: MemberView, site_token: str
) -> None:
    link = connect_link(live, http, site_token, "alice")
    assert link.startswith(f"{live.url}/connect/")
    page = http.get(link)
    assert page.status_code == 200
    assert "my-site" in page.text
    assert "GitHub" in page.text
    assert "Box" in page.text
    assert "Spotify" not in page.text

    pressed = press_connect(http, link, "github")
    assert pressed.status_code == 303
    back = consent(http, pressed.headers["location"])
    assert back.status_code == 303
    location = urlsplit(back.headers["location"])
    assert location.netloc == "127.0.0.1:9"
    assert location.path == "/account"
    assert parse_qs(location.query) == {"tab": ["apps"], "apiauth_connected": ["github"]}

    alice = secrets_of(live, http, site_token, "alice").json()
    assert list(alice) == ["github"]
    assert alice["github"]["is_logged_in"]
    assert secrets_of(live, http, site_token).json() == {}, "the owner sees no visitor's token"
    owners_list = http.get(
        f"{live.url}/api/v1/sites/my-site/connections",
        headers=bearer(create_personal_token(live.broker, owner, "t")),
    )
    assert owners_list.json() == []

    # Another visitor says no at the provider: back to the site with the reason.
    link = connect_link(live, http, site_token, "bob")
    pressed = press_connect(http, link, "box")
    back = consent(http, pressed.headers["location"], button="Deny")
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert "denied" in query["apiauth_error"][0]
    assert secrets_of(live, http, site_token, "bob").json() == {}


def test_a_connect_link_is_checked_works_once_and_expires(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    link = connect_link(live, http, site_token, "carol")
    assert http.get(link).status_code == 200
    assert http.get(link).status_code == 200, "showing the page does not spend the link"
    assert press_connect(http, link, "spotify").status_code == 422, "not offered"
    assert press_connect(http, link, "github").status_code == 303
    again = press_connect(http, link, "github")
    assert again.status_code == 410
    assert "used already" in again.text
    assert "apiauth_error=" in again.text, "a way back to the site"
    assert http.get(link).status_code == 410

    expiring = connect_link(live, http, site_token, "carol")
    with transaction(live.broker.sessions) as db:
        db.execute(
            update(ConnectSession)
            .where(ConnectSession.used_at.is_(None))
            .values(expires_at=live.broker.clock() - timedelta(seconds=1))
        )
    assert http.get(expiring).status_code == 410
    assert press_connect(http, expiring, "github").status_code == 410
    assert http.get(f"{live.url}/connect/not-a-link").status_code == 404

    # Only a site token asks for links, for a well-formed visitor, providers and return URL.
    url = f"{live.url}/api/v1/connect-sessions"
    good = {"visitor_id": "dave", "providers": ["github"], "return_url": RETURN_URL}
    for change in (
        {"visitor_id": "has space"},
        {"visitor_id": ""},
        {"providers": []},
        {"providers": ["nope"]},
        {"return_url": "http://example.com/back"},
        {"return_url": "javascript:alert(1)"},
        {"return_url": "https://user@example.com/"},
        {"scopes": {"box": ["x"]}},
    ):
        answer = http.post(url, json={**good, **change}, headers=bearer(site_token))
        assert answer.status_code == 422, (change, answer.text)
    fn = function_token(live, http, site_token)
    assert http.post(url, json=good, headers=bearer(fn)).status_code == 403
    assert http.post(url, json=good).status_code == 401
    ok = {**good, "return_url": "https://my-site.example/back#done"}
    assert http.post(url, json=ok, headers=bearer(site_token)).status_code == 201


@pytest.mark.over_http
def test_who_may_read_a_visitors_tokens(
    live: LiveServer, http: httpx.Client, owner: MemberView, site_token: str
) -> None:
    site_id = sites.get_site(live.broker, owner, "my-site").id
    store_connection(live.broker, site_id, "github", "owner-gh")
    store_connection(live.broker, site_id, "github", "a-gh", visitor_id="a")
    store_connection(live.broker, site_id, "box", "a-box", visitor_id="a")
    store_connection(live.broker, site_id, "github", "b-gh", visitor_id="b")

    def tokens(answer: httpx.Response) -> dict[str, str]:
        assert answer.status_code == 200, answer.text
        return {name: secret["bearer_token"] for name, secret in answer.json().items()}

    assert tokens(secrets_of(live, http, site_token)) == {"github": "owner-gh"}
    assert tokens(secrets_of(live, http, site_token, "a")) == {"github": "a-gh", "box": "a-box"}
    assert tokens(secrets_of(live, http, site_token, "nobody")) == {}

    bound = function_token(live, http, site_token, visitor_id="a", providers=["github"])
    assert tokens(secrets_of(live, http, bound)) == {"github": "a-gh"}
    assert tokens(secrets_of(live, http, bound, "a")) == {"github": "a-gh"}
    assert secrets_of(live, http, bound, "b").status_code == 403
    unbound = function_token(live, http, site_token)
    assert tokens(secrets_of(live, http, unbound)) == {"github": "owner-gh"}
    assert secrets_of(live, http, unbound, "a").status_code == 403

    # The client library: the visitor is part of what is cached.
    assert apiauth.get_secrets(token=site_token, url=live.url, visitor_id="b")["github"]
    owner_view = apiauth.get_secrets(token=site_token, url=live.url)
    assert owner_view["github"].bearer_token == "owner-gh"
    minted = apiauth.create_function_token(token=site_token, url=live.url, visitor_id="b")
    assert apiauth.get_secrets(token=minted.token, url=live.url).github is not None
    assert apiauth.get_secrets(token=minted.token, url=live.url)["github"].bearer_token == "b-gh"


@pytest.mark.over_http
def test_a_function_calls_the_provider_as_the_visitor_through_the_proxy(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    visitor_connects(live, http, site_token, "erin")
    proxy = f"{live.url}/api/v1/proxy/github/user"
    assert http.get(proxy, headers=bearer(site_token)).status_code == 404, "the owner has none"
    as_erin = http.get(proxy, headers={**bearer(site_token), "Apiauth-Visitor": "erin"})
    assert as_erin.status_code == 200
    assert as_erin.json()["login"]
    bound = function_token(live, http, site_token, visitor_id="frank")
    refused = http.get(proxy, headers={**bearer(bound), "Apiauth-Visitor": "erin"})
    assert refused.status_code == 403
    with apiauth.proxy("github", token=site_token, url=live.url, visitor_id="erin") as github:
        assert github.get("/user").status_code == 200


@pytest.mark.over_http
def test_deleting_a_visitor_revokes_and_erases_everything_of_theirs(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    visitor_connects(live, http, site_token, "gina", "github")
    visitor_connects(live, http, site_token, "gina", "box")
    visitor_connects(live, http, site_token, "hank", "github")
    held = secrets_of(live, http, site_token, "gina").json()
    bound = function_token(live, http, site_token, visitor_id="gina")
    unused_link = connect_link(live, http, site_token, "gina")

    erased = apiauth.delete_visitor("gina", token=site_token, url=live.url)
    assert (erased.deleted_connections, erased.revoked_at_provider) == (2, 2)
    for name, secret in held.items():
        userinfo = live.broker.catalog[name].userinfo_url
        assert userinfo is not None
        me = http.get(userinfo, headers=bearer(secret["bearer_token"]))
        assert me.status_code == 401, f"the {name} token still works at the provider"
    assert secrets_of(live, http, site_token, "gina").json() == {}
    assert secrets_of(live, http, bound).status_code == 401, "its function tokens die too"
    assert http.get(unused_link).status_code == 404, "its links are gone"
    assert list(secrets_of(live, http, site_token, "hank").json()) == ["github"]

    again = http.delete(f"{live.url}/api/v1/visitors/gina", headers=bearer(site_token))
    assert again.json() == {
        "visitor_id": "gina",
        "deleted_connections": 0,
        "revoked_at_provider": 0,
    }
    fn = function_token(live, http, site_token)
    assert http.delete(f"{live.url}/api/v1/visitors/hank", headers=bearer(fn)).status_code == 403

    with live.broker.sessions() as db:
        deleted = select(AuditEvent).where(AuditEvent.kind == "visitor.deleted")
        # In the order they happened: without ORDER BY, PostgreSQL may return the second first.
        events = list(db.scalars(deleted.order_by(AuditEvent.id)))
        assert not db.scalars(select(Connection).where(Connection.visitor_id == "gina")).first()
    assert events[0].actor == "site token"
    assert events[0].detail["deleted_connections"] == 2
    assert all(secret["bearer_token"] not in str(events) for secret in held.values())


def test_members_see_visitor_counts_and_search_by_id(
    live: LiveServer, http: httpx.Client, owner: MemberView, site_token: str
) -> None:
    site_id = sites.get_site(live.broker, owner, "my-site").id
    for visitor, provider in (("user-1", "github"), ("user-2", "github"), ("other", "box")):
        store_connection(live.broker, site_id, provider, f"t-{visitor}", visitor_id=visitor)
    pat = bearer(create_personal_token(live.broker, owner, "t"))
    url = f"{live.url}/api/v1/sites/my-site/visitors"
    overview = http.get(url, headers=pat).json()
    assert overview["total_visitors"] == 3
    counts = {p["provider"]: p["by_status"] for p in overview["providers"]}
    assert counts == {"box": {"connected": 1}, "github": {"connected": 2}}
    found = http.get(url, params={"search": "user-"}, headers=pat).json()
    assert [v["visitor_id"] for v in found["visitors"]] == ["user-1", "user-2"]
    assert "t-user-1" not in str(found)
    assert http.get(url, params={"search": "%"}, headers=pat).json()["visitors"] == []
    assert http.get(url, headers=bearer(site_token)).status_code == 401


# --------------------------------------------------------------------------- property

_unique = itertools.count()
visitor_ids = st.text(
    alphabet=st.characters(categories=("L", "N", "P", "S"), max_codepoint=0x2FFF),
    min_size=1,
    max_size=12,
)
provider_sets = st.frozensets(st.sampled_from(PROVIDERS), max_size=3)


def test_a_visitors_read_returns_exactly_their_own_tokens(
    live: LiveServer, http: httpx.Client, owner: MemberView
) -> None:
    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        owners=provider_sets,
        layout=st.dictionaries(visitor_ids, provider_sets, min_size=1, max_size=4),
    )
    def check(owners: frozenset[str], layout: dict[str, frozenset[str]]) -> None:
        name = f"p{next(_unique)}-{secrets.token_hex(3)}"
        site = sites.create_site(live.broker, owner, name)
        token = sites.enable_api_auth(live.broker, owner, name)
        stored: dict[str, dict[str, str]] = {"": {}}
        for provider in owners:
            stored[""][provider] = f"owner-{provider}-{secrets.token_hex(6)}"
            store_connection(live.broker, site.id, provider, stored[""][provider])
        for visitor, providers in layout.items():
            stored[visitor] = {}
            for provider in providers:
                access = f"v-{provider}-{secrets.token_hex(6)}"
                store_connection(live.broker, site.id, provider, access, visitor_id=visitor)
                stored[visitor][provider] = access
        for whose, expected in stored.items():
            readers = [(token, whose or None)]
            if whose:
                readers.append((function_token(live, http, token, visitor_id=whose), None))
            for reader, asked in readers:
                answer = secrets_of(live, http, reader, asked)
                assert answer.status_code == 200, answer.text
                got = {p: s["bearer_token"] for p, s in answer.json().items()}
                assert got == expected, f"read of {whose or 'the owner'!r}"

    check()


@pytest.mark.over_http
def test_the_dashboard_lists_visitor_counts_searches_and_deletes_a_visitor(
    live: LiveServer, owner: MemberView, site_token: str
) -> None:
    from apiauth.domain.web_sessions import start_session

    site_id = sites.get_site(live.broker, owner, "my-site").id
    for visitor, provider in (("ann-1", "github"), ("ann-2", "box"), ("zed", "github")):
        store_connection(live.broker, site_id, provider, f"t-{visitor}", visitor_id=visitor)
    session = start_session(live.broker, owner)
    with httpx.Client(cookies={"apiauth_session": session.token}, timeout=15) as browser:
        page = browser.get(f"{live.url}/sites/my-site/visitors", params={"search": "ann"})
        assert page.status_code == 200
        assert "ann-1" in page.text
        assert "ann-2" in page.text
        assert "<code>zed</code>" not in page.text
        assert "t-ann-1" not in page.text, "never a token"
        deleted = browser.post(
            f"{live.url}/sites/my-site/visitors/delete",
            data={"visitor_id": "ann-1", "csrf_token": session.csrf_token},
        )
        assert deleted.status_code == 303
        after = browser.get(f"{live.url}/sites/my-site/visitors").text
        assert "<code>ann-1</code>" not in after
        assert "<code>ann-2</code>" in after
