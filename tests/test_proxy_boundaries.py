"""What the proxy hands back and where the client library sends the site's token.

- The provider's answer is served from apiauth's origin: none of its cookies, CORS grants or
  browser policies survive, and apiauth's own headers stand (class 11).
- `apiauth.proxy(...)` sends `APIAUTH_TOKEN` nowhere but the broker: a pagination `Link` on
  the provider's API comes back pointing through the proxy, an absolute URL on the provider's
  API is mapped through it, and one on any other host is refused before anything is sent
  (class 8).

Against a live server over real HTTP with the emulated providers, SQLite and PostgreSQL.
"""

from __future__ import annotations

import httpx
import pytest

import apiauth
from apiauth.domain import connect_flow, sites
from apiauth.domain.members import create_member
from apiauth.server.proxy import PROXY_POLICY
from tests.consent import consent
from tests.servers import HookReceiver, LiveServer

pytestmark = [pytest.mark.fast, pytest.mark.over_http]

HOSTILE_HEADERS = {
    "Set-Cookie": "apiauth_session=stolen; Path=/",
    "Access-Control-Allow-Origin": "https://evil.example",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "*",
    "Content-Security-Policy": "script-src * 'unsafe-inline'",
    "X-Frame-Options": "ALLOWALL",
    "X-Content-Type-Options": "none",
    "Referrer-Policy": "unsafe-url",
    "Strict-Transport-Security": "max-age=0",
    "Refresh": "0; url=https://evil.example/",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Clear-Site-Data": '"cookies"',
    "X-Request-Id": "chosen-by-the-provider",
    "X-GitHub-Request-Id": "ABCD:1234",  # the provider's own header: kept
}


@pytest.fixture
def site_token(live: LiveServer, http: httpx.Client) -> str:
    owner = create_member(live.broker, "owner@example.com", "correct horse battery")
    sites.create_site(live.broker, owner, "my-site")
    token = sites.enable_api_auth(live.broker, owner, "my-site")
    start = connect_flow.start_connection(live.broker, owner, "my-site", "github", ["repo"])
    assert consent(http, start.authorize_url).status_code == 200
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_providers_headers_do_not_override_apiauths_own(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    queued = http.post(
        f"{live.url}/_emulator/_admin/faults",
        json={
            "provider": "github",
            "endpoint": "userinfo",
            "status": 200,
            "body": {"login": "octocat"},
            "headers": HOSTILE_HEADERS,
        },
    )
    assert queued.status_code == 200
    answer = http.get(f"{live.url}/api/v1/proxy/github/user", headers=bearer(site_token))
    assert answer.status_code == 200
    assert answer.json() == {"login": "octocat"}
    names = {name.lower() for name in answer.headers}
    assert "set-cookie" not in names
    assert not [n for n in names if n.startswith("access-control-")]
    assert "refresh" not in names
    assert "clear-site-data" not in names
    assert "cross-origin-resource-policy" not in names
    assert "strict-transport-security" not in names  # an http server sets none of its own
    assert answer.headers.get_list("Content-Security-Policy") == [PROXY_POLICY]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Request-Id"] != "chosen-by-the-provider"
    assert answer.headers["X-GitHub-Request-Id"] == "ABCD:1234"
    assert not http.cookies.get("apiauth_session")


def test_a_pagination_link_points_back_through_the_proxy(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    first = http.get(
        f"{live.url}/api/v1/proxy/github/user/repos?per_page=2", headers=bearer(site_token)
    )
    assert first.status_code == 200
    through = f"{live.url}/api/v1/proxy/github/user/repos?"
    assert first.links["next"]["url"].startswith(through)
    assert first.links["last"]["url"].startswith(through)
    assert first.links["next"]["rel"] == "next"
    last = http.get(first.links["last"]["url"], headers=bearer(site_token))
    assert [repo["name"] for repo in last.json()] == ["secret-plans"]


def test_the_client_sends_its_token_to_the_broker_only(live: LiveServer, site_token: str) -> None:
    elsewhere = HookReceiver()
    try:
        with apiauth.proxy("github", token=site_token, url=live.url) as github:
            # Before the broker named the provider's API, and after: another host is refused.
            for url in (elsewhere.url, "https://evil.example/steal"):
                with pytest.raises(apiauth.InvalidRequest, match="nothing was sent"):
                    github.post(url, json={})
            first = github.get("/user/repos", params={"per_page": 2})
            upstream = first.headers["Apiauth-Upstream"]
            names = [repo["name"] for repo in first.json()]
            # Following pages, wherever the URL came from, stays with the broker.
            second = github.get(first.links["next"]["url"])
            names += [repo["name"] for repo in second.json()]
            mapped = github.get(f"{upstream}/user/repos?per_page=2&page=3")
            assert mapped.status_code == 200
            assert mapped.headers["Apiauth-Upstream"] == upstream, "answered through the proxy"
            names += [repo["name"] for repo in mapped.json()]
            assert names == [
                "Hello-World",
                "Spoon-Knife",
                "octocat.github.io",
                "linguist",
                "secret-plans",
            ]
            with pytest.raises(apiauth.InvalidRequest, match="nothing was sent"):
                github.post(elsewhere.url, json={"after": "learning the upstream"})
        assert elsewhere.received == [], "the site token never left for another host"
    finally:
        elsewhere.server.shutdown()
