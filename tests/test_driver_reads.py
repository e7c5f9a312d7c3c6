"""A function token's first read runs its one statement straight on the database driver
(`store.driver`, issue 19): the rows are the engine's rows, value for value and type for
type, and a driver connection the database dropped costs no request an error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from apiauth.domain import connect_flow, sites
from apiauth.domain.broker import Broker
from apiauth.domain.function_tokens import mint_function_token
from apiauth.domain.members import MemberView, create_member
from apiauth.domain.secrets_read import _FIRST_READ, FirstReads
from apiauth.domain.token_format import hash_token
from apiauth.store.driver import DriverQuery
from tests.consent import consent
from tests.databases import fresh_postgres_database
from tests.servers import running_server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _connected_site(broker: Broker, owner: MemberView, http: httpx.Client) -> str:
    sites.create_site(broker, owner, "my-site")
    token = sites.enable_api_auth(broker, owner, "my-site")
    for provider in ("github", "spotify"):
        started = connect_flow.start_connection(broker, owner, "my-site", provider)
        assert consent(http, started.authorize_url).status_code == 200
    return token


def test_the_driver_gives_the_rows_the_engine_gives(
    broker: Broker, owner: MemberView, http: httpx.Client
) -> None:
    site_token = _connected_site(broker, owner, http)
    caller = sites.authenticate_site_token(broker, site_token)
    limited, _ = mint_function_token(broker, caller, 600, ["spotify"])
    every, _ = mint_function_token(broker, caller, 600, None)
    reads = FirstReads(broker, 2)
    for token in (site_token, limited, every, "apiauth_fn_unknown"):
        params = {"token_hash": hash_token(token)}
        with broker.engine.connect() as db:
            expected = db.execute(_FIRST_READ, params).all()
        rows = reads.rows(params["token_hash"])
        assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
        assert [row._fields for row in rows] == [tuple(row._fields) for row in expected]
        for row, engine_row in zip(rows, expected, strict=True):
            for value, engine_value in zip(row, engine_row, strict=True):
                assert type(value) is type(engine_value)
    # The values a reader's answer is made of came through as Python values, not text.
    row = reads.rows(hash_token(limited))[0]
    assert row.token_providers == ["spotify"]
    assert isinstance(row.token_expires_at, datetime)
    assert row.token_expires_at.tzinfo is UTC
    assert row.site_enabled is True
    assert isinstance(row.token_enc, bytes)
    assert row.granted_scopes


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.mark.postgres
def test_a_driver_connection_the_database_dropped_costs_no_request_an_error(
    tmp_path: Path, postgres_url: str
) -> None:
    with (
        running_server(tmp_path, postgres_url) as server,
        httpx.Client(timeout=15) as http,
    ):
        broker = server.broker
        owner = create_member(broker, "owner@example.com", "correct horse battery")
        site_token = _connected_site(broker, owner, http)
        url = server.url + "/api/v1/secrets"
        expected = http.get(url + "?the=route", headers=bearer(site_token)).json()
        executed: list[str] = []
        driver_all = DriverQuery.all

        def counted(query: DriverQuery, connection: Any, params: Any) -> list[Any]:
            rows = driver_all(query, connection, params)
            executed.append(query.sql)  # answered
            return rows

        def first_read() -> httpx.Response:
            minted = http.post(
                server.url + "/api/v1/function-tokens", json={}, headers=bearer(site_token)
            )
            assert minted.status_code == 201
            return http.get(url, headers=bearer(minted.json()["token"]))

        DriverQuery.all = counted  # type: ignore[method-assign]
        try:
            first = first_read()
            assert first.status_code == 200
            assert first.json() == expected
            assert len(executed) == 1  # the driver's connection exists, and answered
            admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as connection:
                    dropped = connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": make_url(postgres_url).database},
                    ).all()
            finally:
                admin.dispose()
            assert dropped
            # The first read after it meets the dead connection and is answered the long
            # way (the engine's pool pings and reconnects); the next on a new connection.
            answers = [first_read() for _ in range(6)]
            assert [answer.status_code for answer in answers] == [200] * 6
            assert all(answer.json() == expected for answer in answers)
        finally:
            DriverQuery.all = driver_all  # type: ignore[method-assign]
        # The dead connection answered nothing; a new one answered the five after it.
        assert len(executed) == 1 + 5
