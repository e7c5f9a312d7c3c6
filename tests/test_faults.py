"""Faults: PostgreSQL dropping every connection under load, a read-only SQLite database, and
a provider answering garbage during an exchange or a refresh. Requests fail cleanly (503 or
a readable error), nothing is half-written, and the server recovers by itself.

An interrupted `apiauth keys rotate` run again is in tests/test_key_rotation.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from apiauth.domain import connect_flow, sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.token_store import open_token
from apiauth.store.models import Connection, Site
from tests.consent import consent
from tests.databases import fresh_postgres_database
from tests.servers import LiveServer, running_server

READERS = 4
FAULTS = 6


class World:
    def __init__(self, server: LiveServer, http: httpx.Client) -> None:
        self.server = server
        self.http = http
        self.owner: MemberView = create_member(
            server.broker, "owner@example.com", "correct horse battery"
        )
        sites.create_site(server.broker, self.owner, "my-site")
        self.token = sites.enable_api_auth(server.broker, self.owner, "my-site")
        self.pat = {
            "Authorization": f"Bearer {create_personal_token(server.broker, self.owner, 't')}"
        }

    def connect(self, provider: str, scopes: list[str] | None = None) -> httpx.Response:
        start = connect_flow.start_connection(
            self.server.broker, self.owner, "my-site", provider, scopes
        )
        return consent(self.http, start.authorize_url)

    def secrets(self) -> dict[str, Any]:
        answer = self.http.get(
            f"{self.server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def fault(self, provider: str, **fault: Any) -> None:
        queued = self.http.post(
            f"{self.server.url}/_emulator/_admin/faults",
            json={"provider": provider, "endpoint": "token", **fault},
        )
        assert queued.status_code == 200, queued.text


def _tokens_decrypt(broker: Broker) -> dict[str, str]:
    with broker.sessions() as db:
        rows = list(db.scalars(select(Connection)))
    opened = {row.provider: open_token(broker, row) for row in rows}
    return {name: token.access_token for name, token in opened.items() if token is not None}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.mark.postgres
def test_postgresql_dropping_every_connection_under_load_gives_503s_then_recovers(
    tmp_path: Path, postgres_url: str, http: httpx.Client
) -> None:
    url = postgres_url
    with running_server(tmp_path, url, rate_limit_per_token=0) as server:
        world = World(server, http)
        assert world.connect("github").status_code == 200
        before = world.secrets()["github"]["bearer_token"]
        outcomes: Counter[int] = Counter()
        bodies: set[str] = set()
        stop = threading.Event()

        def read() -> None:
            with httpx.Client(timeout=15) as client:
                while not stop.is_set():
                    answer = client.get(
                        f"{server.url}/api/v1/secrets",
                        headers={"Authorization": f"Bearer {world.token}"},
                    )
                    outcomes[answer.status_code] += 1
                    if answer.status_code != 200:
                        bodies.add(answer.json()["error"]["code"])
                    elif answer.json()["github"]["bearer_token"] != before:
                        outcomes[-1] += 1  # a wrong token: must never happen

        readers = [threading.Thread(target=read) for _ in range(READERS)]
        for reader in readers:
            reader.start()
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        database = make_url(url).database
        terminated = 0
        try:
            for _ in range(FAULTS):
                time.sleep(0.4)
                with admin.connect() as connection:
                    terminated += len(
                        connection.execute(
                            text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = :db AND pid <> pg_backend_pid()"
                            ),
                            {"db": database},
                        ).all()
                    )
            time.sleep(0.4)
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=30)
            admin.dispose()
        print(  # the numbers for the report (pytest -s)
            f"\nPostgreSQL fault: {FAULTS} rounds, {terminated} backends terminated, "
            f"{sum(outcomes.values())} requests: {dict(outcomes)}"
        )
        assert terminated >= FAULTS
        assert set(outcomes) <= {200, 503}, outcomes
        assert bodies <= {"database_unavailable"}
        assert outcomes[200] > 0
        # It recovers by itself: every request succeeds again, same token, rows intact.
        for _ in range(20):
            assert world.secrets()["github"]["bearer_token"] == before
        made = http.post(f"{server.url}/api/v1/sites", json={"name": "after"}, headers=world.pat)
        assert made.status_code == 201
        assert _tokens_decrypt(server.broker) == {"github": before}
        ready = http.get(f"{server.url}/readyz")
        assert ready.status_code == 200


def test_a_read_only_sqlite_database_refuses_writes_with_503_and_still_serves_reads(
    tmp_path: Path, http: httpx.Client
) -> None:
    path = tmp_path / "apiauth.db"
    with running_server(tmp_path, f"sqlite:///{path}") as server:
        world = World(server, http)
        assert world.connect("github").status_code == 200
        before = world.secrets()["github"]
    # Root ignores file modes, so read-only is asked of SQLite itself (mode=ro), which
    # refuses every write the same way a read-only file system would.
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    with running_server(tmp_path, read_only, emulator_url="http://127.0.0.1:9/_emulator") as server:
        world.server = server
        assert world.secrets()["github"] == before
        refused = [
            http.post(f"{server.url}/api/v1/sites", json={"name": "new"}, headers=world.pat),
            http.patch(
                f"{server.url}/api/v1/sites/my-site",
                json={"deploy_hook_url": "https://hooks.example.com/x"},
                headers=world.pat,
            ),
            http.post(f"{server.url}/api/v1/sites/my-site/api-auth/rotate", headers=world.pat),
        ]
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert answer.headers["Retry-After"]
        assert world.secrets()["github"] == before  # the old site token still works
    writable = create_engine(f"sqlite:///{path}")
    with writable.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Site)) == 1
        assert connection.scalar(select(Site.deploy_hook_url)) is None
    writable.dispose()


GARBAGE = {
    "html": {
        "status": 200,
        "raw_body": "<html><body>Oops</body></html>",
        "content_type": "text/html",
    },
    "truncated JSON": {"status": 200, "raw_body": '{"access_token": "abc'},
    "missing fields": {"status": 200, "raw_body": '{"token_type": "bearer"}'},
    "huge body": {"status": 200, "raw_body": " ", "raw_body_repeat": 1_100_000},
    "slow-loris": {"status": 200, "raw_body": '{"access_token": "slow"}', "trickle_seconds": 0.2},
}
READABLE = {
    "html": "not JSON",
    "truncated JSON": "not JSON",
    "missing fields": "without access_token",
    "huge body": "more than 1000000 bytes",
    "slow-loris": "did not answer in time",
}


@pytest.fixture
def garbage_world(tmp_path: Path, http: httpx.Client) -> Iterator[World]:
    with running_server(
        tmp_path, f"sqlite:///{tmp_path / 'apiauth.db'}", http_timeout_seconds=1.0
    ) as server:
        yield World(server, http)


def test_a_provider_answering_garbage_keeps_the_old_token_and_a_readable_error(
    garbage_world: World, http: httpx.Client
) -> None:
    world = garbage_world
    assert world.connect("spotify").status_code == 200
    old = world.secrets()["spotify"]
    refresh = f"{world.server.url}/api/v1/sites/my-site/connections/spotify/refresh"
    for name, fault in GARBAGE.items():
        # During a refresh: the connection keeps serving the old token.
        world.fault("spotify", **fault)
        answer = http.post(refresh, headers=world.pat)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["status"] == "connected", name
        assert READABLE[name] in (answer.json()["last_error"] or ""), (name, answer.json())
        served = world.secrets()["spotify"]
        assert served["bearer_token"] == old["bearer_token"], name
        assert served["is_logged_in"] is True
        # During a new exchange (changing scopes): it fails readably, the old token stays.
        world.fault("spotify", **fault)
        callback = world.connect("spotify", ["user-read-email", "playlist-read-private"])
        assert callback.status_code == 400, name
        assert READABLE[name] in callback.json()["error"]["message"], name
        assert world.secrets()["spotify"]["bearer_token"] == old["bearer_token"], name
    assert _tokens_decrypt(world.server.broker)["spotify"] == old["bearer_token"]
