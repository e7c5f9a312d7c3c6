"""A real Prometheus server scrapes apiauth (issue 20): Debian's `prometheus`, started here
on loopback with a generated configuration (bearer token, 1 s scrape interval), and asked
through its HTTP API for a few series: the target is up, secrets reads are counted, the
connections gauge and the latency histogram are usable in queries."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.databases import IN_CI
from tests.live_site import Site
from tests.processes import stop_process
from tests.servers import LiveServer, free_port, running_server

PROMETHEUS = Path("/usr/bin/prometheus")
TOKEN = "prometheus-scrapes-with-this-token-0123"


def require_prometheus() -> Path:
    found = PROMETHEUS if PROMETHEUS.exists() else shutil.which("prometheus")
    if found:
        return Path(found)
    message = "prometheus is missing: apt-get install -y prometheus (Debian's package)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class Prometheus:
    def __init__(self, binary: Path, workdir: Path, target: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: apiauth\n"
            "    metrics_path: /metrics\n"
            "    authorization:\n"
            "      type: Bearer\n"
            f"      credentials: {TOKEN}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = httpx.get(self.url + "/api/v1/query", params={"query": expression}, timeout=5)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value_of(self, expression: str, at_least: float, timeout: float = 20) -> float:
        """Ask until the query's (single) value reaches `at_least`."""
        deadline = time.monotonic() + timeout
        found: float | None = None
        while time.monotonic() < deadline:
            result = self.query(expression)
            if result:
                found = float(result[0]["value"][1])
                if found >= at_least:
                    return found
            time.sleep(0.5)
        raise AssertionError(f"{expression} stayed at {found}; log: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[LiveServer, Prometheus]]:
    binary = require_prometheus()
    database_url = f"sqlite:///{tmp_path / 'apiauth.db'}"
    with running_server(tmp_path, database_url, refresher=False, metrics_token=TOKEN) as server:
        prometheus = Prometheus(binary, tmp_path, server.url.removeprefix("http://"))
        try:
            prometheus.wait_ready()
            yield server, prometheus
        finally:
            prometheus.stop()


def test_a_prometheus_server_scrapes_apiauth_and_queries_its_series(
    scraped: tuple[LiveServer, Prometheus], http: httpx.Client
) -> None:
    server, prometheus = scraped
    site = Site(server, http)
    site.connect("github")
    for _ in range(20):
        site.read("github")
    assert prometheus.value_of('up{job="apiauth"}', 1) == 1
    reads = prometheus.value_of(
        'apiauth_http_requests_total{route="secrets",status_class="2xx"}', 20
    )
    assert reads == 20
    connected = prometheus.value_of('apiauth_connections{provider="github",status="connected"}', 1)
    assert connected == 1
    # The histogram adds up: a quantile over it is a number of seconds.
    quantile = prometheus.query(
        "histogram_quantile(0.99, sum by (le) "
        '(apiauth_http_request_duration_seconds_bucket{route="secrets"}))'
    )
    assert 0 < float(quantile[0]["value"][1]) < 10
    assert prometheus.value_of("apiauth_database_up", 1) == 1
