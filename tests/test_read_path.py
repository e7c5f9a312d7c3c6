"""The secrets read path keeps its promises with its caches on (issue #6): a token revoked on
another replica stops working within a second, one revoked here stops at once, and a
ciphertext copied to another row is still refused though its plaintext was opened before."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select, update

from apiauth.domain import connections, sites
from apiauth.domain.broker import Broker, open_broker
from apiauth.domain.members import MemberView
from apiauth.domain.read_caches import SITE_TOKEN_CACHE_SECONDS, AuthCache
from apiauth.domain.token_store import open_token
from apiauth.store.db import transaction
from apiauth.store.models import Connection, utcnow
from apiauth.vault import DecryptionError
from conftest import LiveServer
from consent import consent


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_rotated_on_another_replica_stops_working_within_a_second(
    live: LiveServer, broker: Broker, owner: MemberView, http: httpx.Client
) -> None:
    sites.create_site(broker, owner, "my-site")
    old = sites.enable_api_auth(broker, owner, "my-site")
    url = live.url + "/api/v1/secrets"
    assert http.get(url, headers=bearer(old)).status_code == 200  # now remembered

    # Another replica (or `apiauth sites rotate-token`) rotates: this server hears nothing.
    replica = open_broker(broker.settings)
    try:
        new = sites.rotate_site_token(replica, owner, "my-site")
    finally:
        replica.close()
    rotated_at = time.monotonic()
    while True:
        sent = time.monotonic()
        status = http.get(url, headers=bearer(old)).status_code
        if status == 401:
            break
        assert status == 200
        assert sent - rotated_at <= SITE_TOKEN_CACHE_SECONDS, "the old token outlived 1 s"
        time.sleep(0.02)
    assert sent - rotated_at <= SITE_TOKEN_CACHE_SECONDS
    assert http.get(url, headers=bearer(new)).status_code == 200


def test_a_token_rotated_in_this_process_stops_working_at_once(
    live: LiveServer, broker: Broker, owner: MemberView, http: httpx.Client
) -> None:
    sites.create_site(broker, owner, "my-site")
    old = sites.enable_api_auth(broker, owner, "my-site")
    url = live.url + "/api/v1/secrets"
    assert http.get(url, headers=bearer(old)).status_code == 200
    sites.rotate_site_token(broker, owner, "my-site")
    assert http.get(url, headers=bearer(old)).status_code == 401


def test_a_ciphertext_copied_to_another_row_is_refused_though_it_was_opened_before(
    live: LiveServer, broker: Broker, owner: MemberView, http: httpx.Client
) -> None:
    sites.create_site(broker, owner, "my-site")
    token = sites.enable_api_auth(broker, owner, "my-site")
    for provider in ("github", "spotify"):
        started = connections.start_connection(broker, owner, "my-site", provider)
        assert consent(http, started.authorize_url).status_code == 200
    assert http.get(live.url + "/api/v1/secrets", headers=bearer(token)).status_code == 200
    with broker.sessions() as db:
        rows = {c.provider: c for c in db.scalars(select(Connection))}
    assert open_token(broker, rows["github"]) is not None  # opened before, so remembered
    with transaction(broker.sessions) as db:
        db.execute(
            update(Connection)
            .where(Connection.id == rows["spotify"].id)
            .values(token_enc=rows["github"].token_enc)
        )
    with broker.sessions() as db:
        pasted = db.get(Connection, rows["spotify"].id)
        assert pasted is not None
        with pytest.raises(DecryptionError):
            open_token(broker, pasted)


def test_the_token_cache_forgets_after_its_time_and_keeps_no_lookup_begun_before_a_clear() -> None:
    now = [100.0]
    cache: AuthCache[str] = AuthCache(seconds=1.0, monotonic=lambda: now[0])
    began = cache.begin()
    cache.put("hash", "caller", None, began)
    now[0] += 0.99
    assert cache.get("hash", utcnow()) == "caller"
    now[0] += 0.02
    assert cache.get("hash", utcnow()) is None

    began = cache.begin()
    cache.clear()  # a revocation committed while that lookup was running
    cache.put("hash", "stale caller", None, began)
    assert cache.get("hash", utcnow()) is None


def test_a_cache_of_zero_seconds_keeps_nothing() -> None:
    cache: AuthCache[str] = AuthCache(seconds=0.0)
    cache.put("hash", "caller", None, cache.begin())
    assert cache.get("hash", utcnow()) is None
