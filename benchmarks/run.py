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

from dataset import BENCH_DIR, ROOT, Dataset, read_dataset, refresh_dataset

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
    dataset: Dataset, *extra_args: str, env: dict[str, str] | None = None, cpu: int | None = None
) -> Iterator[Server]:
    port = free_port()
    argv = [APIAUTH, "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    argv = pinned(argv, cpu)
    merged = _env(
        {**dataset.env(), "APIAUTH_PUBLIC_URL": f"http://127.0.0.1:{port}", **(env or {})}
    )
    with process(argv, merged, f"serve-{dataset.name}") as proc:
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


def wrk(url: str, token: str | None, seconds: int, cpu: int | None = None) -> Load:
    """`wrk` with 64 keep-alive connections; the token goes in a Lua script, never argv.
    `cpu`: run on that CPU only (one thread)."""
    script = BENCH_DIR / "wrk-headers.lua"
    header = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text(header)
    script.chmod(0o600)
    threads = "-t2" if cpu is None else "-t1"
    argv = ["wrk", threads, f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script)]
    argv.append(url)
    argv = pinned(argv, cpu)
    out = subprocess.run(  # noqa: S603 (wrk, with our own arguments)
        argv, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    text = out.stdout
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


def refresher(report: Report, connections: int, seconds: int) -> None:
    """Benchmark 4: one `apiauth refresher` process against an emulator process, with a
    server that reads (and checks) random sites' secrets meanwhile."""
    data = refresh_dataset(connections, expire_after=seconds + 60, window=240)
    dataset = data.dataset
    report.notes.append(
        f"The refresh dataset ({connections:,} connections, all due, access tokens expiring "
        f"{seconds + 60} to {seconds + 300} s after generation) is made anew each run: "
        f"{dataset.generated_seconds:.0f} s."
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
            with process(argv, _env({**dataset.env(), **env}), "refresher") as worker:
                sampler = threading.Thread(target=sample)
                sampler.start()
                warmup = 5.0
                time.sleep(warmup)
                start_count, start_cpu = refreshed(), cpu_seconds(worker.pid)
                emulator_cpu = cpu_seconds(emulator.pid)
                started = time.perf_counter()
                time.sleep(seconds)
                end_count, end_cpu = refreshed(), cpu_seconds(worker.pid)
                emulator_cpu = cpu_seconds(emulator.pid) - emulator_cpu
                elapsed = time.perf_counter() - started
                peak = memory_mb(worker.pid, "VmHWM")
                stop.set()
                sampler.join()
                alive = worker.poll() is None
    rate = (end_count - start_count) / elapsed
    name = "4. refresher"
    report.add(name, f"refreshes/s (sustained, {seconds} s)", rate, "/s", "≥ 500 /s", rate >= 500)
    cpu = 100 * (end_cpu - start_cpu) / elapsed
    report.add(name, "refresher CPU (% of one core)", cpu, "%")
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
            f"refresher: {served['failed']} sampled reads failed; process alive: {alive}."
        )


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
    parser.add_argument("--only", help="comma-separated: read,pg,growth,cache,refresher,idle")
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration (default 20)")
    parser.add_argument("--refresh-seconds", type=int, default=60)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--refresh-connections", type=int, default=100_000)
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
    took = time.perf_counter() - began
    table = markdown(report, when, took)
    args.output.write_text(table)
    raw = BENCH_DIR / f"results-{when:%Y%m%dT%H%M%S}.json"
    raw.write_text(json.dumps([row.__dict__ for row in report.rows] + [report.notes], indent=1))
    print()
    print(table)


if __name__ == "__main__":
    main()
