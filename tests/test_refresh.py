"""Tokens are refreshed before they leave `/api/v1/secrets`, once per expiry however many
readers arrive, and a refresh the provider refuses marks the connection for re-authorization.
The fast tier: the app and its emulator in-process, time moved by the test for the broker and
the emulated provider alike (`InProcessServer.advance`), SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from apiauth.domain import connect_flow, connections, sites
from apiauth.domain.members import create_member
from apiauth.domain.token_store import MARGIN_FRACTION
from tests.consent import consent
from tests.in_process import InProcessServer

pytestmark = pytest.mark.fast

TTL = 4
MARGIN = 2
# When a token of TTL falls due at the latest: its margin is the smaller of MARGIN and a
# fifth of its lifetime (the refresh storm's fix, issue 12).
DUE = TTL - min(MARGIN, TTL * MARGIN_FRACTION)


@pytest.fixture
def app_settings() -> dict[str, object]:
    """Emulated tokens live 4 s and are refreshed within 2 s of expiry."""
    return {"emulator_token_ttl": TTL, "refresh_margin_seconds": MARGIN}


@pytest.fixture
def short_lived(app: InProcessServer) -> InProcessServer:
    return app


def connect_box(server: InProcessServer, http: httpx.Client) -> str:
    owner = create_member(server.broker, "owner@example.com", "correct horse battery")
    sites.create_site(server.broker, owner, "my-site")
    token = sites.enable_api_auth(server.broker, owner, "my-site")
    start = connect_flow.start_connection(server.broker, owner, "my-site", "box")
    assert consent(http, start.authorize_url).status_code == 200
    return token


def read(http: httpx.Client, server: InProcessServer, token: str) -> dict[str, Any]:
    response = http.get(
        f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["box"]
    return body


def emulator_stats(http: httpx.Client, server: InProcessServer) -> dict[str, int]:
    stats: dict[str, int] = http.get(f"{server.url}/_emulator/_admin/stats").json()["box"]
    return stats


def accepted_by_box(http: httpx.Client, server: InProcessServer, bearer: str) -> bool:
    url = server.broker.catalog["box"].userinfo_url
    assert url is not None
    return http.get(url, headers={"Authorization": f"Bearer {bearer}"}).status_code == 200


def test_a_token_inside_the_margin_is_refreshed_before_it_is_handed_out(
    short_lived: InProcessServer, http: httpx.Client
) -> None:
    site_token = connect_box(short_lived, http)
    first = read(http, short_lived, site_token)
    assert emulator_stats(http, short_lived)["refreshes"] == 0
    short_lived.advance(DUE + 0.3)
    second = read(http, short_lived, site_token)
    assert second["bearer_token"] != first["bearer_token"]
    assert second["is_logged_in"] is True
    assert second["expires_at"] > first["expires_at"]
    assert accepted_by_box(http, short_lived, second["bearer_token"])
    assert emulator_stats(http, short_lived)["refreshes"] == 1


def test_box_refresh_token_is_used_once_under_concurrent_reads(
    short_lived: InProcessServer, http: httpx.Client
) -> None:
    site_token = connect_box(short_lived, http)
    first = read(http, short_lived, site_token)["bearer_token"]
    short_lived.advance(DUE + 0.3)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: read(http, short_lived, site_token), range(16)))
    # Readers whose token is still valid hand it out while another refreshes it.
    bearers = {answer["bearer_token"] for answer in answers} - {first}
    stats = emulator_stats(http, short_lived)
    # One refresh for the expiry the 16 readers arrived in (time stands still meanwhile),
    # which gave the one new token readers received, and no spent refresh token was reused.
    assert stats["refreshes"] == 1
    assert bearers == {read(http, short_lived, site_token)["bearer_token"]}
    assert stats["refresh_token_reuse"] == 0
    assert all(accepted_by_box(http, short_lived, bearer) for bearer in bearers)


def test_box_stays_usable_across_many_expiries(
    short_lived: InProcessServer, http: httpx.Client
) -> None:
    site_token = connect_box(short_lived, http)
    step = 0.5
    reads = int(3 * TTL / step)
    for _ in range(reads):
        answer = read(http, short_lived, site_token)
        assert answer["is_logged_in"] is True
        assert accepted_by_box(http, short_lived, answer["bearer_token"])
        # Between two reads the server's own refresher runs, as in `serve`.
        short_lived.refresher_round()
        short_lived.advance(step)
    span = (reads - 1) * step
    stats = emulator_stats(http, short_lived)
    # Every token lives TTL seconds, so the reads could only all succeed if the connection
    # was refreshed at least once per lifetime they spanned - and no more often than once
    # per time to due (no storm).
    assert int(span // DUE) + 1 >= stats["refreshes"] >= int(span // TTL) >= 2
    assert stats["refresh_token_reuse"] == 0


def test_a_refused_refresh_marks_the_connection_for_reauthorization(
    short_lived: InProcessServer, http: httpx.Client
) -> None:
    site_token = connect_box(short_lived, http)
    bearer = read(http, short_lived, site_token)["bearer_token"]
    # The site owner revokes apiauth's access at the provider: the refresh token dies too.
    provider = short_lived.broker.catalog["box"]
    assert provider.revoke_url is not None
    client = short_lived.broker.default_apps["box"]
    revoked = http.post(
        provider.revoke_url,
        data={
            "client_id": client.client_id,
            "client_secret": client.client_secret or "",
            "token": bearer,
        },
    )
    assert revoked.status_code == 200
    short_lived.advance(DUE + 0.3)
    answer = read(http, short_lived, site_token)
    assert answer["is_logged_in"] is False
    assert answer["bearer_token"] is None
    owner = short_lived.broker
    view = connections.list_connections(
        owner, create_member(owner, "second@example.com", "another password"), "my-site"
    )[0]
    assert view.status == "needs_reauth"
    assert view.last_error is not None
    assert "invalid_grant" in view.last_error
    # No refresh storm: further reads do not ask the provider again.
    refreshes = emulator_stats(http, short_lived)["refreshes"]
    for _ in range(5):
        assert read(http, short_lived, site_token)["is_logged_in"] is False
    assert emulator_stats(http, short_lived)["refreshes"] == refreshes
