"""No 5xx from malformed input (class 5): URLs that `urllib.parse.urlsplit` cannot parse
(an unclosed IPv6 bracket, a bad zone, an out-of-range port) wherever a URL is taken, and
integers beyond any column in query parameters, answer a clear 4xx. Against a live server,
on SQLite and PostgreSQL (an id past PostgreSQL's bigint is where a database would fail)."""

from __future__ import annotations

import httpx
import pytest

from apiauth.domain import sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from tests.servers import LiveServer

UNPARSABLE = ["http://[::1", "https://[fe80::1%zz/x", "https://[not-v6]/", "https://h:99999999/"]
HUGE = ["99999999999999999999999", str(2**63), "-99999999999999999999999"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def owner(live: LiveServer) -> MemberView:
    member = create_member(live.broker, "owner@example.com", "correct horse battery")
    sites.create_site(live.broker, member, "my-site")
    return member


def test_unparsable_urls_are_a_4xx_wherever_a_url_is_taken(
    live: LiveServer, owner: MemberView
) -> None:
    pat = bearer(create_personal_token(live.broker, owner, "t"))
    token = bearer(sites.enable_api_auth(live.broker, owner, "my-site"))
    api = f"{live.url}/api/v1"
    tried = 0
    with httpx.Client(timeout=15) as http:
        for n, url in enumerate(UNPARSABLE):
            for method, path, body, headers in (
                ("POST", "/sites", {"name": f"site-{n}", "deploy_hook_url": url}, pat),
                ("POST", "/sites", {"name": f"hook-{n}", "webhook_url": url}, pat),
                ("PATCH", "/sites/my-site", {"deploy_hook_url": url}, pat),
                ("PATCH", "/sites/my-site", {"webhook_url": url}, pat),
                ("POST", "/providers", {"url": url}, pat),
                (
                    "POST",
                    "/connect-sessions",
                    {"visitor_id": "v", "providers": ["github"], "return_url": url},
                    token,
                ),
            ):
                answer = http.request(method, api + path, json=body, headers=headers)
                assert 400 <= answer.status_code < 500, (method, path, url, answer.text)
                assert answer.json()["error"]["message"]
                tried += 1
            signed_in = http.get(f"{live.url}/sign-in", params={"next": url})
            assert signed_in.status_code == 200
    assert tried == 24


def test_integers_beyond_any_column_in_query_parameters_are_a_4xx(
    live: LiveServer, owner: MemberView
) -> None:
    pat = bearer(create_personal_token(live.broker, owner, "t"))
    with httpx.Client(timeout=15) as http:
        for value in HUGE:
            for path in ("/api/v1/sites/my-site/events", "/api/v1/sites/my-site/visitors"):
                for name in ("before", "limit", "after"):
                    answer = http.get(f"{live.url}{path}", params={name: value}, headers=pat)
                    assert answer.status_code < 500, (path, name, value, answer.text)
            events = http.get(
                f"{live.url}/api/v1/sites/my-site/events", params={"before": value}, headers=pat
            )
            assert events.status_code == 422, events.text


@pytest.mark.fast
def test_a_trailing_newline_does_not_pass_for_a_valid_value(
    live: LiveServer, owner: MemberView, http: httpx.Client
) -> None:
    """A `$`-anchored check lets "value\\n" through; every validator is anchored with `\\Z`:
    a scope and a provider's name with a line break are refused, nothing stored (connection
    parameters and emails are trimmed first; a learned value with one is refused:
    `test_catalog_format.py`)."""
    pat = bearer(create_personal_token(live.broker, owner, "t"))
    api = f"{live.url}/api/v1"
    for body in (
        {"provider": "github", "scopes": ["repo\n"]},
        {"provider": "github", "scopes": ["repo\r\n"]},
    ):
        answer = http.post(f"{api}/sites/my-site/connections", json=body, headers=pat)
        assert answer.status_code == 422, (body, answer.text)
    for name in ("tools\n", "tools\r\n"):
        added = http.post(
            f"{api}/providers",
            json={"url": f"{live.url}/_emulator/_mcp", "name": name},
            headers=pat,
        )
        assert added.status_code == 422, (name, added.text)
    assert not [p for p in http.get(f"{api}/providers", headers=pat).json() if p["added_by_url"]]
    assert http.get(f"{api}/sites/my-site/connections", headers=pat).json() == []
