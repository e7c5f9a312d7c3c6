"""Connect CSRF (RFC 6749 §10.12): every OAuth flow is bound to the browser that finishes it.

A flow started from the API or the CLI opens apiauth's Continue page first (site, team,
provider, who started it); only the browser that pressed Continue - or, for the dashboard
and visitor connect links, the browser that pressed Connect - may finish it. Each member of
the class is tried against a live server over real HTTP, on SQLite and PostgreSQL: a callback
without the binding, with a forged one, of a flow nobody continued, a Continue pressed from
another site (no CSRF token) or by a second browser, and a visitor's link pressed cross-site.
Whatever fails stores nothing and says why."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain import connect_flow, sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.token_format import hash_token
from apiauth.store.models import AuthState, Connection
from tests.consent import consent, press_connect, press_continue, provider_url_of
from tests.in_process import SSL_CONTEXT
from tests.servers import LiveServer

SITE = "team-b-site"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def mallory(live: LiveServer) -> MemberView:
    """Team B's member, who starts the flows the tests try to have someone else finish."""
    member = create_member(
        live.broker, "mallory@team-b.example", "correct horse battery", team_name="Team B"
    )
    sites.create_site(live.broker, member, SITE)
    sites.enable_api_auth(live.broker, member, SITE)
    return member


def browser() -> httpx.Client:
    """Another person's browser: a cookie jar of its own."""
    return httpx.Client(timeout=15, verify=SSL_CONTEXT)


def api_start(live: LiveServer, member: MemberView, provider: str = "github") -> str:
    pat = create_personal_token(live.broker, member, "t")
    started = httpx.post(
        f"{live.url}/api/v1/sites/{SITE}/connections",
        json={"provider": provider},
        headers=bearer(pat),
        timeout=15,
    )
    assert started.status_code == 200, started.text
    link: str = started.json()["authorize_url"]
    return link


def stored(live: LiveServer) -> list[str]:
    with live.broker.sessions() as db:
        return list(db.scalars(select(Connection.provider)))


def test_an_api_flow_starts_at_apiauths_page_naming_site_team_provider_and_starter(
    live: LiveServer, mallory: MemberView
) -> None:
    link = api_start(live, mallory, "spotify")
    assert link.startswith(f"{live.url}/oauth/continue/")
    with browser() as person:
        page = person.get(link, headers={"Accept": "text/html"})
        assert page.status_code == 200
        for fact in (SITE, "Team B", "Spotify", "mallory@team-b.example", "Continue"):
            assert fact in page.text
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert "state=" not in page.text, "the provider's URL is given only after Continue"
        assert person.get(link).status_code == 200, "showing the page binds nothing"
        location = urlsplit(provider_url_of(person, link))
        assert location.path.startswith("/_emulator/spotify/")
        gone = person.get(link, headers={"Accept": "text/html"})
        assert gone.status_code == 400
        assert "continued in a browser already" in gone.text
    unknown = httpx.get(f"{live.url}/oauth/continue/{'x' * 43}", timeout=15)
    assert unknown.status_code == 404


def test_a_flow_continued_by_one_browser_and_finished_by_another_stores_nothing(
    live: LiveServer, mallory: MemberView
) -> None:
    with browser() as attacker, browser() as victim:
        provider_url = provider_url_of(attacker, api_start(live, mallory))
        refused = consent(victim, provider_url)
        assert refused.status_code == 403
        body = refused.json()["error"]
        assert body["code"] == "flow_not_bound"
        assert "started in another browser" in body["message"]
        assert stored(live) == []
        # The victim's callback (their code), replayed in the attacker's bound browser: the
        # state is spent, so the victim's account cannot be connected that way either.
        replay = attacker.get(str(refused.request.url), headers={"Accept": "application/json"})
        assert replay.status_code == 400
        assert "used already" in replay.json()["error"]["message"]
        assert stored(live) == []


def test_a_callback_with_a_forged_binding_or_none_at_all_stores_nothing(
    live: LiveServer, mallory: MemberView
) -> None:
    # A dashboard-style flow (bound at start) finished with a made-up cookie of the right name.
    bound = connect_flow.start_connection(live.broker, mallory, SITE, "github", bind_browser=True)
    assert bound.binding is not None
    assert bound.authorize_url == bound.provider_url
    with browser() as victim:
        victim.cookies.set(connect_flow.binding_cookie_name(bound.state_id), "f" * 43)
        assert consent(victim, bound.provider_url).status_code == 403
    # A flow nobody continued: its provider URL reached a browser some other way.
    unbound = connect_flow.start_connection(live.broker, mallory, SITE, "box")
    with browser() as victim:
        refused = consent(victim, unbound.provider_url)
        assert refused.status_code == 403
        assert "not continued from apiauth's page" in refused.json()["error"]["message"]
    # Another flow's binding does not fit this one.
    first = connect_flow.start_connection(live.broker, mallory, SITE, "github", bind_browser=True)
    second = connect_flow.start_connection(live.broker, mallory, SITE, "box", bind_browser=True)
    with browser() as victim:
        assert first.binding is not None
        victim.cookies.set(connect_flow.binding_cookie_name(second.state_id), first.binding)
        page = consent(victim, second.provider_url)
        assert page.status_code == 403
    assert stored(live) == []
    with live.broker.sessions() as db:
        outcomes = list(db.scalars(select(AuthState.outcome).where(AuthState.used_at.is_not(None))))
    assert len(outcomes) == 3
    assert all("nothing was connected" in o for o in outcomes if o)
    # The browser that holds the binding finishes the flow.
    with browser() as mallorys:
        assert first.binding is not None
        mallorys.cookies.set(connect_flow.binding_cookie_name(first.state_id), first.binding)
        assert consent(mallorys, first.provider_url).status_code == 200
    assert stored(live) == ["github"]


def test_continue_needs_the_pages_csrf_token_and_binds_one_browser_once(
    live: LiveServer, mallory: MemberView
) -> None:
    link = api_start(live, mallory)
    with browser() as elsewhere:
        # Another site's page posting the form: no cookie of apiauth's page, or a guess.
        assert elsewhere.post(link, data={"csrf_token": ""}).status_code == 403
        elsewhere.get(link)
        assert elsewhere.post(link, data={"csrf_token": "a-guess" * 5}).status_code == 403
        assert "Form refused" in elsewhere.post(link, data={}).text
    with live.broker.sessions() as db:
        row = db.scalar(
            select(AuthState).where(AuthState.continue_hash == hash_token(link.rsplit("/", 1)[1]))
        )
        assert row is not None
        assert row.binding_hash is None, "a refused Continue binds nothing"
    with browser() as first, browser() as second:
        first_page = first.get(link)
        second.get(link)
        assert first_page.status_code == 200
        assert press_continue(first, link).status_code == 303
        late = second.post(link, data={"csrf_token": second.cookies.get("apiauth_form") or ""})
        assert late.status_code == 400
        assert "only that browser can finish it" in late.text


def test_a_visitors_connect_button_needs_the_pages_csrf_token_and_binds_the_browser(
    live: LiveServer, mallory: MemberView
) -> None:
    token = sites.rotate_site_token(live.broker, mallory, SITE)
    made = httpx.post(
        f"{live.url}/api/v1/connect-sessions",
        json={
            "visitor_id": "alice",
            "providers": ["github"],
            "return_url": "http://127.0.0.1:9/back",
        },
        headers=bearer(token),
        timeout=15,
    )
    assert made.status_code == 201, made.text
    link = made.json()["url"]
    with browser() as elsewhere:
        forged = elsewhere.post(link, data={"provider": "github", "csrf_token": "x" * 43})
        assert forged.status_code == 403
    with browser() as visitor, browser() as someone_else:
        assert visitor.get(link).status_code == 200, "a refused press does not spend the link"
        pressed = press_connect(visitor, link, "github")
        assert pressed.status_code == 303
        refused = consent(someone_else, pressed.headers["location"])
        assert refused.status_code == 403
        assert "location" not in refused.headers, "not sent on to the site's return URL"
    assert stored(live) == []
