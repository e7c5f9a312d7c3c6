"""The fast tier's server: the whole application - API, dashboard, OAuth callback and the
provider emulator mounted at `/_emulator`, as `serve --demo` has it - called in-process
through `httpx.ASGITransport` on an event loop of its own, with a clock the test moves.

No socket is opened for the application: the test's HTTP client and the broker's own
(which calls the emulator, like a real provider, at the public URL) send requests for the
public URL's origin to the app, and everything else - a test's hook receiver - over the
network as usual. The emulator's time stands still like the broker's until the test moves
both (`InProcessServer.advance`). The refresher does not run: a test that is about
refreshing moves time and runs the refresher's rounds (`InProcessServer.refresher_round`),
so what happens, and when, is the test's to say. The delivery worker runs, as in `serve`,
so that deploy hooks and webhooks reach a test's receiver (its retries wait for the clock
too).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
from anyio.from_thread import BlockingPortal
from fastapi import FastAPI

from apiauth.domain.broker import Broker
from apiauth.domain.delivery_worker import DeliveryWorker
from apiauth.domain.refresh import (
    Outcome,
    attempt_refresh,
    lease_due_connections,
    store_outcomes,
)
from apiauth.server.app import create_app
from apiauth.store.models import utcnow
from apiauth.url_policy import UrlPolicy, check_url
from tests.databases import fresh_sqlite_database
from tests.servers import make_settings, open_test_broker

# Loading the CA bundle takes a tenth of a second per client: one context for every test.
SSL_CONTEXT = ssl.create_default_context()
# Where the in-process app says it is; nothing listens there.
PUBLIC_URL = "http://127.0.0.1:8000"
CLIENT_ADDRESS = ("127.0.0.1", 50000)


class Clock:
    """The broker's clock in a test: it stands still until the test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


@contextmanager
def _answered_in_time(request: httpx.Request) -> Iterator[None]:
    """The client's read timeout holds in process too: an app that has not answered within
    it (an emulated provider told to hang) is a `httpx.ReadTimeout`, as over a socket. The
    whole answer counts, as the broker's own deadline for a provider's body does."""
    seconds = request.extensions.get("timeout", {}).get("read")
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        raise httpx.ReadTimeout(
            "the in-process app did not answer in time", request=request
        ) from exc


class InProcessTransport(httpx.BaseTransport):
    """A sync transport: requests to `origin` are answered by `app` on `portal`'s event
    loop, every other request goes over the network."""

    def __init__(self, app: FastAPI, origin: str, portal: BlockingPortal) -> None:
        # raise_app_exceptions=False: an unhandled error is a 500, as a server would answer.
        self._app = httpx.ASGITransport(app, raise_app_exceptions=False, client=CLIENT_ADDRESS)
        self._origin = origin
        self._portal = portal
        self._network = httpx.HTTPTransport(verify=SSL_CONTEXT)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(request.url) != self._origin:
            return self._network.handle_request(request)
        body = request.read()

        async def send() -> tuple[int, list[tuple[str, str]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            with _answered_in_time(request):
                response = await self._app.handle_async_request(forwarded)
                content = await response.aread()
            return response.status_code, response.headers.multi_items(), content

        status, headers, content = self._portal.call(send)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def close(self) -> None:
        self._network.close()


class AsyncInProcessTransport(httpx.AsyncBaseTransport):
    """The same routing for the proxy's async client, which runs on the app's own loop."""

    def __init__(self, app: FastAPI, origin: str) -> None:
        self._app = httpx.ASGITransport(app, raise_app_exceptions=False, client=CLIENT_ADDRESS)
        self._origin = origin
        self._network = httpx.AsyncHTTPTransport(verify=SSL_CONTEXT)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(request.url) != self._origin:
            return await self._network.handle_async_request(request)
        with _answered_in_time(request):  # (ASGITransport answers with the whole body)
            return await self._app.handle_async_request(request)


class _Checked(httpx.BaseTransport):
    """The broker's guarded client, in process: each URL checked against the URL policy
    (as `url_policy.GuardedTransport` does before it connects), then routed as above."""

    def __init__(self, inner: httpx.BaseTransport, policy: UrlPolicy) -> None:
        self._inner = inner
        self._policy = policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_url(str(request.url), self._policy, "provider URL")
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class _AsyncChecked(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, policy: UrlPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_url(str(request.url), self._policy, "provider URL")
        return await self._inner.handle_async_request(request)


class InProcessServer:
    """What a test sees of the in-process app: `url`, `broker`, `clock`, an HTTP `client`
    (a browser with its cookies, or a function), and `new_client()` for another one."""

    def __init__(self, broker: Broker, clock: Clock, portal: BlockingPortal) -> None:
        self.broker = broker
        self.clock = clock
        self.url = broker.settings.public_url.rstrip("/")
        # The mounted emulator's codes and tokens age only when the test moves time
        # (`advance`, which moves the emulator's clock as `/_admin/clock` does), not with real
        # time: a token the broker was told lives 4 s is refused by the emulated provider
        # exactly when the test has moved 4 s on, however long the test took.
        stopped = time.monotonic()
        self.app = create_app(broker, demo=True, workers=False, emulator_clock=lambda: stopped)
        self._portal = portal
        self._clients: list[httpx.Client] = []
        broker.http.close()
        broker.http = self.new_client(timeout=broker.settings.http_timeout_seconds)
        self.app.state.proxy_client = httpx.AsyncClient(
            transport=AsyncInProcessTransport(self.app, self.url), follow_redirects=False
        )
        policy = broker.provider_url_policy
        if broker.guarded_http is not None:
            broker.guarded_http.close()
        broker.guarded_http = httpx.Client(
            transport=_Checked(InProcessTransport(self.app, self.url, portal), policy),
            timeout=broker.settings.http_timeout_seconds,
            follow_redirects=False,
        )
        self._clients.append(broker.guarded_http)
        self.app.state.guarded_proxy_client = httpx.AsyncClient(
            transport=_AsyncChecked(AsyncInProcessTransport(self.app, self.url), policy),
            follow_redirects=False,
        )
        self.client = self.new_client()
        self._deliveries = DeliveryWorker(broker)
        self._deliveries.start()

    def advance(self, seconds: float) -> None:
        """Time passes for the broker and the emulated providers alike (`clock` and the
        emulator's `/_admin/clock`); the delivery worker looks at once for what is due now."""
        self.clock.advance(seconds)
        aged = self.client.post(
            f"{self.url}/_emulator/_admin/clock", json={"advance_seconds": seconds}
        )
        assert aged.status_code == 200, aged.text
        self.broker.runtime.delivery_wakeups.notify()

    def refresher_round(self) -> list[Outcome]:
        """One round of the background refresher, run by the test: lease what is due now,
        call the providers, store the outcomes (returned)."""
        batch = lease_due_connections(self.broker, 100)
        outcomes = [attempt_refresh(self.broker, leased, batch.clients) for leased in batch.leased]
        return store_outcomes(self.broker, outcomes, batch.sites)

    def new_client(self, **options: Any) -> httpx.Client:
        client = httpx.Client(
            transport=InProcessTransport(self.app, self.url, self._portal), **options
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        self._deliveries.stop()
        for client in self._clients:
            client.close()
        self._portal.call(self.app.state.proxy_client.aclose)


@contextmanager
def in_process_server(
    tmp_path: Path,
    database_url: str | None = None,
    *,
    clock: Clock | None = None,
    **settings: object,
) -> Iterator[InProcessServer]:
    """A broker on `database_url` (default: a migrated temporary SQLite database) with
    `clock`, and the app."""
    settings.setdefault("allow_loopback_urls", True)
    database_url = database_url or fresh_sqlite_database(tmp_path)
    clock = clock or Clock()
    broker = open_test_broker(make_settings(tmp_path, database_url, 8000, **settings), demo=True)
    broker.clock = clock
    with anyio.from_thread.start_blocking_portal() as portal:
        server = InProcessServer(broker, clock, portal)
        try:
            yield server
        finally:
            server.close()
            broker.close()
