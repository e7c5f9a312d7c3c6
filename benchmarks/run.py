"""apiauth's benchmarks (issue #6): one command, a Markdown table out.

    .venv/bin/python benchmarks/run.py            # or: make bench

Everything runs on this machine, on loopback, with fixed durations; every process started
here is stopped at the end. Ratios (secrets vs /healthz) are taken in the same run, so that
the machine's noise cancels. Results go to `benchmarks/results.md` (and, as JSON, to
`.bench/results-<time>.json` for before/after comparisons).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import BENCH_DIR, ROOT, Dataset, function_tokens, read_dataset, refresh_dataset

BIN = Path(sys.executable).parent
APIAUTH = str(BIN / "apiauth")
CONNECTIONS = 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    benchmark: str
    metric: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if self.unit == "req/s":
            return f"{self.value:,.0f} req/s"
        if self.unit == "%":
            return f"{self.value:.1f} %"
        if self.unit == "times":
            return f"{self.value:.2f} times"
        if self.unit in ("ms", "µs", "s", "MB"):
            digits = 2 if self.value < 10 else 1 if self.value < 100 else 0
            return f"{self.value:,.{digits}f} {self.unit}"
        return f"{self.value:,.0f} {self.unit}".strip()


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        shown = row.shown() + (f"  (target {row.target})" if row.target else "")
        print(f"  {row.benchmark} · {row.metric}: {shown}", flush=True)
        return row


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIAUTH_")}
    # One token at thousands of requests a second is the load here: the per-token limit (50/s
    # by default) stays on the path, set high enough never to answer 429.
    env.update({"APIAUTH_LOG_LEVEL": "WARNING", "APIAUTH_RATE_LIMIT_PER_TOKEN": "1000000", **extra})
    # The same string hashing in every process: two servers compared side by side then differ
    # by what they are given, not by their dictionaries' luck.
    env["PYTHONHASHSEED"] = "0"
    return env


@contextmanager
def process(argv: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (BENCH_DIR / f"{name}.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 (our own commands)
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """Seconds until `url` answers 200 (polled every 10 ms)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}; see .bench/")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    started_in: float


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """`argv` run on one CPU only (`taskset`), when asked and possible."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


@contextmanager
def serve(
    dataset: Dataset,
    *extra_args: str,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    label: str = "",
) -> Iterator[Server]:
    port = free_port()
    argv = [APIAUTH, "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    argv = pinned(argv, cpu)
    merged = _env(
        {**dataset.env(), "APIAUTH_PUBLIC_URL": f"http://127.0.0.1:{port}", **(env or {})}
    )
    with process(argv, merged, f"serve-{dataset.name}{label}") as proc:
        url = f"http://127.0.0.1:{port}"
        started_in = wait_ready(url + "/readyz", proc)
        yield Server(url, proc, started_in)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak resident set) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    token: str | None,
    seconds: int,
    cpu: int | None = None,
    *,
    lua: str | None = None,
    results: dict[str, float] | None = None,
) -> Load:
    """`wrk` with 64 keep-alive connections; the token goes in a Lua script, never argv.
    `cpu`: run on that CPU only (one thread). `lua`: the script instead (its `done` may
    print `RESULT name value` lines, collected into `results`)."""
    script = BENCH_DIR / "wrk-headers.lua"
    header = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text(lua if lua is not None else header)
    script.chmod(0o600)
    threads = "-t2" if cpu is None else "-t1"
    argv = ["wrk", threads, f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script)]
    argv.append(url)
    argv = pinned(argv, cpu)
    out = subprocess.run(  # noqa: S603 (wrk, with our own arguments)
        argv, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    text = out.stdout
    if results is not None:
        for name, value in re.findall(r"^RESULT (\S+) ([\d.]+)$", text, re.MULTILINE):
            results[name] = float(value)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", text, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if rps is None or total is None or "50" not in percentiles or "99" not in percentiles:
        raise RuntimeError(f"could not read wrk's output:\n{text}")
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Load(
        float(rps.group(1)),
        _ms(percentiles["50"]),
        _ms(percentiles["99"]),
        int(total.group(1)),
        errors,
    )


def combined(loads: list[Load]) -> Load:
    """Runs of equal length as one: mean throughput and p50, the worse p99."""
    return Load(
        statistics.mean(load.rps for load in loads),
        statistics.mean(load.p50_ms for load in loads),
        max(load.p99_ms for load in loads),
        sum(load.requests for load in loads),
        sum(load.errors for load in loads),
    )


# --------------------------------------------------------------------------- benchmarks


def check_secrets(server: Server, token: str) -> None:
    answer = httpx.get(
        server.url + "/api/v1/secrets", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    answer.raise_for_status()
    if len(answer.json()) < 1:
        raise RuntimeError("the benchmark site reads no providers")


def read_path(report: Report, dataset: Dataset, label: str, seconds: int) -> Load:
    """Benchmark 1: secrets and /healthz of one server, same run."""
    with serve(dataset) as server:
        check_secrets(server, dataset.site_token)
        secrets_url = server.url + "/api/v1/secrets"
        wrk(server.url + "/healthz", None, 3)
        wrk(secrets_url, dataset.site_token, 3)
        # Alternating halves, so that a slow spell of the machine hits both alike.
        half = max(1, seconds // 2)
        healths, reads = [], []
        for _ in range(2):
            healths.append(wrk(server.url + "/healthz", None, half))
            reads.append(wrk(secrets_url, dataset.site_token, half))
        health, secrets = combined(healths), combined(reads)
    name = f"1. read path ({label})"
    report.add(name, "/healthz throughput", health.rps, "req/s")
    report.add(name, "/healthz p50", health.p50_ms, "ms")
    report.add(name, "/healthz p99", health.p99_ms, "ms")
    report.add(name, "secrets throughput", secrets.rps, "req/s")
    report.add(name, "secrets p50", secrets.p50_ms, "ms")
    ratio = 100 * secrets.rps / health.rps
    report.add(name, "secrets / healthz", ratio, "%", "≥ 60 %", ratio >= 60)
    report.add(name, "secrets p99", secrets.p99_ms, "ms", "≤ 25 ms", secrets.p99_ms <= 25)
    if health.errors or secrets.errors:
        report.notes.append(
            f"{label}: wrk counted {health.errors} errors on /healthz and {secrets.errors} on "
            "secrets (non-2xx or socket errors)."
        )
    return secrets


GROWTH_MODES = (
    ("remembered", {}),
    # Every read asks the database: the index lookups themselves, whatever the size.
    ("from the database", {"APIAUTH_READ_CACHE_SECONDS": "0"}),
)


def growth(report: Report, seconds: int, sizes: list[int]) -> None:
    """Benchmark 2: the same read with 1, 10,000 and 100,000 sites in the database. The
    three servers run side by side and `wrk` visits them in turn, in short slices, each size
    first in its turn, so that a slow spell of the machine falls on all three alike. Once as
    served (answers remembered for a second), once with every read going to the database."""
    datasets = {}
    for sites in sizes:
        dataset = read_dataset(sites)
        if not dataset.cached:
            report.notes.append(
                f"The {sites:,}-site dataset ({dataset.connections:,} connections) was "
                f"generated in {dataset.generated_seconds:.0f} s (cached in .bench/ after)."
            )
        datasets[sites] = dataset
    rounds = 8
    piece = max(2, seconds // 6)
    for mode, env in GROWTH_MODES:
        with contextlib.ExitStack() as stack:
            # The servers on one CPU, `wrk` on the other: the scheduler's shuffling of the
            # two cores between them would otherwise move the p50 by more than 10 %.
            servers = {
                n: stack.enter_context(serve(d, env=env, cpu=0)) for n, d in datasets.items()
            }
            for n, server in servers.items():
                check_secrets(server, datasets[n].site_token)
                wrk(server.url + "/api/v1/secrets", datasets[n].site_token, 3, cpu=1)
            loads: dict[int, list[Load]] = {n: [] for n in sizes}
            for turn in range(rounds):
                # Each size goes first in turn: whoever follows a run pays for its tail.
                for n in sizes[turn % len(sizes) :] + sizes[: turn % len(sizes)]:
                    url = servers[n].url + "/api/v1/secrets"
                    loads[n].append(wrk(url, datasets[n].site_token, piece, cpu=1))
        p50s = {}
        for n in sizes:
            load = combined(loads[n])
            # The median slice: one slice that a noisy neighbour slowed does not decide it.
            p50s[n] = statistics.median(piece.p50_ms for piece in loads[n])
            report.add("2. growth", f"{mode}: p50, {n:,} sites", p50s[n], "ms")
            report.add("2. growth", f"{mode}: throughput, {n:,} sites", load.rps, "req/s")
        spread = 100 * (max(p50s.values()) - min(p50s.values())) / min(p50s.values())
        report.add(
            "2. growth",
            f"{mode}: p50 spread 1 → {max(sizes):,} sites",
            spread,
            "%",
            "≤ 10 %",
            spread <= 10,
        )


METRICS_TOKEN = secrets.token_urlsafe(24)
OBSERVABILITY_MODES = (
    ("metrics off", {}),
    ("metrics on", {"APIAUTH_METRICS_TOKEN": METRICS_TOKEN}),
    # What the access log costs besides (one JSON line per request, to the log file).
    (
        "metrics on, JSON access log",
        {
            "APIAUTH_METRICS_TOKEN": METRICS_TOKEN,
            "APIAUTH_ACCESS_LOG": "true",
            "APIAUTH_LOG_FORMAT": "json",
            "APIAUTH_LOG_LEVEL": "INFO",
        },
    ),
)


def observability(report: Report, dataset: Dataset, seconds: int) -> None:
    """Benchmark 7 (issue 20): what metrics cost the secrets read path. Servers with metrics
    off, on, and on with the JSON access log run side by side on one CPU, `wrk` on the
    other, visited in turn in short slices (each first in its turn, as in benchmark 2); the
    median slice's throughput of each, and the server's CPU time per answer (from /proc).
    The requests counted by the "on" server's metrics are checked against what `wrk` sent."""
    rounds = 6
    piece = max(2, seconds // 4)
    loads: dict[str, list[Load]] = {mode: [] for mode, _env in OBSERVABILITY_MODES}
    modes = [mode for mode, _env in OBSERVABILITY_MODES]
    with contextlib.ExitStack() as stack:
        servers = {
            mode: stack.enter_context(serve(dataset, env=env, cpu=0, label=f"-{index}"))
            for index, (mode, env) in enumerate(OBSERVABILITY_MODES)
        }
        for server in servers.values():
            check_secrets(server, dataset.site_token)
            wrk(server.url + "/api/v1/secrets", dataset.site_token, 3, cpu=1)
        cpu_per_request: dict[str, list[float]] = {mode: [] for mode in modes}
        for turn in range(rounds):
            for mode in modes[turn % len(modes) :] + modes[: turn % len(modes)]:
                url = servers[mode].url + "/api/v1/secrets"
                pid = servers[mode].proc.pid
                before = cpu_seconds(pid)
                load = wrk(url, dataset.site_token, piece, cpu=1)
                cpu_per_request[mode].append((cpu_seconds(pid) - before) / load.requests * 1e6)
                loads[mode].append(load)
        scraped = httpx.get(
            servers["metrics on"].url + "/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=10,
        ).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith('apiauth_http_requests_total{route="secrets"')
    )
    sent = sum(load.requests for load in loads["metrics on"])
    rps = {mode: statistics.median(load.rps for load in loads[mode]) for mode in modes}
    name = "7. metrics"
    for mode in modes:
        report.add(name, f"secrets throughput, {mode}", rps[mode], "req/s")
    # The server's own CPU time per answer: what a busy machine's noise moves least.
    cpu = {mode: statistics.median(cpu_per_request[mode]) for mode in modes}
    for mode in modes:
        report.add(name, f"server CPU per secrets read, {mode}", cpu[mode], "µs")
    cost = 100 * (rps["metrics off"] - rps["metrics on"]) / rps["metrics off"]
    report.add(name, "metrics' cost to the read path", cost, "%", "< 5 %", cost < 5)
    cpu_cost = 100 * (cpu["metrics on"] - cpu["metrics off"]) / cpu["metrics off"]
    report.add(name, "metrics' cost in CPU per read", cpu_cost, "%", "< 5 %", cpu_cost < 5)
    log_cost = 100 * (rps["metrics off"] - rps["metrics on, JSON access log"]) / rps["metrics off"]
    report.add(name, "cost with the JSON access log on too", log_cost, "%")
    # wrk's warm-up requests are counted too; the slices' are all there.
    report.add(
        name,
        "secrets requests counted / sent by wrk",
        100 * counted / max(sent, 1),
        "%",
        "≥ 100 %",
        counted >= sent,
    )


def asgi_read_cost(report: Report, dataset: Dataset, calls: int = 100_000) -> None:
    """Benchmark 7b: the same remembered secrets read, called on the ASGI application in
    this process (no sockets, no `wrk`) with metrics off and on, one call of each in turn;
    the median call of each. What the per-request bookkeeping costs, with as little of the
    machine's noise as a measurement can have."""
    import asyncio

    from apiauth.config import Settings
    from apiauth.domain.broker import open_broker
    from apiauth.server.app import create_app

    header = (b"authorization", f"Bearer {dataset.site_token}".encode())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/secrets",
        "raw_path": b"/api/v1/secrets",
        "query_string": b"",
        "root_path": "",
        "headers": [header],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    base = {
        "data_dir": dataset.data_dir,
        "database_url": dataset.database_url,
        "rate_limit_per_token": 1_000_000,
    }
    modes = {"metrics off": {}, "metrics on": {"metrics_token": METRICS_TOKEN}}
    brokers = {mode: open_broker(Settings(**base, **extra)) for mode, extra in modes.items()}
    apps = {mode: create_app(broker, workers=False) for mode, broker in brokers.items()}

    async def measure() -> dict[str, float]:
        for app in apps.values():  # the first read of each goes the long way
            await app(dict(scope), receive, send)
        durations: dict[str, list[float]] = {mode: [] for mode in apps}
        order = list(apps)
        clock = time.perf_counter
        for call in range(calls):
            # One call of each in turn, the first alternating: every mode meets the
            # machine's slow and fast moments alike.
            for mode in order if call % 2 else reversed(order):
                started = clock()
                await apps[mode](dict(scope), receive, send)
                durations[mode].append(clock() - started)
            if call % 500 == 0:
                await asyncio.sleep(0)  # background renewals of the memories
        return {mode: statistics.median(times) * 1e6 for mode, times in durations.items()}

    try:
        median = asyncio.run(measure())
    finally:
        for broker in brokers.values():
            broker.close()
    if set(statuses) != {200}:
        report.notes.append(f"7b: the ASGI reads answered {sorted(set(statuses))}")
    name = "7b. metrics, in process"
    for mode, micros in median.items():
        report.add(name, f"remembered secrets read (median call), {mode}", micros, "µs")
    cost = 100 * (median["metrics on"] - median["metrics off"]) / median["metrics off"]
    report.add(name, "metrics' cost per read", cost, "%", "< 5 %", cost < 5)


def client_cache(report: Report, dataset: Dataset, calls: int = 100_000) -> None:
    """Benchmark 3: `get_secrets()` inside the cache window, counting network requests."""
    import apiauth

    requests = 0
    original = httpx.HTTPTransport.handle_request

    def counted(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        return original(self, request)

    with serve(dataset) as server:
        httpx.HTTPTransport.handle_request = counted  # type: ignore[method-assign]
        try:
            apiauth.clear_cache()
            apiauth.get_secrets(token=dataset.site_token, url=server.url)
            first = requests
            started = time.perf_counter()
            for _ in range(calls):
                apiauth.get_secrets(token=dataset.site_token, url=server.url)
            elapsed = time.perf_counter() - started
        finally:
            httpx.HTTPTransport.handle_request = original  # type: ignore[method-assign]
            apiauth.clear_cache()
    per_call = elapsed / calls * 1e6
    report.add(
        "3. client cache",
        "get_secrets() per cached call",
        per_call,
        "µs",
        "≤ 20 µs",
        per_call <= 20,
    )
    extra = requests - first
    report.add(
        "3. client cache", f"network requests in {calls:,} calls", extra, "", "0", extra == 0
    )


def refresher(
    report: Report,
    connections: int,
    seconds: int,
    *,
    processes: int = 1,
    database: str = "sqlite",
    name: str = "4. refresher",
) -> float:
    """Benchmark 4: one `apiauth refresher` process against an emulator process, with a
    server that reads (and checks) random sites' secrets meanwhile (benchmark 12: with
    `processes` refreshers on PostgreSQL). The refreshes per second."""
    data = refresh_dataset(connections, expire_after=seconds + 60, window=240, database=database)
    dataset = data.dataset
    report.notes.append(
        f"{name}: the refresh dataset ({connections:,} connections on {database}, all due, "
        f"access tokens expiring {seconds + 60} to {seconds + 300} s after generation) is "
        f"made anew each run: {dataset.generated_seconds:.0f} s."
    )
    emulator_port = free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    emulator_argv = [
        str(BIN / "python"),
        "-m",
        "apiauth.emulator",
        "--port",
        str(emulator_port),
        "--token-ttl",
        "3600",
    ]
    env = {"APIAUTH_EMULATOR_URL": emulator_url, "APIAUTH_REFRESH_CONCURRENCY": "8"}
    with process(emulator_argv, _env({}), "emulator") as emulator:
        wait_ready(emulator_url + "/_admin/stats", emulator)
        for provider, tokens in data.refresh_tokens.items():
            scopes = ["user-read-email"] if provider == "spotify" else ["root_readwrite"]
            httpx.post(
                emulator_url + "/_admin/grants",
                json={"provider": provider, "scopes": scopes, "refresh_tokens": tokens},
                timeout=60,
            ).raise_for_status()
        with serve(dataset, "--no-refresher", env=env) as reader:

            def refreshed() -> int:
                stats = httpx.get(emulator_url + "/_admin/stats", timeout=10).json()
                return sum(counters["refreshes"] for counters in stats.values())

            served = {"reads": 0, "tokens": 0, "expired": 0, "failed": 0}
            stop = threading.Event()

            def sample() -> None:
                rng = random.Random(4)  # noqa: S311 (picks sites, guards nothing)
                with httpx.Client(timeout=30) as http:
                    while not stop.wait(0.1):
                        token = rng.choice(dataset.sample_tokens)
                        answer = http.get(
                            reader.url + "/api/v1/secrets",
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        served["reads"] += 1
                        if answer.status_code != 200:
                            served["failed"] += 1
                            continue
                        now = datetime.now(UTC)
                        for secret in answer.json().values():
                            served["tokens"] += 1
                            expires = secret["expires_at"]
                            if (
                                not secret["bearer_token"]
                                or not secret["is_logged_in"]
                                or (expires and datetime.fromisoformat(expires) <= now)
                            ):
                                served["expired"] += 1

            argv = [APIAUTH, "refresher"]
            with contextlib.ExitStack() as stack:
                refreshers = [
                    stack.enter_context(
                        process(argv, _env({**dataset.env(), **env}), f"refresher-{index}")
                    )
                    for index in range(processes)
                ]
                sampler = threading.Thread(target=sample)
                sampler.start()
                warmup = 5.0
                time.sleep(warmup)

                def used() -> float:
                    return sum(cpu_seconds(worker.pid) for worker in refreshers)

                start_count, start_cpu = refreshed(), used()
                emulator_cpu = cpu_seconds(emulator.pid)
                started = time.perf_counter()
                time.sleep(seconds)
                end_count, end_cpu = refreshed(), used()
                emulator_cpu = cpu_seconds(emulator.pid) - emulator_cpu
                elapsed = time.perf_counter() - started
                peak = max(memory_mb(worker.pid, "VmHWM") for worker in refreshers)
                stop.set()
                sampler.join()
                alive = all(worker.poll() is None for worker in refreshers)
    rate = (end_count - start_count) / elapsed
    if processes == 1 and database == "sqlite":
        report.add(
            name, f"refreshes/s (sustained, {seconds} s)", rate, "/s", "≥ 500 /s", rate >= 500
        )
    else:
        target = 1000 if processes >= 2 else 800
        report.add(
            name,
            f"refreshes/s, {processes} refresher process(es), {seconds} s",
            rate,
            "/s",
            f"≥ {target:,} /s",
            rate >= target,
        )
    cpu = 100 * (end_cpu - start_cpu) / elapsed
    report.add(name, f"refresher CPU (% of one core), {processes} process(es)", cpu, "%")
    report.add(name, "emulator CPU (% of one core)", 100 * emulator_cpu / elapsed, "%")
    report.add(name, "refresher peak RSS", peak, "MB", "≤ 300 MB", peak <= 300)
    report.add(
        name,
        f"tokens served expired ({served['tokens']} served)",
        served["expired"],
        "",
        "0",
        served["expired"] == 0,
    )
    if served["failed"] or not alive:
        report.notes.append(
            f"{name}: {served['failed']} sampled reads failed; processes alive: {alive}."
        )
    return rate


# --------------------------------------------------------------------------- issue 19

# Each request with the next token of a file (one per line), each `wrk` thread taking every
# other one: no token is read twice while the file lasts (`RESULT reused` counts those that
# were, after it ran out).
COLD_LUA = """
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  tokens = {}
  local index = 0
  for line in io.lines("%(path)s") do
    if index %% %(threads)d == id then table.insert(tokens, line) end
    index = index + 1
  end
  position = 0
  reused = 0
end
function request()
  position = position + 1
  if position > #tokens then position = 1; wrapped = true end
  if wrapped then reused = reused + 1 end
  return wrk.format("GET", "%(path_url)s", {["Authorization"] = "Bearer " .. tokens[position]})
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("reused") end
  io.write(string.format("RESULT reused %%d\\n", total))
end
"""

# Mint a function token with the site token, then read with it once: each connection
# alternates, a read taking the token its own thread minted last.
CHURN_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  minted = {}
  reads = 0
  mints = 0
end
function request()
  local token = table.remove(minted)
  if token then
    return wrk.format("GET", "/api/v1/secrets", {["Authorization"] = "Bearer " .. token})
  end
  return wrk.format("POST", "/api/v1/function-tokens",
    {["Authorization"] = "Bearer %(site_token)s", ["Content-Type"] = "application/json"}, "{}")
end
function response(status, headers, body)
  if status == 201 then
    mints = mints + 1
    local token = string.match(body, '"token":"([%%w_]+)"')
    if token then table.insert(minted, token) end
  elseif status == 200 then
    reads = reads + 1
  end
end
function done(summary, latency, requests)
  local pairs_done, mints_done = 0, 0
  for _, thread in ipairs(threads) do
    pairs_done = pairs_done + thread:get("reads")
    mints_done = mints_done + thread:get("mints")
  end
  io.write(string.format("RESULT reads %%d\\nRESULT mints %%d\\n", pairs_done, mints_done))
end
"""

MINT_LUA = """
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(site_token)s"
"""

COLD_TOKENS = 60_000


def cold_wrk(url: str, tokens: list[str], seconds: int) -> tuple[Load, int]:
    """`wrk` reading `/api/v1/secrets` with a different token per request; how many
    requests reused a token (0 unless the tokens ran out)."""
    path = BENCH_DIR / "cold-tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    path.chmod(0o600)
    lua = COLD_LUA % {"path": path, "threads": 2, "path_url": "/api/v1/secrets"}
    results: dict[str, float] = {}
    try:
        load = wrk(url + "/api/v1/secrets", None, seconds, lua=lua, results=results)
    finally:
        path.unlink()
    return load, int(results.get("reused", 0))


def cold_read(report: Report, dataset: Dataset, label: str, seconds: int) -> None:
    """Benchmark 8: every request with a function token not read before (pre-minted, each
    used once), against the same server's `/healthz`, alternating halves."""
    tokens = function_tokens(dataset, COLD_TOKENS)
    half = max(1, seconds // 2)
    cpu = {"healthz": 0.0, "cold": 0.0}
    with serve(dataset) as server:
        check_secrets(server, tokens.pop())
        wrk(server.url + "/healthz", None, 2)
        healths, colds, reused = [], [], 0
        pid = server.proc.pid
        for turn in range(2):
            before = cpu_seconds(pid)
            healths.append(wrk(server.url + "/healthz", None, half))
            middle = cpu_seconds(pid)
            load, again = cold_wrk(server.url, tokens[turn::2], half)
            cpu["healthz"] += middle - before
            cpu["cold"] += cpu_seconds(pid) - middle
            colds.append(load)
            reused += again
    health, cold = combined(healths), combined(colds)
    name = f"8. cold read ({label})"
    report.add(name, "/healthz throughput", health.rps, "req/s")
    report.add(name, "cold reads", cold.rps, "req/s")
    report.add(name, "cold read p50", cold.p50_ms, "ms")
    ratio = 100 * cold.rps / health.rps
    report.add(name, "cold / healthz", ratio, "%", "≥ 20 %", ratio >= 20)
    report.add(name, "cold read p99", cold.p99_ms, "ms", "≤ 50 ms", cold.p99_ms <= 50)
    # The server's own CPU time per answer: what a busy machine's noise moves least.
    per_health = 1e6 * cpu["healthz"] / max(health.requests, 1)
    per_cold = 1e6 * cpu["cold"] / max(cold.requests, 1)
    report.add(name, "server CPU per /healthz", per_health, "µs")
    report.add(name, "server CPU per cold read", per_cold, "µs")
    if reused or cold.errors:
        report.notes.append(
            f"8 ({label}): {reused} requests reused a token (the pre-minted ones ran out), "
            f"{cold.errors} errors."
        )


def churn(report: Report, dataset: Dataset, seconds: int) -> None:
    """Benchmark 9: minting alone, and the full invocation - mint a function token with the
    site token, read with it once - as pairs per second, 64 connections, PostgreSQL."""
    with serve(dataset) as server:
        check_secrets(server, dataset.site_token)
        lua = MINT_LUA % {"site_token": dataset.site_token}
        wrk(server.url + "/api/v1/function-tokens", None, 2, lua=lua)
        mint = wrk(server.url + "/api/v1/function-tokens", None, seconds, lua=lua)
        results: dict[str, float] = {}
        lua = CHURN_LUA % {"site_token": dataset.site_token}
        pairs = wrk(server.url + "/", None, seconds, lua=lua, results=results)
    name = "9. function tokens (PostgreSQL)"
    report.add(name, "minted", mint.rps, "/s", "≥ 1,500 /s", mint.rps >= 1500)
    report.add(name, "minting p99", mint.p99_ms, "ms")
    rate = results.get("reads", 0) / seconds
    report.add(name, "mint + first read", rate, "pairs/s", "≥ 1,000 /s", rate >= 1000)
    report.add(name, "request p99 (either)", pairs.p99_ms, "ms")
    if mint.errors or pairs.errors:
        report.notes.append(f"9: wrk counted {mint.errors} and {pairs.errors} errors.")


def workers(report: Report, dataset: Dataset, seconds: int) -> None:
    """Benchmark 10: warm and cold reads with `serve --workers 1` and `--workers 2`, side by
    side on PostgreSQL, visited in turn."""
    tokens = function_tokens(dataset, COLD_TOKENS)
    half = max(1, seconds // 2)
    warm: dict[int, list[Load]] = {1: [], 2: []}
    cold: dict[int, list[Load]] = {1: [], 2: []}
    with contextlib.ExitStack() as stack:
        servers = {
            n: stack.enter_context(serve(dataset, "--workers", str(n), label=f"-workers{n}"))
            for n in (1, 2)
        }
        for server in servers.values():
            check_secrets(server, dataset.site_token)
            wrk(server.url + "/api/v1/secrets", dataset.site_token, 2)
        share = 0
        for turn in range(2):
            order = (1, 2) if turn == 0 else (2, 1)
            for n in order:
                url = servers[n].url
                warm[n].append(wrk(url + "/api/v1/secrets", dataset.site_token, half))
                load, _ = cold_wrk(url, tokens[share::4], half)
                share += 1
                cold[n].append(load)
    name = "10. workers (PostgreSQL)"
    rates = {}
    for n in (1, 2):
        w, c = combined(warm[n]), combined(cold[n])
        rates[n] = w.rps
        report.add(name, f"warm read, --workers {n}", w.rps, "req/s")
        report.add(name, f"warm read p99, --workers {n}", w.p99_ms, "ms")
        report.add(name, f"cold read, --workers {n}", c.rps, "req/s")
    gain = rates[2] / rates[1]
    report.add(name, "warm read, 2 ÷ 1 workers", gain, "times", "≥ 1.4 times", gain >= 1.4)


def revocation_reach(report: Report, dataset: Dataset, trials: int = 100) -> None:
    """Benchmark 11: two `apiauth serve` replicas on PostgreSQL; a site token rotated with
    the REST API of one, the time until the other refuses the old token (polled
    back to back over keep-alive), `trials` times."""
    from apiauth.config import Settings
    from apiauth.domain import members, sites
    from apiauth.domain.broker import open_broker
    from apiauth.errors import NotFound

    broker = open_broker(Settings(data_dir=dataset.data_dir, database_url=dataset.database_url))
    try:
        email = "bench-reach@example.com"
        try:
            member = members.get_member(broker, email)
        except NotFound:
            member = members.create_member(broker, email, None, team_name="bench")
        personal = members.create_personal_token(broker, member, "benchmark 11")
        site = f"reach-{secrets.token_hex(4)}"
        sites.create_site(broker, member, site)
        token = sites.enable_api_auth(broker, member, site)
    finally:
        broker.close()
    reach: list[float] = []
    # Each trial ends with a refused token: the limit on wrong tokens per address (60 a
    # minute) would answer 429 from the 61st on.
    lifted = {"APIAUTH_RATE_LIMIT_BAD_TOKENS": "0"}
    with (
        serve(dataset, label="-a", env=lifted) as first,
        serve(dataset, label="-b", env=lifted) as second,
    ):
        rotate = f"{first.url}/api/v1/sites/{site}/api-auth/rotate"
        read = second.url + "/api/v1/secrets"
        with httpx.Client(timeout=10) as http:
            for _ in range(trials):
                if http.get(read, headers={"Authorization": f"Bearer {token}"}).status_code != 200:
                    raise RuntimeError("benchmark 11: the new token does not read")
                answer = http.post(rotate, headers={"Authorization": f"Bearer {personal}"})
                answer.raise_for_status()
                rotated = time.perf_counter()
                while True:
                    status = http.get(
                        read, headers={"Authorization": f"Bearer {token}"}
                    ).status_code
                    if status == 401:
                        reach.append((time.perf_counter() - rotated) * 1000)
                        break
                    if time.perf_counter() - rotated > 5:
                        raise RuntimeError("benchmark 11: the old token outlived 5 s")
                token = answer.json()["token"]
    name = "11. revocation reach (PostgreSQL)"
    median, worst = statistics.median(reach), max(reach)
    report.add(
        name,
        f"rotated → refused elsewhere, median of {trials}",
        median,
        "ms",
        "≤ 100 ms",
        median <= 100,
    )
    report.add(name, f"the same, max of {trials}", worst, "ms", "≤ 250 ms", worst <= 250)


def idle_and_startup(report: Report, idle_seconds: int) -> None:
    """Benchmarks 5 and 6 on the 100,000-connection dataset."""
    dataset = read_dataset(100_000)
    starts = []
    for _ in range(3):
        with serve(dataset) as server:
            starts.append(server.started_in)
    start = statistics.median(starts)
    with serve(dataset) as server:
        time.sleep(5)
        before = cpu_seconds(server.proc.pid)
        began = time.perf_counter()
        time.sleep(idle_seconds)
        used = cpu_seconds(server.proc.pid) - before
        elapsed = time.perf_counter() - began
        rss = memory_mb(server.proc.pid, "VmRSS")
    cpu = 100 * used / elapsed
    name = f"5. idle ({dataset.connections:,} connections)"
    report.add(name, f"CPU over {idle_seconds} s idle (% of one core)", cpu, "%", "≤ 1 %", cpu <= 1)
    report.add(name, "RSS", rss, "MB")
    report.add(
        f"6. start-up ({dataset.connections:,} connections)",
        "serve → /readyz OK (median of 3)",
        start,
        "s",
        "≤ 2 s",
        start <= 2,
    )


# --------------------------------------------------------------------------- output


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024 / 1024:.0f} GB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def markdown(report: Report, when: datetime, took: float) -> str:
    lines = [
        f"Machine: {machine()}. Date: {when:%Y-%m-%d %H:%M} UTC. "
        f"`make bench` took {took / 60:.1f} min.",
        "",
        "| benchmark | metric | result | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in report.rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.benchmark} | {row.metric} | {row.shown()} | {row.target} | {met} |")
    if report.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in report.notes)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        help="comma-separated: read,pg,growth,cache,refresher,idle,metrics "
        "and (issue 19) cold,churn,workers,reach,scaleout",
    )
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration (default 20)")
    parser.add_argument("--refresh-seconds", type=int, default=60)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--refresh-connections", type=int, default=100_000)
    # Scaled down from the 100,000 so that both runs fit in a few minutes: each
    # run needs only the connections it refreshes (about 1,000 a second) due.
    parser.add_argument("--scale-out-connections", type=int, default=50_000)
    parser.add_argument("--scale-out-seconds", type=int, default=20)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    only = set(args.only.split(",")) if args.only else None
    wanted = lambda step: only is None or step in only  # noqa: E731
    BENCH_DIR.mkdir(exist_ok=True)
    when = datetime.now(UTC)
    began = time.perf_counter()
    report = Report()
    base = read_dataset(1)
    if wanted("read"):
        read_path(report, base, "SQLite", args.seconds)
    if wanted("growth"):
        growth(report, args.seconds, [1, 10_000, 100_000])
    if wanted("cache"):
        client_cache(report, base)
    if wanted("pg"):
        read_path(report, read_dataset(1, database="postgresql"), "PostgreSQL", args.seconds)
    if wanted("refresher"):
        refresher(report, args.refresh_connections, args.refresh_seconds)
    if wanted("idle"):
        idle_and_startup(report, args.idle_seconds)
    if wanted("metrics"):
        asgi_read_cost(report, base)
        observability(report, base, args.seconds)
    postgres = read_dataset(1, database="postgresql")
    if wanted("cold"):
        cold_read(report, base, "SQLite", args.seconds)
        cold_read(report, postgres, "PostgreSQL", args.seconds)
    if wanted("churn"):
        churn(report, postgres, max(5, args.seconds // 2))
    if wanted("workers"):
        workers(report, postgres, args.seconds)
    if wanted("reach"):
        revocation_reach(report, postgres)
    if wanted("scaleout"):
        for processes in (1, 2):
            refresher(
                report,
                args.scale_out_connections,
                args.scale_out_seconds,
                processes=processes,
                database="postgresql",
                name="12. refresher scale-out (PostgreSQL)",
            )
    took = time.perf_counter() - began
    table = markdown(report, when, took)
    args.output.write_text(table)
    raw = BENCH_DIR / f"results-{when:%Y%m%dT%H%M%S}.json"
    raw.write_text(json.dumps([row.__dict__ for row in report.rows] + [report.notes], indent=1))
    print()
    print(table)


if __name__ == "__main__":
    main()
