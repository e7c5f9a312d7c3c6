"""Several server processes on one database (issue 19): `apiauth serve --workers N` on
PostgreSQL (SQLite refuses it), a token revoked by one process refused by the others as
soon as they hear of it (PostgreSQL `LISTEN/NOTIFY`), and a per-token rate limit that holds
for the deployment, however many processes serve it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiauth.config import Settings
from apiauth.domain import sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member
from apiauth.domain.replicas import beat, recent_replicas, serving_replicas
from apiauth.domain.token_format import hash_token
from apiauth.domain.visitors import delete_visitor_of_site
from apiauth.server.rate_limits import RateLimits
from tests.databases import fresh_postgres_database
from tests.in_process import in_process_server
from tests.processes import ServerProcess, run_cli
from tests.seeding import seed_site
from tests.servers import LiveServer, free_port, open_test_broker, running_server

# How long the server under test remembers a good token (the setting allows 1 s at most):
# long enough that only a notice explains a refusal within the test's bound.
LONG_MEMORY = 60.0
# Generous: a notice arrives in milliseconds; a busy machine may take much longer.
NOTICE_BOUND = 10.0


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """For what only PostgreSQL offers: several processes on one database."""
    yield from fresh_postgres_database()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused_within(http: httpx.Client, url: str, token: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = http.get(url, headers=bearer(token)).status_code
        if status == 401:
            return True
        assert status == 200
        time.sleep(0.01)
    return False


@contextmanager
def another_replica(broker: Broker) -> Iterator[Broker]:
    """Another server process on `broker`'s database (its broker, as such a process has)."""
    replica = open_test_broker(broker.settings)
    try:
        yield replica
    finally:
        replica.close()


@dataclass(frozen=True)
class Replicated:
    """A server on PostgreSQL that remembers a good token for a minute and hears the other
    replicas' revocations, with my-site's API Authentication on."""

    live: LiveServer
    owner: MemberView
    site_token: str
    secrets_url: str
    http: httpx.Client


@pytest.fixture
def replicated(tmp_path: Path, postgres_url: str) -> Iterator[Replicated]:
    with running_server(tmp_path, postgres_url) as live:
        broker = live.broker
        broker.runtime.site_tokens.seconds = LONG_MEMORY
        assert broker.runtime.hears_revocations.wait(NOTICE_BOUND)
        owner = create_member(broker, "owner@example.com", "correct horse battery")
        sites.create_site(broker, owner, "my-site")
        token = sites.enable_api_auth(broker, owner, "my-site")
        with httpx.Client(timeout=15) as http:
            yield Replicated(live, owner, token, live.url + "/api/v1/secrets", http)


@pytest.mark.postgres
def test_a_token_rotated_on_another_replica_is_refused_there_once_it_hears_of_it(
    replicated: Replicated,
) -> None:
    live, http, url = replicated.live, replicated.http, replicated.secrets_url
    old = replicated.site_token
    function_token = http.post(
        live.url + "/api/v1/function-tokens", json={}, headers=bearer(old)
    ).json()["token"]
    for token in (old, function_token):  # both remembered for a minute now
        assert http.get(url, headers=bearer(token)).status_code == 200

    # Another replica (or `apiauth sites rotate-token`) rotates the site token.
    with another_replica(live.broker) as replica:
        new = sites.rotate_site_token(replica, replicated.owner, "my-site")
    assert _refused_within(http, url, old, NOTICE_BOUND)
    assert _refused_within(http, url, function_token, NOTICE_BOUND)
    assert http.get(url, headers=bearer(new)).status_code == 200


@pytest.mark.postgres
def test_a_function_token_revoked_with_its_visitor_is_refused_by_the_other_replica(
    replicated: Replicated,
) -> None:
    live, http, url = replicated.live, replicated.http, replicated.secrets_url
    minted = http.post(
        live.url + "/api/v1/function-tokens",
        json={"visitor_id": "visitor-1"},
        headers=bearer(replicated.site_token),
    )
    assert minted.status_code == 201
    function_token = minted.json()["token"]
    assert http.get(url, headers=bearer(function_token)).status_code == 200

    with another_replica(live.broker) as replica:
        delete_visitor_of_site(replica, replicated.owner, "my-site", "visitor-1")
    assert _refused_within(http, url, function_token, NOTICE_BOUND)
    assert http.get(url, headers=bearer(replicated.site_token)).status_code == 200


def test_serve_with_workers_refuses_sqlite_with_a_clear_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, None, free_port())
    done = run_cli(["serve", "--workers", "2", "--port", str(server.port)], server.env)
    assert done.returncode == 1
    assert "--workers 2 needs PostgreSQL" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.postgres
def test_serve_with_two_workers_serves_from_two_processes_that_share_the_database(
    tmp_path: Path, postgres_url: str
) -> None:
    server = ServerProcess(tmp_path, postgres_url, free_port())
    server.extra_args = ["--workers", "2"]
    server.env["APIAUTH_METRICS_TOKEN"] = METRICS_TOKEN
    server.ready_timeout = 120  # two processes start on a machine that may be busy
    server.start()
    try:
        token = seed_site(server, "my-site").site_token
        url = server.url + "/api/v1/secrets"
        # Every process answers, and each hears of a rotation made by the CLI.
        with httpx.Client(timeout=15) as http:
            answers = [http.get(url, headers=bearer(token)) for _ in range(20)]
            assert {answer.status_code for answer in answers} == {200}
            rotated = run_cli(["sites", "rotate-token", "my-site", "--yes"], server.env)
            assert rotated.returncode == 0, rotated.stderr
            assert _refused_within(http, url, token, NOTICE_BOUND)
        # Both processes beat (at their start): each is a replica of its own.
        observer = open_test_broker(Settings(data_dir=server.data_dir, database_url=postgres_url))
        try:
            deadline = time.monotonic() + NOTICE_BOUND
            while True:
                with observer.sessions() as db:
                    pids = {r.pid for r in recent_replicas(db) if r.role == "serve"}
                if len(pids) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            observer.close()
        assert len(pids) == 2
        # Whichever worker a scrape reaches, it answers for both, labelled by worker, and
        # the reads add up across them.
        with httpx.Client(timeout=15) as http:
            deadline = time.monotonic() + NOTICE_BOUND
            while True:
                scraped = scrape_workers(http, server.url)
                if set(scraped) == {"0", "1"} or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert set(scraped) == {"0", "1"}
        assert all(cpu > 0 for cpu, _reads in scraped.values())
        assert sum(reads for _cpu, reads in scraped.values()) >= 20
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()


METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def scrape_workers(http: httpx.Client, url: str) -> dict[str, tuple[float, float]]:
    """Per worker label: CPU seconds and successful secrets reads, from one scrape."""
    answer = http.get(f"{url}/metrics", headers=bearer(METRICS_TOKEN))
    assert answer.status_code == 200, answer.text
    found: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            worker = sample.labels.get("worker")
            assert worker is not None, f"{sample.name} has no worker label"
            cpu, reads = found.get(worker, (0.0, 0.0))
            if sample.name == "process_cpu_seconds_total":
                cpu += sample.value
            elif sample.name == "apiauth_http_requests_total" and sample.labels == {
                "route": "secrets",
                "status_class": "2xx",
                "worker": worker,
            }:
                reads += sample.value
            found[worker] = (cpu, reads)
    return found


@pytest.mark.fast
def test_the_per_token_rate_holds_for_the_deployment_whatever_the_processes(
    tmp_path: Path, database_url: str
) -> None:
    settings = {"rate_limit_per_token": 10.0, "rate_limit_burst": 10}
    with in_process_server(tmp_path, database_url, **settings) as live:
        broker = live.broker
        # Two more server processes beat on the same database.
        with another_replica(broker) as second, another_replica(broker) as third:
            replicas = [second, third]
            started = broker.clock()
            for each in (broker, *replicas):
                beat(each, role="serve", refresher=False, started_at=started)
            processes = [broker, *replicas]
            assert {serving_replicas(each) for each in processes} == {3}
            frozen = lambda: 0.0  # noqa: E731 (no time passes: the burst alone counts)
            limits = [RateLimits(each.settings, clock=frozen) for each in processes]
            for each, limit in zip(processes, limits, strict=True):
                limit.share_among(serving_replicas(each))
            token_hash = hash_token("apiauth_site_example")
            allowed = sum(limit.allow_token_hash(token_hash) for _ in range(20) for limit in limits)
            # 10 at once in all (each process its share, 3.33), within 20 %.
            assert 8 <= allowed <= 12


@pytest.mark.fast
def test_one_server_process_keeps_the_whole_rate(live: object, owner: MemberView) -> None:
    """Alone, a process enforces the configured rate itself (the share of one)."""
    broker: Broker = live.broker  # type: ignore[attr-defined]
    beat(broker, role="serve", refresher=False, started_at=broker.clock())
    settings = broker.settings.model_copy(
        update={"rate_limit_per_token": 50.0, "rate_limit_burst": 10}
    )
    limit = RateLimits(settings, lambda: 0.0)
    limit.share_among(serving_replicas(broker))
    assert sum(limit.allow_token_hash("a-hash") for _ in range(20)) == 10
