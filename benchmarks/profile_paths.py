"""CPU per request of issue 19's paths, in this process, and where it goes (issue 19).

    .venv/bin/python benchmarks/profile_paths.py cold --db postgresql --requests 6000
    .venv/bin/python benchmarks/profile_paths.py mint --db postgresql --profile pyspy
    .venv/bin/python benchmarks/profile_paths.py refresh --db postgresql --requests 2000

A busy machine moves throughput by half from one minute to the next; the CPU time a request
costs moves much less. Each load here calls the ASGI application itself (no sockets, no
`wrk`), 64 requests at a time on one event loop, on the benchmarks' datasets
(`dataset.py`), and reports this process's CPU time (every thread, `time.process_time`)
divided by the requests: `healthz` is the same application's floor. What it leaves out is
uvicorn's HTTP parsing, the same for every request (benchmark 8 measures that in a real
server, from /proc).

`--profile pyinstrument` profiles the event loop's thread; `--profile pyspy` samples every
thread (the worker threads that run the queries too) with py-spy (`pip install py-spy
pyinstrument` into the .venv) and prints the functions with the most samples, inclusive
and by themselves; `--out FILE` writes that text (benchmarks/profiles/).

`refresh` leases the refresh dataset's connections (`lease_due_connections`), refreshes them
against the emulator in its own process (`attempt_refresh`, 8 at a time as the refresher
does) and stores the outcomes (`store_outcomes`), batch after batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import Dataset, function_tokens, read_dataset, refresh_dataset

CONCURRENCY = 64


def _scope(method: str, path: str, token: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if method == "POST":
        headers.append((b"content-type", b"application/json"))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


class Client:
    """Requests to an ASGI application in this process."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: Counter[int] = Counter()

    async def call(
        self, method: str, path: str, token: str | None, body: bytes = b""
    ) -> tuple[int, bytes]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(_scope(method, path, token), receive, send)
        self.statuses[status] += 1
        return status, b"".join(chunks)


async def _spread(count: int, one: Callable[[int], Any]) -> None:
    """`one(0)` … `one(count - 1)`, `CONCURRENCY` at a time."""
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < count:
            index = position
            position += 1
            await one(index)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _measure(label: str, count: int, run: Callable[[], None]) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {
        "requests": count,
        "cpu_us_per_request": 1e6 * cpu / count,
        "wall_per_second": count / wall,
    }
    print(
        f"{label}: {count} in {wall:.2f} s, CPU {1e6 * cpu / count:,.0f} µs per request, "
        f"{count / wall:,.0f} /s",
        flush=True,
    )
    return result


def _app(dataset: Dataset, workers: bool = True, **settings: Any) -> tuple[Any, Any]:
    from apiauth.config import Settings
    from apiauth.domain.broker import open_broker
    from apiauth.server.app import create_app

    broker = open_broker(
        Settings(
            data_dir=dataset.data_dir,
            database_url=dataset.database_url,
            rate_limit_per_token=1_000_000,
            **settings,
        )
    )
    # The background workers run (the refresher aside): the delivery worker writes the
    # audit events of the reads, part of what a read costs.
    return broker, create_app(broker, workers=workers, refresher=False)


def http_paths(args: argparse.Namespace, profile: Callable[[Callable[[], None]], None]) -> None:
    dataset = read_dataset(1, database=args.db)
    count = args.requests
    broker, app = _app(dataset, workers=not args.no_workers)
    client = Client(app)
    loop = asyncio.new_event_loop()
    results: dict[str, Any] = {}
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    try:
        loop.run_until_complete(client.call("GET", "/api/v1/secrets", dataset.site_token))

        def healthz() -> None:
            loop.run_until_complete(_spread(count, lambda _i: client.call("GET", "/healthz", None)))

        results["healthz"] = _measure("healthz", count, healthz)
        if args.path == "cold":
            tokens = function_tokens(dataset, count * 2)
            warm = tokens[count:]
            loop.run_until_complete(
                _spread(len(warm), lambda i: client.call("GET", "/api/v1/secrets", warm[i]))
            )

            def cold() -> None:
                loop.run_until_complete(
                    _spread(count, lambda i: client.call("GET", "/api/v1/secrets", tokens[i]))
                )

            results["cold"] = _measure("cold read", count, lambda: profile(cold))
        elif args.path == "warm":

            def warm_read() -> None:
                loop.run_until_complete(
                    _spread(
                        count, lambda _i: client.call("GET", "/api/v1/secrets", dataset.site_token)
                    )
                )

            results["warm"] = _measure("warm read", count, lambda: profile(warm_read))
        elif args.path in ("mint", "churn"):

            async def mint(_index: int) -> None:
                status, body = await client.call(
                    "POST", "/api/v1/function-tokens", dataset.site_token, b"{}"
                )
                if args.path == "churn" and status == 201:
                    await client.call("GET", "/api/v1/secrets", json.loads(body)["token"])

            loop.run_until_complete(_spread(200, mint))

            def mints() -> None:
                loop.run_until_complete(_spread(count, mint))

            label = "mint" if args.path == "mint" else "mint + first read"
            results[args.path] = _measure(label, count, lambda: profile(mints))
    finally:
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()
        broker.close()
    print("statuses:", dict(client.statuses))
    results["statuses"] = dict(client.statuses)
    if args.json:
        print(json.dumps(results))


def refresh_path(args: argparse.Namespace, profile: Callable[[Callable[[], None]], None]) -> None:
    import httpx

    from apiauth.config import Settings
    from apiauth.domain.broker import open_broker
    from apiauth.domain.refresh import attempt_refresh, lease_due_connections, store_outcomes

    count = args.requests
    data = refresh_dataset(count, expire_after=600, window=240, database=args.db)
    port = 18000 + os.getpid() % 1000
    emulator_url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "apiauth.emulator", "--port", str(port), "--token-ttl", "3600"]
    emulator = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        for _ in range(300):
            try:
                httpx.get(emulator_url + "/_admin/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        for provider, tokens in data.refresh_tokens.items():
            scopes = ["user-read-email"] if provider == "spotify" else ["root_readwrite"]
            httpx.post(
                emulator_url + "/_admin/grants",
                json={"provider": provider, "scopes": scopes, "refresh_tokens": tokens},
                timeout=60,
            ).raise_for_status()
        dataset = data.dataset
        broker = open_broker(
            Settings(
                data_dir=dataset.data_dir,
                database_url=dataset.database_url,
                emulator_url=emulator_url,
            )
        )
        done: Counter[str] = Counter()
        pool = ThreadPoolExecutor(8)
        try:

            phases: Counter[str] = Counter()

            def refresh_all() -> None:
                while True:
                    began = time.perf_counter()
                    batch = lease_due_connections(broker, 100)
                    leased = time.perf_counter()
                    phases["lease"] += leased - began
                    if not batch.leased:
                        return
                    if args.sequential:  # one thread: what pyinstrument sees
                        outcomes = [
                            attempt_refresh(broker, leased, batch.clients)
                            for leased in batch.leased
                        ]
                    else:
                        outcomes = list(
                            pool.map(
                                attempt_refresh,
                                repeat(broker),
                                batch.leased,
                                repeat(batch.clients),
                            )
                        )
                    called = time.perf_counter()
                    phases["provider calls"] += called - leased
                    for outcome in store_outcomes(broker, outcomes, batch.sites):
                        done[outcome.kind] += 1
                    phases["store"] += time.perf_counter() - called

            _measure("refresh", count, lambda: profile(refresh_all))
        finally:
            pool.shutdown()
            broker.close()
        print("outcomes:", dict(done))
        print("seconds by phase:", {name: round(value, 2) for name, value in phases.items()})
    finally:
        emulator.terminate()
        emulator.wait()


def _pyspy_summary(raw: Path, top: int) -> str:
    """The functions with the most samples in py-spy's collapsed stacks (the thread holding
    the GIL, whichever it is): inclusive (on the stack) and by themselves (at its top)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        # By function, whatever the line: "name (path:line)" -> "name (path)".
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples of the thread holding the GIL (py-spy --gil)", "", "inclusive:"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:5.1f} %  {frame}")
    lines += ["", "by itself:"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:5.1f} %  {frame}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("path", choices=["cold", "warm", "mint", "churn", "refresh"])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", choices=["none", "pyinstrument", "pyspy"], default="none")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--sequential", action="store_true", help="refresh: one thread")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-workers", action="store_true", help="without the background workers (audit writes)"
    )
    args = parser.parse_args()

    command = f"profile_paths.py {' '.join(sys.argv[1:])}"

    def profile(run: Callable[[], None]) -> None:
        if args.profile == "pyspy":
            pyspy(run)
            return
        if args.profile != "pyinstrument":
            run()
            return
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        run()
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        heading = f"pyinstrument, the main thread: {command}\n\n"
        lines = text.splitlines()
        shown = "\n".join(lines[: args.top * 3])
        print(heading + shown)
        if args.out:
            args.out.write_text(heading + shown + "\n")

    def pyspy(run: Callable[[], None]) -> None:
        """py-spy attached to this process for the measured part only."""
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        spy = str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--gil", "-r", "250", "-f", "raw", "-o", str(raw)]
        sampler = subprocess.Popen(  # noqa: S603
            [*argv, "--pid", str(os.getpid())], stdout=subprocess.DEVNULL
        )
        time.sleep(1.5)  # attached
        try:
            run()
        finally:
            sampler.send_signal(signal.SIGINT)
            sampler.wait()
        text = f"py-spy: {command}\n\n" + _pyspy_summary(raw, args.top)
        raw.unlink()
        print(text)
        if args.out:
            args.out.write_text(text)

    if args.path == "refresh":
        refresh_path(args, profile)
    else:
        http_paths(args, profile)


if __name__ == "__main__":
    main()
