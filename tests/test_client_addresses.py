"""Client addresses and the throttles built on them.

One rule (`server/client_address.py`): the client is the TCP peer; `Forwarded` /
`X-Forwarded-For` are believed only from `APIAUTH_TRUSTED_PROXIES`, read from the nearest
proxy's end, and only a valid IP address is kept. The audit log, the per-address rate limits
and the sign-in throttle all use it: tried here against live servers on SQLite and
PostgreSQL, with spoofed, chained, IPv6, obfuscated and oversized headers. The throttles hold
under parallel guesses, and wrong tokens are limited per address (429 + Retry-After).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from apiauth.config import Settings, parse_networks
from apiauth.domain import sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.server.client_address import ClientAddresses
from tests.servers import LiveServer, running_server

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rule(trusted: str) -> ClientAddresses:
    return ClientAddresses(parse_networks(trusted))


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode("latin-1")) for k, v in values.items()]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("trusted", "peer", "sent", "client"),
    [
        # No trusted proxies: whatever a caller writes in headers is ignored.
        ("", "127.0.0.1", {"x_forwarded_for": "203.0.113.9"}, "127.0.0.1"),
        ("", "127.0.0.1", {"forwarded": "for=203.0.113.9"}, "127.0.0.1"),
        ("", "192.0.2.5", {"x_forwarded_for": "10.0.0.1"}, "192.0.2.5"),
        # A peer that is not a trusted proxy is the client, even with trusted ones set.
        ("10.0.0.0/8", "192.0.2.5", {"x_forwarded_for": "198.51.100.7"}, "192.0.2.5"),
        # Through a trusted proxy: the hop it saw; a spoofed hop further left does not count.
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "198.51.100.7"}, "198.51.100.7"),
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "1.2.3.4, 198.51.100.7"}, "198.51.100.7"),
        # A chain of trusted proxies is skipped from the right.
        (
            "10.0.0.0/8",
            "10.0.0.1",
            {"x_forwarded_for": "1.2.3.4, 198.51.100.7, 10.9.9.9"},
            "198.51.100.7",
        ),
        # RFC 7239, quoted IPv6 with a port; Forwarded wins over X-Forwarded-For.
        (
            "10.0.0.1",
            "10.0.0.1",
            {"forwarded": 'for="[2001:db8::1]:4711";proto=https', "x_forwarded_for": "1.2.3.4"},
            "2001:db8::1",
        ),
        (
            "10.0.0.1",
            "10.0.0.1",
            {"forwarded": "for=192.0.2.60:8080, for=198.51.100.1"},
            "198.51.100.1",
        ),
        # Not an address (obfuscated, unknown, garbage, huge): the trusted proxy stands in.
        ("10.0.0.1", "10.0.0.1", {"forwarded": "for=_hidden"}, "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "unknown"}, "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "<script>"}, "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "9" * 5000}, "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1", {"x_forwarded_for": "1.2.3.4" + ", 5.6.7.8" * 2000}, "10.0.0.1"),
        ("::1", "::1", {"x_forwarded_for": "2001:db8:0:0:0:0:0:2"}, "2001:db8::2"),
    ],
)
def test_one_rule_names_the_client(
    trusted: str, peer: str, sent: dict[str, str], client: str
) -> None:
    assert rule(trusted).resolve(peer, headers(**sent)) == client


@pytest.mark.fast
def test_trusted_proxies_must_be_addresses_or_cidrs() -> None:
    assert parse_networks(" 10.0.0.0/8 , ::1,") == parse_networks("10.0.0.0/8,::1")
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.internal")
    assert rule("").resolve(None, []) is None
    assert rule("").resolve("not-an-address", []) is None


@pytest.fixture
def owner_and_token(live: LiveServer) -> tuple[MemberView, str]:
    owner = create_member(live.broker, "owner@example.com", PASSWORD)
    sites.create_site(live.broker, owner, "my-site")
    return owner, sites.enable_api_auth(live.broker, owner, "my-site")


def _audited_ips(live: LiveServer, owner: MemberView) -> list[str | None]:
    pat = create_personal_token(live.broker, owner, "read events")
    events = httpx.get(
        f"{live.url}/api/v1/sites/my-site/events", headers=bearer(pat), timeout=15
    ).json()["events"]
    return [e["ip"] for e in events if e["kind"] == "secrets.read"]


def test_without_trusted_proxies_a_forwarded_header_cannot_set_the_audited_address(
    live: LiveServer, owner_and_token: tuple[MemberView, str]
) -> None:
    owner, token = owner_and_token
    for spoof in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.10"},
        {"X-Forwarded-For": "x" * 300},
        {"X-Real-IP": "203.0.113.11"},
    ):
        answer = httpx.get(
            f"{live.url}/api/v1/secrets", headers={**bearer(token), **spoof}, timeout=15
        )
        assert answer.status_code == 200
    assert set(_audited_ips(live, owner)) == {"127.0.0.1"}


@pytest.fixture
def behind_proxy(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    """A server that believes 127.0.0.1 is its reverse proxy (as in a one-host setup)."""
    with running_server(
        tmp_path, database_url, trusted_proxies="127.0.0.1", rate_limit_bad_tokens=3
    ) as server:
        yield server


def test_behind_a_trusted_proxy_the_audit_log_keeps_the_hop_the_proxy_saw(
    behind_proxy: LiveServer,
) -> None:
    live = behind_proxy
    owner = create_member(live.broker, "owner@example.com", PASSWORD)
    sites.create_site(live.broker, owner, "my-site")
    token = sites.enable_api_auth(live.broker, owner, "my-site")
    for sent in (
        {"X-Forwarded-For": "1.2.3.4, 198.51.100.7"},  # the client spoofed 1.2.3.4
        {"Forwarded": 'for="[2001:db8::77]:443"'},
        {"X-Forwarded-For": "not an address"},
        {"X-Forwarded-For": "2001:db8:" + "1:" * 200 + "1"},
    ):
        answer = httpx.get(
            f"{live.url}/api/v1/secrets", headers={**bearer(token), **sent}, timeout=15
        )
        assert answer.status_code == 200
    ips = _audited_ips(live, owner)
    assert set(ips) == {"198.51.100.7", "2001:db8::77", "127.0.0.1"}
    assert all(ip is None or len(ip) <= 45 for ip in ips)


def test_wrong_tokens_are_limited_per_client_address_with_429_and_retry_after(
    behind_proxy: LiveServer,
) -> None:
    live = behind_proxy
    owner = create_member(live.broker, "owner@example.com", PASSWORD)
    sites.create_site(live.broker, owner, "my-site")
    token = sites.enable_api_auth(live.broker, owner, "my-site")
    pat = create_personal_token(live.broker, owner, "t")
    guesser = {"X-Forwarded-For": "203.0.113.50"}
    wrong = [
        ("/api/v1/secrets", "apiauth_site_" + "A" * 49),  # a site token's shape
        ("/api/v1/function-tokens", "apiauth_fn_" + "B" * 49),
        ("/api/v1/sites", "apiauth_pat_" + "C" * 49),  # a personal token's
    ]
    for path, guess in wrong:
        method = "POST" if "function" in path else "GET"
        answer = httpx.request(
            method, f"{live.url}{path}", headers={**bearer(guess), **guesser}, timeout=15
        )
        assert answer.status_code == 401
    # The fourth wrong token, and now even a right one, from that address: 429.
    for attempt in (bearer("apiauth_site_" + "D" * 49), bearer(token), bearer(pat)):
        path = "/api/v1/sites" if attempt == bearer(pat) else "/api/v1/secrets"
        answer = httpx.get(f"{live.url}{path}", headers={**attempt, **guesser}, timeout=15)
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= 61
    # Another address is not slowed by the guesser.
    other = httpx.get(
        f"{live.url}/api/v1/secrets",
        headers={**bearer(token), "X-Forwarded-For": "198.51.100.8"},
        timeout=15,
    )
    assert other.status_code == 200


def _form_token(client: httpx.Client, base: str) -> str:
    page = client.get(f"{base}/sign-in")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_parallel_sign_in_guesses_get_at_most_five_tries(
    live: LiveServer, owner_and_token: tuple[MemberView, str]
) -> None:
    base = live.url
    with httpx.Client(timeout=30) as browser:
        csrf = _form_token(browser, base)

        def guess(n: int) -> int:
            return browser.post(
                f"{base}/sign-in",
                data={"email": "owner@example.com", "password": f"guess {n}", "csrf_token": csrf},
                # Rotating a forwarded address gets an attacker nothing: it is not believed.
                headers={"X-Forwarded-For": f"203.0.113.{n}"},
            ).status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(guess, range(24)))
        assert statuses.count(401) == 5, statuses
        assert statuses.count(429) == 19, statuses
        right = browser.post(
            f"{base}/sign-in",
            data={"email": "owner@example.com", "password": PASSWORD, "csrf_token": csrf},
        )
        assert right.status_code == 429, "the right password waits out the window too"
        assert int(right.headers["Retry-After"]) >= 1
