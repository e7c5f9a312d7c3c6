"""The token lifecycle across real processes: an emulator in its own process, `apiauth
serve` processes sharing a database, client processes reading continuously, and a server
killed with SIGKILL in the middle of a refresh."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from apiauth.domain.read_caches import SITE_TOKEN_CACHE_SECONDS
from apiauth.vault import MasterKey
from tests.databases import fresh_postgres_database
from tests.processes import ServerProcess, client_env, run_cli
from tests.seeding import seed_site
from tests.servers import free_port

TTL = 4
MARGIN = 2
LEASE = 3
BOX_ME = "/box/api.box.com/2.0/users/me"


class Emulator:
    """`python -m apiauth.emulator` in its own process, as a real provider would be."""

    def __init__(self, workdir: Path, ttl: int = TTL) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "emulator.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apiauth.emulator",
                "--port",
                str(self.port),
                "--token-ttl",
                str(ttl),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/_admin/stats", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.1)

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{self.url}/_admin/stats").json()["box"]
        return stats

    def fault(self, **fault: Any) -> None:
        body = {"provider": "box", "endpoint": "token", **fault}
        assert httpx.post(f"{self.url}/_admin/faults", json=body).status_code == 200

    def accepts(self, bearer: str) -> bool:
        answer = httpx.get(self.url + BOX_ME, headers={"Authorization": f"Bearer {bearer}"})
        return answer.status_code == 200

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class Deployment:
    """One database, one emulator, and as many servers as asked, sharing a master key."""

    def __init__(
        self,
        workdir: Path,
        database_url: str | None,
        servers: int,
        serve_args: tuple[str, ...] = (),
        *,
        ttl: int = TTL,
        margin: int | None = MARGIN,
    ) -> None:
        """`margin=None`: the default `APIAUTH_REFRESH_MARGIN_SECONDS`."""
        self.workdir = workdir
        self.emulator = Emulator(workdir, ttl)
        self.master_key = MasterKey.generate().to_text()
        self.servers: list[ServerProcess] = []
        for index in range(servers):
            server_dir = workdir / f"server{index}"
            server_dir.mkdir()
            server = ServerProcess(server_dir, database_url, free_port())
            server.env.update(
                {
                    "APIAUTH_EMULATOR_URL": self.emulator.url,
                    "APIAUTH_MASTER_KEY": self.master_key,
                    "APIAUTH_REFRESH_LEASE_SECONDS": str(LEASE),
                    "APIAUTH_HTTP_TIMEOUT_SECONDS": "10",
                    "APIAUTH_REFRESHER_RECHECK_SECONDS": "1",
                    # Readers here hammer one token on purpose; the rate limit is tested apart.
                    "APIAUTH_RATE_LIMIT_PER_TOKEN": "100000",
                    "APIAUTH_RATE_LIMIT_BURST": "100000",
                }
            )
            if margin is not None:
                server.env["APIAUTH_REFRESH_MARGIN_SECONDS"] = str(margin)
            if database_url is None:  # one SQLite file, in the first server's data dir
                server.env["APIAUTH_DATA_DIR"] = str(workdir / "server0" / "data")
            server.extra_args = list(serve_args)
            server.start()
            self.servers.append(server)
        self.env = self.servers[0].env
        self.site_token = self._connect_box()

    def _connect_box(self) -> str:
        return seed_site(self.servers[0], "my-site", ("box",)).site_token

    def read(self, server: ServerProcess, http: httpx.Client) -> dict[str, Any]:
        answer = http.get(
            f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {self.site_token}"}
        )
        assert answer.status_code == 200, answer.text
        box: dict[str, Any] = answer.json()["box"]
        return box

    def connection_row(self, database_url: str) -> dict[str, Any]:
        engine = create_engine(database_url)
        with engine.connect() as db:
            row = (
                db.execute(
                    text("SELECT status, claimed_by, claim_expires_at, last_error FROM connections")
                )
                .mappings()
                .one()
            )
        engine.dispose()
        return dict(row)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.emulator.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.fixture
def two_servers(tmp_path: Path, postgres_url: str) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, postgres_url, servers=2)
    yield deployment
    deployment.stop()


@pytest.mark.e2e
def test_two_servers_and_eight_readers_refresh_once_per_expiry(two_servers: Deployment) -> None:
    deployment = two_servers
    seen: dict[str, bool] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 4 * TTL

    def reader(index: int) -> None:
        server = deployment.servers[index % 2]
        with httpx.Client(timeout=15) as http:
            while time.monotonic() < stop:
                box = deployment.read(server, http)
                if not box["is_logged_in"]:
                    with lock:
                        failures.append("a read was not logged in")
                    continue
                bearer = box["bearer_token"]
                with lock:
                    first_sight = bearer not in seen
                    seen.setdefault(bearer, True)
                if first_sight and not deployment.emulator.accepts(bearer):
                    with lock:
                        failures.append("a token handed out was refused by the provider")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refreshes_when_stopped = deployment.emulator.stats()["refreshes"]
    # A server answers from memory for up to a second (APIAUTH_READ_CACHE_SECONDS), so a
    # token the other server stored just before the readers stopped is read once more.
    time.sleep(SITE_TOKEN_CACHE_SECONDS + 0.2)
    with httpx.Client(timeout=15) as http:
        for server in deployment.servers:
            seen.setdefault(deployment.read(server, http)["bearer_token"], True)
    stats = deployment.emulator.stats()
    assert failures == []
    assert stats["refresh_token_reuse"] == 0
    assert refreshes_when_stopped >= 3  # 16 s of 4 s tokens, each refreshed after 3.2 s
    # Every refresh produced exactly one new token, and the readers saw each of them (and
    # perhaps one more made during that last second).
    assert refreshes_when_stopped + 1 <= len(seen) <= stats["refreshes"] + 1
    assert deployment.connection_row(deployment.env["APIAUTH_DATABASE_URL"])["status"] != (
        "needs_reauth"
    )


@pytest.mark.e2e
def test_two_servers_refresh_five_second_tokens_once_per_lifetime_with_default_settings(
    tmp_path: Path, postgres_url: str
) -> None:
    """The refresh storm (issue 12): with the default 300 s margin, tokens living 5 s were
    refreshed thousands of times a minute by two replicas. Now about once per lifetime,
    whether readers read or not, and reads are never handed an expired token."""
    ttl, window = 5, 10.0  # two lifetimes, alone and then with readers
    deployment = Deployment(tmp_path, postgres_url, servers=2, ttl=ttl, margin=None)
    try:
        before = deployment.emulator.stats()["refreshes"]
        time.sleep(window)
        alone = deployment.emulator.stats()["refreshes"] - before
        before = deployment.emulator.stats()["refreshes"]
        stop = time.monotonic() + window
        not_logged_in: list[int] = []

        def reader(index: int) -> None:
            server = deployment.servers[index % 2]
            with httpx.Client(timeout=15) as http:
                while time.monotonic() < stop:
                    if not deployment.read(server, http)["is_logged_in"]:
                        not_logged_in.append(index)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with_readers = deployment.emulator.stats()["refreshes"] - before
        lifetimes = window / ttl
        for refreshes in (alone, with_readers):
            assert 0.5 * lifetimes <= refreshes <= 1.5 * lifetimes + 1, (alone, with_readers)
        assert deployment.emulator.stats()["refresh_token_reuse"] == 0
        assert not_logged_in == []
    finally:
        deployment.stop()


def _kill_mid_refresh(deployment: Deployment, database_url: str) -> ServerProcess:
    """Make Box's token endpoint hang for a while (it still completes the refresh), and kill
    the server whose refresher is waiting for it."""
    deployment.emulator.fault(status=None, delay_seconds=4)
    deadline = time.monotonic() + 4 * TTL
    while deployment.emulator.stats()["faults_served"] < 1:
        assert time.monotonic() < deadline, "no refresh started"
        time.sleep(0.05)
    holder = deployment.connection_row(database_url)["claimed_by"]
    assert holder, "a refresh is under way, so someone holds the lease"
    pid = int(holder.split(":")[1])
    victim = next(s for s in deployment.servers if s.process and s.process.pid == pid)
    victim.kill()
    return victim


def _assert_not_in_limbo(deployment: Deployment, database_url: str) -> None:
    """After the lease lapses the connection is settled: refreshed again (it works), or,
    the provider having consumed the single-use refresh token, marked needs_reauth."""
    deadline = time.monotonic() + 6 * TTL
    while True:
        row = deployment.connection_row(database_url)
        if row["claimed_by"] is None and row["status"] != "refreshing":
            break
        assert time.monotonic() < deadline, f"the connection stays in limbo: {row}"
        time.sleep(0.2)
    assert row["status"] in ("connected", "needs_reauth")
    live = next(s for s in deployment.servers if s.process is not None)
    with httpx.Client(timeout=15) as http:
        box = deployment.read(live, http)
    if row["status"] == "connected":
        assert box["is_logged_in"]
        assert deployment.emulator.accepts(box["bearer_token"])
    else:
        assert box["is_logged_in"] is False
        assert "invalid_grant" in (row["last_error"] or "")


@pytest.mark.e2e
def test_a_server_killed_mid_refresh_leaves_no_stuck_claim(
    two_servers: Deployment, postgres_url: str
) -> None:
    _kill_mid_refresh(two_servers, postgres_url)
    _assert_not_in_limbo(two_servers, postgres_url)


@pytest.mark.e2e
def test_a_single_server_killed_mid_refresh_recovers_after_restart(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, None, servers=1)
    try:
        database_url = f"sqlite:///{tmp_path / 'server0' / 'data' / 'apiauth.db'}"
        victim = _kill_mid_refresh(deployment, database_url)
        victim.start()
        _assert_not_in_limbo(deployment, database_url)
    finally:
        deployment.stop()


CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import httpx
    from apiauth import get_secrets
    me, seconds = sys.argv[1], float(sys.argv[2])
    reads = refused = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        box = get_secrets().box
        if not (box and box.is_logged_in):
            refused += 1
        else:
            answer = httpx.get(me, headers={"Authorization": f"Bearer {box.bearer_token}"})
            refused += answer.status_code != 200
        reads += 1
        time.sleep(0.05)
    print(json.dumps({"reads": reads, "refused": refused}))
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_box_stays_usable_for_continuous_reads_from_several_processes(
    tmp_path: Path, backend: str
) -> None:
    databases = fresh_postgres_database() if backend == "postgresql" else iter([None])
    database_url = next(databases)
    deployment = Deployment(tmp_path, database_url, servers=1)
    try:
        env = client_env(deployment.servers[0].url, deployment.site_token)
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, deployment.emulator.url + BOX_ME, str(6 * TTL)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        results = [json.loads(client.communicate(timeout=120)[0]) for client in clients]
        stats = deployment.emulator.stats()
    finally:
        deployment.stop()
        for _ in databases:  # drop the PostgreSQL database
            pass
    assert all(result["reads"] > 50 for result in results)
    assert [result["refused"] for result in results] == [0, 0, 0]
    assert stats["refreshes"] >= 4
    assert stats["refresh_token_reuse"] == 0


@pytest.mark.e2e
def test_the_refresher_can_run_as_its_own_process(tmp_path: Path, postgres_url: str) -> None:
    deployment = Deployment(tmp_path, postgres_url, servers=1, serve_args=("--no-refresher",))
    worker: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(2 * TTL)
        assert deployment.emulator.stats()["refreshes"] == 0  # nobody refreshes
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "apiauth"), "refresher"],
            env=deployment.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 4 * TTL
        while deployment.emulator.stats()["refreshes"] < 2:
            assert time.monotonic() < deadline, "the refresher process refreshed nothing"
            time.sleep(0.2)
        manual = run_cli(["connections", "refresh", "my-site", "box"], deployment.env)
        assert manual.returncode == 0, manual.stderr
        assert "Refreshed box" in manual.stdout
        assert deployment.emulator.stats()["refresh_token_reuse"] == 0
    finally:
        if worker is not None:
            worker.terminate()
            assert worker.wait(timeout=20) == 0
        deployment.stop()
