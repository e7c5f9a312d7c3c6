"""The thread-hosted live server (`apiauth serve --demo` in a thread of the test process,
over real HTTP on loopback) and a site's hook receiver: for the tests whose HTTP comes from
outside the test's own client - the client library, provider SDKs, the browser - or whose
point is the server itself."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx._config as httpx_config
import httpx._transports.default as httpx_transports
import uvicorn
from argon2 import PasswordHasher, profiles

import apiauth.domain.broker
from apiauth.config import Settings
from apiauth.domain.broker import Broker, open_broker
from apiauth.providers import Catalog, load_catalog
from apiauth.server.app import create_app

# Members' passwords in tests: Argon2id all the same, at the cheapest cost - the recommended
# one takes a second of CPU per hash, which every test that creates a member would pay.
FAST_PASSWORD_HASHER = PasswordHasher.from_parameters(profiles.CHEAPEST)


_catalogs: dict[tuple[str | None, str | None], Catalog] = {}


def _load_catalog_once(
    providers_file: Path | None = None, *, emulator_url: str | None = None
) -> Catalog:
    """`load_catalog` for the brokers of a test process: parsing the catalog's TOML files
    took half of a broker's start (35 ms, paid by every test); the `Catalog` and its
    `Provider`s are immutable, so one per (providers file's text, emulator URL) serves every
    broker. A file that cannot be read or parsed goes to `load_catalog`, which says why."""
    try:
        text = None if providers_file is None else Path(providers_file).read_text("utf-8")
    except OSError:
        return load_catalog(providers_file, emulator_url=emulator_url)
    key = (text, emulator_url)
    if key not in _catalogs:
        _catalogs[key] = load_catalog(providers_file, emulator_url=emulator_url)
    return _catalogs[key]


apiauth.domain.broker.load_catalog = _load_catalog_once  # type: ignore[assignment]

_default_ssl_context = httpx_config.create_ssl_context()


def _ssl_context_once(
    verify: ssl.SSLContext | str | bool = True, cert: Any = None, trust_env: bool = True
) -> ssl.SSLContext:
    """httpx's `create_ssl_context`, the default one made once per test process: loading the
    CA bundle took 18 ms of every broker's start (its HTTP clients). Any other verification
    asked for is made as asked."""
    if verify is True and cert is None and trust_env:
        return _default_ssl_context
    return httpx_config.create_ssl_context(verify, cert, trust_env)


httpx_transports.create_ssl_context = _ssl_context_once  # type: ignore[assignment]


def open_test_broker(settings: Settings, *, demo: bool | None = None) -> Broker:
    """`open_broker` as a test wants it: passwords hashed cheaply."""
    broker = open_broker(settings, demo=demo)
    broker.password_hasher = FAST_PASSWORD_HASHER
    return broker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
            proxy_headers=False,  # as `apiauth serve` runs it
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
    # Tests send many wrong tokens from 127.0.0.1 on purpose, and a quiet machine sends one
    # token's requests faster than its limit allows; the limits are tested where they are the
    # point (tests/test_abuse_limits.py, tests/test_scale_out.py).
    extra.setdefault("rate_limit_bad_tokens", 0)
    extra.setdefault("rate_limit_per_token", 0)
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
    broker = open_test_broker(make_settings(tmp_path, database_url, port, **settings), demo=True)
    server = LiveServer(broker, port, refresher=refresher)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        broker.close()


@dataclass(frozen=True)
class ReceivedHook:
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered


def serve_in_background(server: HTTPServer) -> None:
    """`server.serve_forever()` on a daemon thread, polling every 20 ms: `shutdown()` waits
    for the next poll (0.5 s by default, paid by every test that stops one)."""
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()


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
        serve_in_background(self.server)

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        """Whether `count` requests (answered 2xx or not) arrive within `timeout` seconds."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.received) >= count, timeout)

    def wait_for(self, count: int, timeout: float = 10) -> list[Any]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.posts) >= count, timeout)
        assert len(self.posts) >= count, f"expected {count} hook calls, got {len(self.posts)}"
        return list(self.posts)

    def wait_for_event(self, event: str, timeout: float = 10) -> list[Any]:
        """The calls for `event`, once at least one has arrived (other events, and repeats
        of an at-least-once delivery, may come before it)."""

        def arrived() -> list[Any]:
            return [post for post in self.posts if post.get("event") == event]

        with self._arrived:
            self._arrived.wait_for(lambda: bool(arrived()), timeout)
        found = arrived()
        assert found, f"no {event} hook call among the {len(self.posts)} received"
        return found
