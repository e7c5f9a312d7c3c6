"""Fixtures that build real parts: databases (SQLite and PostgreSQL), a broker, a live server
with its emulator (in-process for the fast tier, over real HTTP otherwise), and a consenting
"browser". The helpers behind them are modules of the `tests` package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member
from tests.databases import drop_templates, fresh_postgres_database, fresh_sqlite_database
from tests.in_process import SSL_CONTEXT, Clock, InProcessServer, in_process_server
from tests.redaction import redact_report
from tests.servers import HookReceiver, LiveServer, running_server


def pytest_sessionfinish(session: pytest.Session) -> None:
    drop_templates()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No APIAUTH_* setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("APIAUTH_") and name != "APIAUTH_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


def _in_process(node: pytest.Item | pytest.Function | Any) -> bool:
    """A fast-tier test that needs no real socket runs against the in-process server."""
    return (
        node.get_closest_marker("fast") is not None and node.get_closest_marker("over_http") is None
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`database_url`: both databases, in every tier. The PostgreSQL half is marked
    `postgres`, so that `make test-fast` (which leaves it out) stays on temporary SQLite."""
    if "database_url" in metafunc.fixturenames:
        params = [
            pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
        ]
        metafunc.parametrize("database_url", params, indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs on both databases, migrated already."""
    if request.param == "sqlite":
        yield fresh_sqlite_database(tmp_path)
    else:
        yield from fresh_postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Both databases, before any migration (for tests of the migrations)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        yield from fresh_postgres_database(migrated=False)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app_settings() -> dict[str, object]:
    """Settings of `app` beyond the tests' defaults: a module overrides this fixture (e.g.
    `{"emulator_token_ttl": 4}`) to get its own `app`, `live`, `broker` and `http`."""
    return {}


@pytest.fixture
def app(
    tmp_path: Path, database_url: str, clock: Clock, app_settings: dict[str, object]
) -> Iterator[InProcessServer]:
    """The fast tier's server: the app in-process on a fresh database, with `clock`."""
    with in_process_server(tmp_path, database_url, clock=clock, **app_settings) as server:
        yield server


@pytest.fixture
def live(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> Iterator[LiveServer | InProcessServer]:
    """The server of a test: in-process in the fast tier (`pytest.mark.fast`), else - and
    for a test marked `over_http` - `apiauth serve --demo` in a thread, over real HTTP, on
    both databases."""
    if _in_process(request.node):
        yield request.getfixturevalue("app")
        return
    with running_server(tmp_path, database_url) as server:
        yield server


@pytest.fixture
def broker(live: LiveServer | InProcessServer) -> Broker:
    return live.broker


@pytest.fixture
def owner(broker: Broker) -> MemberView:
    return create_member(broker, "owner@example.com", "correct horse battery")


@pytest.fixture
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The test's HTTP client: the in-process server's in the fast tier."""
    if _in_process(request.node):
        server: InProcessServer = request.getfixturevalue("app")
        yield server.new_client(timeout=15)
        return
    with httpx.Client(timeout=15, verify=SSL_CONTEXT) as client:
        yield client


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report - the assertion with its values, captured logs and output -
    is printed with anything token-shaped redacted (tests/redaction.py)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.longrepr is not None:
        report.longrepr = redact_report(report.longrepr)
    report.sections = redact_report(report.sections)
