"""Fixtures that build real parts: databases (SQLite and PostgreSQL), a broker, a live server
with its emulator over real HTTP, and a consenting "browser"."""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from apiauth.config import Settings
from apiauth.domain.broker import Broker, open_broker
from apiauth.domain.members import MemberView, create_member
from apiauth.server.app import create_app

POSTGRES_URL = os.environ.get(
    "APIAUTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No APIAUTH_* setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("APIAUTH_") and name != "APIAUTH_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def require_postgres() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    message = (
        f"PostgreSQL is not reachable at {POSTGRES_URL} ({problem}); start it or point "
        "APIAUTH_TEST_POSTGRES_URL at a server where this user may create databases"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def fresh_postgres_database() -> Iterator[str]:
    require_postgres()
    name = f"apiauth_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs on both databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'apiauth.db'}"
    else:
        yield from fresh_postgres_database()


class LiveServer:
    """`apiauth serve --demo` in a thread of this process: real HTTP, real emulator."""

    def __init__(self, broker: Broker, port: int, *, refresher: bool = True) -> None:
        self.broker = broker
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(broker, demo=True, refresher=refresher),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_settings(tmp_path: Path, database_url: str, port: int, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        **extra,  # type: ignore[arg-type]
    )


@contextmanager
def running_server(
    tmp_path: Path, database_url: str, *, refresher: bool = True, **settings: object
) -> Iterator[LiveServer]:
    """`refresher=False`: the server's own refresher does not run (the test drives it)."""
    port = free_port()
    # Hook receivers in tests listen on 127.0.0.1: the URL policy must let them through.
    settings.setdefault("allow_loopback_urls", True)
    broker = open_broker(make_settings(tmp_path, database_url, port, **settings), demo=True)
    server = LiveServer(broker, port, refresher=refresher)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        broker.close()


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    with running_server(tmp_path, database_url) as server:
        yield server


@pytest.fixture
def broker(live: LiveServer) -> Broker:
    return live.broker


@pytest.fixture
def owner(broker: Broker) -> MemberView:
    return create_member(broker, "owner@example.com", "correct horse battery")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


@dataclass(frozen=True)
class ReceivedHook:
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered


class HookReceiver:
    """A site's deploy hook or webhook endpoint: `posts` holds every JSON body it accepted,
    `received` every request (headers, raw body, answer). `fail_first = N` answers the first
    N requests with a 500; `delay` (seconds) makes it slow to answer."""

    def __init__(self) -> None:
        self.posts: list[Any] = []
        self.received: list[ReceivedHook] = []
        self.fail_first = 0
        self.delay = 0.0
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay:
                    time.sleep(receiver.delay)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._arrived:
                    status = 500 if len(receiver.received) < receiver.fail_first else 200
                    receiver.received.append(ReceivedHook(headers, body, status))
                    if status == 200:
                        receiver.posts.append(json.loads(body or b"null"))
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10) -> list[Any]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.posts) >= count, timeout)
        assert len(self.posts) >= count, f"expected {count} hook calls, got {len(self.posts)}"
        return list(self.posts)


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    receiver.server.shutdown()
