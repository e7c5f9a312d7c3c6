"""The authenticated proxy: a function calls `/api/v1/proxy/<provider>/<path>` with its site
or function token and gets the provider's answer, the provider's token attached by apiauth,
refreshed once on a 401. Live server, emulated providers over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

import apiauth
from apiauth.domain import connect_flow, sites
from apiauth.domain.members import create_member
from apiauth.domain.proxy import ProxyTarget
from apiauth.oauth.modes import Injection
from apiauth.server.proxy import _forwarded_headers
from tests.consent import consent
from tests.servers import LiveServer

pytestmark = pytest.mark.fast


@pytest.fixture
def site_token(live: LiveServer, http: httpx.Client) -> str:
    owner = create_member(live.broker, "owner@example.com", "correct horse battery")
    sites.create_site(live.broker, owner, "my-site")
    token = sites.enable_api_auth(live.broker, owner, "my-site")
    for provider in ("github", "box", "salesforce"):
        start = connect_flow.start_connection(live.broker, owner, "my-site", provider)
        assert consent(http, start.authorize_url).status_code == 200
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fault(live: LiveServer, http: httpx.Client, **spec: object) -> None:
    assert http.post(f"{live.url}/_emulator/_admin/faults", json=spec).status_code == 200


def test_a_function_calls_github_through_the_proxy(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    answer = http.get(f"{live.url}/api/v1/proxy/github/user", headers=bearer(site_token))
    assert answer.status_code == 200
    assert answer.json()["login"] == "octocat"


@pytest.mark.over_http
def test_the_client_library_proxies_too(live: LiveServer, site_token: str) -> None:
    with apiauth.proxy("github", token=site_token, url=live.url) as github:
        assert github.get("/user").json()["login"] == "octocat"


def test_salesforce_calls_go_to_the_connections_instance_url(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    answer = http.get(
        f"{live.url}/api/v1/proxy/salesforce/services/oauth2/userinfo", headers=bearer(site_token)
    )
    assert answer.status_code == 200
    assert answer.json()["preferred_username"]


def test_a_401_from_the_provider_refreshes_once_and_retries(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    fault(live, http, provider="box", endpoint="userinfo", status=401, body={"type": "error"})
    answer = http.get(f"{live.url}/api/v1/proxy/box/users/me", headers=bearer(site_token))
    assert answer.status_code == 200
    assert answer.json()["type"] == "user"
    stats = http.get(f"{live.url}/_emulator/_admin/stats").json()["box"]
    assert stats["refreshes"] == 1
    assert stats["refresh_token_reuse"] == 0


@pytest.mark.over_http
def test_a_large_answer_comes_back_whole(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    size = 5_000_000
    fault(live, http, provider="github", endpoint="userinfo", status=200, pad_bytes=size)
    with http.stream(
        "GET", f"{live.url}/api/v1/proxy/github/user", headers=bearer(site_token)
    ) as answer:
        chunks = list(answer.iter_bytes())
    assert answer.status_code == 200
    assert len(chunks) > 1  # it arrived in pieces, as it was streamed
    assert json.loads(b"".join(chunks))["padding"] == "x" * size


def test_the_proxy_refuses_what_the_token_may_not_do(
    live: LiveServer, http: httpx.Client, site_token: str
) -> None:
    assert http.get(f"{live.url}/api/v1/proxy/github/user").status_code == 401
    minted = http.post(
        f"{live.url}/api/v1/function-tokens",
        json={"providers": ["github"]},
        headers=bearer(site_token),
    )
    function_token = minted.json()["token"]
    github = http.get(f"{live.url}/api/v1/proxy/github/user", headers=bearer(function_token))
    assert github.status_code == 200
    box = http.get(f"{live.url}/api/v1/proxy/box/users/me", headers=bearer(function_token))
    assert box.status_code == 403
    assert (
        http.get(f"{live.url}/api/v1/proxy/spotify/me", headers=bearer(site_token)).status_code
        == 404
    )
    assert (
        http.get(f"{live.url}/api/v1/proxy/nosuch/x", headers=bearer(site_token)).status_code == 404
    )


def test_nothing_of_apiauth_is_forwarded_to_the_provider() -> None:
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/proxy/github/user",
            "query_string": b"",
            "headers": Headers(
                {
                    "authorization": "Bearer apiauth_site_secret",
                    "cookie": "apiauth_session=apiauth_sess_secret",
                    "x-csrf-token": "csrf",
                    "connection": "keep-alive, x-custom-hop",
                    "x-custom-hop": "hop",
                    "keep-alive": "timeout=5",
                    "transfer-encoding": "chunked",
                    "host": "127.0.0.1:8000",
                    "apiauth-visitor": "v1",
                    "accept": "application/vnd.github+json",
                    "x-github-api-version": "2022-11-28",
                }
            ).raw,
        }
    )
    target = ProxyTarget(
        "con_1",
        "https://api.github.com",
        Injection((("Authorization", "Bearer gho_provider"),)),
        True,
        headers=(("Authorization", "Bearer gho_provider"),),
    )
    forwarded = dict(_forwarded_headers(request, target))
    assert forwarded == {
        "accept": "application/vnd.github+json",
        "x-github-api-version": "2022-11-28",
        "Authorization": "Bearer gho_provider",
    }
