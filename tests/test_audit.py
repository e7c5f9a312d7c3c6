"""The audit log: every change to a site's API Authentication and every read of its secrets
(which providers, which token id, from where — never a token), newest first, page by page,
from the API (the fast tier, in-process) and the command line; a read just before a live
server shuts down; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.store.models import AuditEvent
from tests.consent import consent
from tests.processes import apiauth_env, run_cli
from tests.servers import LiveServer, running_server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(live: LiveServer) -> str:
    return live.url + "/api/v1"


@pytest.fixture
def pat(broker: Broker, owner: MemberView) -> dict[str, str]:
    return bearer(create_personal_token(broker, owner, "tests"))


def enabled_site(http: httpx.Client, api: str, pat: dict[str, str], *providers: str) -> str:
    """`my-site` with API Authentication on and `providers` connected; its site token."""
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    enabled = http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    assert enabled.status_code == 200
    for provider in providers:
        started = http.post(
            f"{api}/sites/my-site/connections", json={"provider": provider}, headers=pat
        )
        assert consent(http, started.json()["authorize_url"]).status_code == 200
    token: str = enabled.json()["token"]
    return token


def read_secrets(http: httpx.Client, api: str, token: str) -> dict[str, Any]:
    answer = http.get(f"{api}/secrets", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def events(http: httpx.Client, api: str, pat: dict[str, str], **params: Any) -> httpx.Response:
    return http.get(f"{api}/sites/my-site/events", params=params, headers=pat)


@pytest.mark.fast
def test_secrets_reads_are_logged_with_providers_token_id_and_ip_but_never_a_token(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    site_token = enabled_site(http, api, pat, "github", "spotify")
    minted = http.post(
        f"{api}/function-tokens",
        json={"ttl_seconds": 300, "providers": ["spotify"]},
        headers=bearer(site_token),
    )
    assert minted.status_code == 201, minted.text
    function_token = minted.json()["token"]
    by_site = read_secrets(http, api, site_token)
    by_function = read_secrets(http, api, function_token)

    page = events(http, api, pat)
    assert page.status_code == 200, page.text
    logged = page.json()["events"]
    reads = [e for e in logged if e["kind"] == "secrets.read"]
    # Newest first: the function token read last.
    assert [e["actor"] for e in reads] == ["function token", "site token"]
    assert reads[0]["detail"]["providers"] == ["spotify"]
    assert reads[0]["detail"]["token_kind"] == "function"
    assert reads[1]["detail"]["providers"] == ["github", "spotify"]
    assert reads[1]["detail"]["token_kind"] == "site"
    token_ids = {e["detail"]["token_id"] for e in reads}
    assert len(token_ids) == 2
    assert all(e["ip"] == "127.0.0.1" for e in reads)
    # The changes that led here are in the log too, newest first.
    assert [e["kind"] for e in logged if e["kind"] != "secrets.read"][::-1][:3] == [
        "site.created",
        "api_auth.enabled",
        "connection.created",
    ]
    text = page.text
    secrets = [site_token, function_token]
    secrets += [answer["bearer_token"] for answer in by_site.values()]
    secrets += [answer["bearer_token"] for answer in by_function.values()]
    for secret in secrets:
        assert secret not in text
    assert "apiauth_site_" not in text
    assert "apiauth_fn" not in text


def mint(http: httpx.Client, api: str, site_token: str) -> str:
    minted = http.post(
        f"{api}/function-tokens", json={"ttl_seconds": 300}, headers=bearer(site_token)
    )
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["token"]
    return token


@pytest.mark.fast
def test_repeated_reads_are_counted_in_one_event_per_second(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    """A function reading in a loop must not write a row per read: repeats by the same token
    of the same providers from the same address, within the audit buffer's second, are one
    event whose `count` says how many reads it stands for. Another token is another event."""
    site_token = enabled_site(http, api, pat, "github")
    other = mint(http, api, site_token)
    for _ in range(5):
        read_secrets(http, api, site_token)
    read_secrets(http, api, other)
    logged = events(http, api, pat, limit=200).json()["events"]
    reads = [e for e in logged if e["kind"] == "secrets.read"]
    by_kind = {e["detail"]["token_kind"]: e for e in reads}
    assert len(reads) == 2, reads
    assert by_kind["site"]["detail"]["count"] == 5
    assert by_kind["site"]["detail"]["last_at"] >= by_kind["site"]["created_at"][:19]
    assert by_kind["function"]["detail"]["count"] == 1
    # Written: the next read starts a new event.
    read_secrets(http, api, site_token)
    logged = events(http, api, pat, limit=200).json()["events"]
    counts = [e["detail"]["count"] for e in logged if e["kind"] == "secrets.read"]
    assert sorted(counts) == [1, 1, 5]


@pytest.mark.fast
def test_events_page_newest_first_without_gaps_or_repeats(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    site_token = enabled_site(http, api, pat)
    for _ in range(7):
        # Each read by a token of its own: seven events (repeats by one token would be
        # counted in one, see the next test).
        read_secrets(http, api, mint(http, api, site_token))
    everything = events(http, api, pat, limit=200).json()
    assert everything["next_before"] is None
    all_ids = [e["id"] for e in everything["events"]]
    reads = [e for e in everything["events"] if e["kind"] == "secrets.read"]
    assert len(reads) == 7
    assert len(all_ids) >= 9  # site.created, api_auth.enabled, 7 reads
    assert all_ids == sorted(all_ids, reverse=True)

    pages: list[list[int]] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if before is not None:
            params["before"] = before
        page = events(http, api, pat, **params).json()
        pages.append([e["id"] for e in page["events"]])
        before = page["next_before"]
        if before is None:
            break
        assert before == pages[-1][-1]
    full, rest = divmod(len(all_ids), 4)
    assert [len(p) for p in pages] == [4] * full + ([rest] if rest else [])
    assert [i for p in pages for i in p] == all_ids
    assert len(events(http, api, pat).json()["events"]) == len(all_ids)  # default limit 50


@pytest.mark.fast
@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"before": 0}])
def test_bad_paging_is_a_clear_422(
    http: httpx.Client, api: str, pat: dict[str, str], params: dict[str, Any]
) -> None:
    enabled_site(http, api, pat)
    answer = events(http, api, pat, **params)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"]


@pytest.mark.fast
def test_another_teams_site_events_are_a_404(
    broker: Broker, http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    enabled_site(http, api, pat)
    stranger = create_member(broker, "eve@example.com", "another password", team_name="other")
    theirs = bearer(create_personal_token(broker, stranger, "eve"))
    assert events(http, api, theirs).status_code == 404
    assert http.get(f"{api}/sites/nowhere/events", headers=pat).status_code == 404
    assert events(http, api, {}).status_code == 401


def test_a_read_just_before_shutdown_is_still_logged(
    tmp_path: Path, database_url: str, http: httpx.Client
) -> None:
    with running_server(tmp_path, database_url) as server:
        owner = create_member(server.broker, "owner@example.com", "correct horse battery")
        pat = bearer(create_personal_token(server.broker, owner, "tests"))
        api = server.url + "/api/v1"
        read_secrets(http, api, enabled_site(http, api, pat))
    with server.broker.sessions() as db:
        kinds = list(db.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))
    assert kinds[-1] == "secrets.read"


def test_events_command_shows_the_log(
    live: LiveServer,
    tmp_path: Path,
    database_url: str,
    http: httpx.Client,
    api: str,
    pat: dict[str, str],
) -> None:
    site_token = enabled_site(http, api, pat)
    read_secrets(http, api, site_token)
    assert events(http, api, pat).status_code == 200  # writes the buffered read
    env = apiauth_env(tmp_path / "data", database_url, int(live.url.rsplit(":", 1)[1]))

    shown = run_cli(["events", "my-site", "--limit", "2"], env)
    assert shown.returncode == 0, shown.stderr
    assert "secrets.read" in shown.stdout
    assert "site token" in shown.stdout
    assert "api_auth.enabled" in shown.stdout
    assert "site.created" not in shown.stdout
    assert "--before" in shown.stderr
    assert site_token not in shown.stdout + shown.stderr

    missing = run_cli(["events", "nowhere"], env)
    assert missing.returncode == 1
    assert "nowhere" in missing.stderr
