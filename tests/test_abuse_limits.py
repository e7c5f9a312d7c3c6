"""Abuse: per-token request limits and OAuth-start limits answer 429 with Retry-After, and
no return path (sign-in `next=`, a connection's `return_to`) leads off this server.

Single-use and expiring OAuth `state` are checked in tests/test_api.py
(`test_a_replayed_callback_is_refused_and_changes_nothing`, `test_an_expired_state_is_refused`).
"""

from __future__ import annotations

import re

import httpx
import pytest

from apiauth.domain import connect_flow, sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.errors import InvalidInput
from apiauth.server.rate_limits import SlidingWindow, TokenBucket
from tests.in_process import InProcessServer

pytestmark = pytest.mark.fast

EVIL = ["//evil.example", "https://evil.example/", "/\\evil.example", "\\\\evil.example"]


@pytest.fixture
def app_settings() -> dict[str, object]:
    """Small limits: 5 requests at once per token, 3 OAuth starts."""
    return {"rate_limit_per_token": 1.0, "rate_limit_burst": 5, "rate_limit_oauth_starts": 3}


@pytest.fixture
def limited(app: InProcessServer) -> InProcessServer:
    return app


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take("t") for _ in range(3)] == [None, None, None]
    assert bucket.take("t") == pytest.approx(0.5)
    assert bucket.take("other") is None  # per key
    now[0] += 0.5
    assert bucket.take("t") is None
    assert bucket.take("t") is not None


def test_sliding_window_counts_events_per_key() -> None:
    now = [0.0]
    window = SlidingWindow(2, 60, clock=lambda: now[0])
    window.record("a")
    window.record("a")
    assert window.retry_after("a") == 61
    assert window.retry_after("b") is None
    now[0] += 60
    assert window.retry_after("a") is None


def test_site_and_personal_tokens_are_limited_per_token_with_429_and_retry_after(
    limited: InProcessServer, http: httpx.Client
) -> None:
    owner = create_member(limited.broker, "owner@example.com", "correct horse battery")
    sites.create_site(limited.broker, owner, "my-site")
    site_token = sites.enable_api_auth(limited.broker, owner, "my-site")
    pat = create_personal_token(limited.broker, owner, "tests")
    for token, path in ((site_token, "/api/v1/secrets"), (pat, "/api/v1/sites")):
        headers = {"Authorization": f"Bearer {token}"}
        answers = [http.get(f"{limited.url}{path}", headers=headers) for _ in range(8)]
        statuses = [a.status_code for a in answers]
        assert statuses[:5] == [200] * 5, statuses
        assert 429 in statuses[5:]
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "too many requests" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    # Another token has its own allowance.
    other = create_personal_token(limited.broker, owner, "other")
    fresh = http.get(f"{limited.url}/api/v1/sites", headers={"Authorization": f"Bearer {other}"})
    assert fresh.status_code == 200


def test_oauth_starts_are_limited_per_member_and_address(
    limited: InProcessServer, http: httpx.Client
) -> None:
    owner = create_member(limited.broker, "owner@example.com", "correct horse battery")
    sites.create_site(limited.broker, owner, "my-site")
    url = f"{limited.url}/api/v1/sites/my-site/connections"
    statuses = []
    for n in range(5):
        # A new token each time: the per-token limit is not what stops this.
        headers = {
            "Authorization": f"Bearer {create_personal_token(limited.broker, owner, str(n))}"
        }
        answer = http.post(url, json={"provider": "github"}, headers=headers)
        statuses.append(answer.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    assert answer.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answer.headers["Retry-After"]) <= 61


def _sign_in(http: httpx.Client, base: str, next_path: str) -> httpx.Response:
    page = http.get(f"{base}/sign-in", params={"next": next_path})
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return http.post(
        f"{base}/sign-in",
        data={
            "email": "owner@example.com",
            "password": "correct horse battery",
            "next": next_path,
            "csrf_token": match.group(1),
        },
    )


@pytest.mark.parametrize("next_path", EVIL)
def test_sign_in_never_returns_to_another_site(
    limited: InProcessServer, next_path: str, http: httpx.Client
) -> None:
    create_member(limited.broker, "owner@example.com", "correct horse battery")
    with limited.new_client(timeout=15) as browser:
        answer = _sign_in(browser, limited.url, next_path)
        assert answer.status_code == 303
        assert answer.headers["Location"] == "/"
    with limited.new_client(timeout=15) as browser:
        assert _sign_in(browser, limited.url, "/sites").headers["Location"] == "/sites"


def test_a_connection_returns_only_to_a_local_path(limited: InProcessServer) -> None:
    owner = create_member(limited.broker, "owner@example.com", "correct horse battery")
    sites.create_site(limited.broker, owner, "my-site")
    for target in EVIL:
        with pytest.raises(InvalidInput, match="return_to"):
            connect_flow.start_connection(
                limited.broker, owner, "my-site", "github", return_to=target
            )
