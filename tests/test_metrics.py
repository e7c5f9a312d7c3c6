"""An operator scrapes `/metrics` (issue 20): protected by its token, every request counted
(the fast path's too), refreshes by provider and outcome, connections by status, the outbox,
the read caches; each broker with its own registry; a port of its own on loopback; and an
`X-Request-Id` on every answer. The fast tier (the app in-process, time and the refresher
moved by the test), SQLite and PostgreSQL; a separate refresher process over real HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from apiauth.domain import connections, sites
from apiauth.domain.broker import open_broker
from apiauth.domain.scraped_gauges import DATABASE_SECONDS
from apiauth.server.metrics import MetricsPort
from apiauth.store.models import Connection
from tests.in_process import InProcessServer, in_process_server
from tests.live_site import Site
from tests.processes import APIAUTH, apiauth_env
from tests.servers import HookReceiver, free_port

TOKEN = "metrics-token-for-tests-0123456789"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def scrape(http: httpx.Client, server: InProcessServer) -> str:
    answer = http.get(f"{server.url}/metrics", headers=SCRAPE)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


def fresh_scrape(http: httpx.Client, server: InProcessServer) -> str:
    """A scrape once the database gauges are read again (at most once every 5 s)."""
    server.advance(DATABASE_SECONDS)
    return scrape(http, server)


def wait_for(
    http: httpx.Client, server: InProcessServer, name: str, at_least: float, **labels: str
) -> str:
    """Scrape until the sample (of work the delivery worker does in its own thread)
    reaches `at_least`."""
    deadline = time.monotonic() + 20
    while True:
        text = scrape(http, server)
        found = value(text, name, **labels)
        if found is not None and found >= at_least:
            return text
        assert time.monotonic() < deadline, f"{name}{labels} stayed at {found}"
        time.sleep(0.05)


@pytest.fixture
def app_settings() -> dict[str, object]:
    return {"metrics_token": TOKEN}


@pytest.fixture
def metered(app: InProcessServer) -> InProcessServer:
    return app


@pytest.mark.fast
def test_metrics_are_not_served_without_a_token_setting(tmp_path: Path) -> None:
    with in_process_server(tmp_path) as plain:
        answer = plain.client.get(f"{plain.url}/metrics", headers=SCRAPE)
    assert answer.status_code == 404
    assert "APIAUTH_METRICS_TOKEN" in answer.json()["error"]["message"]


@pytest.mark.fast
def test_metrics_need_the_bearer_token(metered: InProcessServer, http: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = http.get(f"{metered.url}/metrics", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "apiauth_" not in answer.text


@pytest.mark.fast
def test_every_secrets_read_is_counted_the_remembered_ones_too(
    metered: InProcessServer, http: httpx.Client
) -> None:
    site = Site(metered, http)
    site.connect("github")
    for _ in range(5):  # the first by the route, the others from memory (the fast path)
        site.read("github")
    refused = http.get(f"{metered.url}/api/v1/secrets", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    text = scrape(http, metered)
    assert value(text, "apiauth_http_requests_total", route="secrets", status_class="2xx") == 5
    assert value(text, "apiauth_http_requests_total", route="secrets", status_class="4xx") == 1
    assert value(text, "apiauth_http_request_duration_seconds_count", route="secrets") == 6
    assert value(text, "apiauth_read_cache_lookups_total", cache="answers", result="hit") >= 4
    assert value(text, "apiauth_connections", provider="github", status="connected") == 1
    # The OAuth flow's pages (the Continue page of a flow started by the API, and the
    # callback) and the emulator are counted under their own families.
    assert value(text, "apiauth_http_requests_total", route="oauth", status_class="2xx") == 2
    assert value(text, "apiauth_http_requests_total", route="oauth", status_class="3xx") == 1
    assert value(text, "apiauth_build_info", version="0.1.0") == 1
    # No token is in the metrics (they name providers and routes, never a credential).
    assert site.token not in text
    assert site.read("github")["bearer_token"] not in text


@pytest.mark.fast
def test_refreshes_failures_and_the_outbox_are_reported(
    metered: InProcessServer, http: httpx.Client, hook_receiver: HookReceiver
) -> None:
    broker = metered.broker
    site = Site(metered, http)
    sites.update_site(broker, site.owner, "my-site", webhook_url=hook_receiver.url)
    hook_receiver.fail_first = 1000  # every webhook delivery fails and is retried later
    site.connect("box")
    connections.refresh_site_connection(broker, site.owner, "my-site", "box")
    site.fault("box", "token", status=503)
    connections.refresh_site_connection(broker, site.owner, "my-site", "box")
    text = wait_for(http, metered, "apiauth_deliveries_total", 1, kind="webhook", outcome="retry")
    assert value(text, "apiauth_refreshes_total", provider="box", outcome="ok") == 1
    assert value(text, "apiauth_refreshes_total", provider="box", outcome="failed") == 1
    assert value(text, "apiauth_refresh_duration_seconds_count", provider="box") == 2
    assert value(text, "apiauth_outbox_pending", kind="webhook") >= 1
    assert value(text, "apiauth_connections", provider="box", status="degraded") == 1
    assert value(text, "apiauth_database_up") == 1

    site.fault("box", "token", status=400, body={"error": "invalid_grant"})
    connections.refresh_site_connection(broker, site.owner, "my-site", "box")
    # Read from the database at most once every 5 s: not yet, then.
    text = scrape(http, metered)
    assert value(text, "apiauth_connections", provider="box", status="needs_reauth") is None
    assert value(text, "apiauth_refreshes_total", provider="box", outcome="invalid_grant") == 1
    text = fresh_scrape(http, metered)
    assert value(text, "apiauth_connections", provider="box", status="needs_reauth") == 1


@pytest.mark.fast
def test_the_background_refresher_reports_how_late_it_refreshed(
    metered: InProcessServer, http: httpx.Client
) -> None:
    site = Site(metered, http)
    site.connect("box")
    with metered.broker.sessions() as db:
        due = db.scalar(select(Connection.refresh_due_at))
    assert due is not None
    # The refresher finds the connection 3 s after it fell due.
    metered.advance((due - metered.clock()).total_seconds() + 3)
    assert [outcome.kind for outcome in metered.refresher_round()] == ["fresh"]
    text = scrape(http, metered)
    assert value(text, "apiauth_refreshes_total", provider="box", outcome="ok") == 1
    assert value(text, "apiauth_refresh_lag_seconds_count", provider="box") == 1
    assert value(text, "apiauth_refresh_lag_seconds_bucket", provider="box", le="1.0") == 0
    assert value(text, "apiauth_refresh_lag_seconds_bucket", provider="box", le="5.0") == 1


@pytest.mark.fast
def test_two_brokers_in_one_process_keep_their_own_metrics(
    metered: InProcessServer, http: httpx.Client
) -> None:
    other = open_broker(metered.broker.settings)
    try:
        assert other.runtime.metrics.registry is not metered.broker.runtime.metrics.registry
        assert http.get(f"{metered.url}/healthz").status_code == 200
        mine = samples(scrape(http, metered))
        theirs = samples(generate_latest(other.runtime.metrics.registry).decode())
    finally:
        other.close()
    health = ("apiauth_http_requests_total", (("route", "health"), ("status_class", "2xx")))
    assert mine[health] == 1
    assert health not in theirs


@pytest.mark.fast
def test_the_metrics_port_serves_on_loopback_and_asks_for_the_token_when_set(
    metered: InProcessServer, http: httpx.Client
) -> None:
    settings = metered.broker.settings.model_copy(update={"metrics_port": free_port()})
    port = MetricsPort(metered.broker.runtime.metrics, settings)
    port.start()
    try:
        url = f"http://127.0.0.1:{port.port}/metrics"
        assert http.get(url).status_code == 401
        answer = http.get(url, headers=SCRAPE)
        assert answer.status_code == 200
        assert "apiauth_http_requests_total" in answer.text or "apiauth_database_up" in answer.text
        assert http.get(f"http://127.0.0.1:{port.port}/other").status_code == 404
    finally:
        port.stop()


@pytest.mark.fast
def test_every_answer_carries_a_request_id(metered: InProcessServer, http: httpx.Client) -> None:
    site = Site(metered, http)
    answers = [
        http.get(f"{metered.url}/healthz"),  # the fast path
        http.get(
            f"{metered.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site.token}"}
        ),
        http.get(f"{metered.url}/api/v1/sites/nowhere", headers={"Authorization": "Bearer x"}),
        http.get(f"{metered.url}/no/such/page"),
        http.get(f"{metered.url}/sign-in"),
    ]
    ids = [answer.headers.get("x-request-id") for answer in answers]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)
    mine = http.get(f"{metered.url}/healthz", headers={"X-Request-Id": "trace-abc.123"})
    assert mine.headers["x-request-id"] == "trace-abc.123"
    for hostile in (b"a b", b"x" * 200, b"tab\tbed", "ünï".encode()):
        answer = http.get(f"{metered.url}/healthz", headers={"X-Request-Id": hostile})
        assert answer.headers["x-request-id"].encode() != hostile
        assert len(answer.headers["x-request-id"]) <= 128


@pytest.mark.e2e
def test_a_separate_refresher_process_serves_its_own_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = apiauth_env(tmp_path / "data", None, free_port())
    env["APIAUTH_METRICS_PORT"] = str(port)
    with (tmp_path / "refresher.log").open("wb") as log:
        refresher = subprocess.Popen(
            [str(APIAUTH), "refresher"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.TransportError:
                assert refresher.poll() is None, (tmp_path / "refresher.log").read_text()
                assert time.monotonic() < deadline, "the refresher served no metrics"
                time.sleep(0.2)
        assert answer.status_code == 200
        assert value(answer.text, "apiauth_database_up") == 1
        assert value(answer.text, "apiauth_build_info", version="0.1.0") == 1
        # It serves nothing else: no HTTP requests of its own to count.
        assert (
            value(answer.text, "apiauth_http_requests_total", route="secrets", status_class="2xx")
            is None
        )
    finally:
        refresher.send_signal(signal.SIGTERM)
        assert refresher.wait(timeout=20) == 0
