"""Refresh storm (issue 12): how often one connection is refreshed per access-token lifetime,
and how many secrets reads per second its readers get, for tokens living 5 s to 8 h.

    .venv/bin/python benchmarks/refresh_storm.py [--window 15] [--readers 4] [--json FILE]

Two parts, both on loopback only and bounded in time:

- Real time (lifetimes 5, 60, 300 and 3,600 s): `serve --demo` in a thread of this process
  (`tests.servers.running_server`) with the emulator's access-token lifetime set
  (`APIAUTH_EMULATOR_TOKEN_TTL`), default settings otherwise (a 300 s refresh margin), Box
  connected through the emulator's consent page, the refresher running. One window without
  readers, then one with `--readers` threads reading `/api/v1/secrets` as fast as they can.
  Refreshes are counted at the emulator (`/_admin/stats`). The 3,600 s run, where nothing is
  refreshed within the window, is the reads/s baseline without refreshes.
- Injected clock (5 s to 8 h): the in-process app (`tests.in_process`) whose clock the
  benchmark moves in steps of a twentieth of a lifetime over several lifetimes; at each step
  the refresher's round (lease, call, store) runs until nothing is due, at most `CAP` rounds
  (a storm shows as the cap), optionally with a read of `/api/v1/secrets` after each round.

Prints a Markdown table; `--json` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.databases import fresh_sqlite_database  # noqa: E402
from tests.in_process import Clock, in_process_server  # noqa: E402
from tests.live_site import Site  # noqa: E402
from tests.servers import running_server  # noqa: E402

from apiauth.domain import refresh  # noqa: E402

PROVIDER = "box"
REAL_TIME_LIFETIMES = (5, 60, 300, 3600)
CLOCK_LIFETIMES = (5, 60, 300, 3600, 8 * 3600)
STEPS_PER_LIFETIME = 20
CLOCK_LIFETIMES_RUN = 3
CAP = 20


@dataclass
class RealTime:
    lifetime_s: int
    readers: int
    window_s: float
    refreshes: int
    reads: int
    reads_not_logged_in: int

    @property
    def per_lifetime(self) -> float:
        return self.refreshes * self.lifetime_s / self.window_s

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.window_s


@dataclass
class Injected:
    lifetime_s: int
    reads: bool
    lifetimes: int
    refreshes: int
    capped_steps: int

    @property
    def per_lifetime(self) -> float:
        return self.refreshes / self.lifetimes


def _refreshes(site: Site) -> int:
    return site.stats(PROVIDER)["refreshes"]


def _reader(site: Site, stop: threading.Event, counts: list[int]) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            answer = http.get(
                f"{site.server.url}/api/v1/secrets",
                headers={"Authorization": f"Bearer {site.token}"},
            )
            counts[0] += 1
            if answer.status_code != 200 or not answer.json()[PROVIDER]["is_logged_in"]:
                counts[1] += 1


def real_time(lifetime: int, window: float, readers: int) -> list[RealTime]:
    results = []
    with tempfile.TemporaryDirectory(prefix="apiauth-storm-") as tmp:
        workdir = Path(tmp)
        database_url = fresh_sqlite_database(workdir)
        with (
            running_server(
                workdir,
                database_url,
                emulator_token_ttl=lifetime,
                # the readers hammer one token on purpose: no per-token rate limit
                rate_limit_per_token=1_000_000,
                rate_limit_burst=1_000_000,
            ) as server,
            httpx.Client(timeout=30) as http,
        ):
            site = Site(server, http)
            site.connect(PROVIDER)
            for threads in (0, readers):
                before = _refreshes(site)
                stop = threading.Event()
                counts = [[0, 0] for _ in range(threads)]
                workers = [
                    threading.Thread(target=_reader, args=(site, stop, counts[i]), daemon=True)
                    for i in range(threads)
                ]
                for worker in workers:
                    worker.start()
                time.sleep(window)
                stop.set()
                for worker in workers:
                    worker.join(timeout=30)
                results.append(
                    RealTime(
                        lifetime,
                        threads,
                        window,
                        _refreshes(site) - before,
                        sum(c[0] for c in counts),
                        sum(c[1] for c in counts),
                    )
                )
    return results


def injected(lifetime: int, reads: bool) -> Injected:
    with tempfile.TemporaryDirectory(prefix="apiauth-storm-") as tmp:
        clock = Clock()
        with in_process_server(Path(tmp), clock=clock, emulator_token_ttl=lifetime) as server:
            site = Site(server, server.client)  # type: ignore[arg-type]
            site.connect(PROVIDER)
            before = _refreshes(site)
            capped = 0
            for _ in range(STEPS_PER_LIFETIME * CLOCK_LIFETIMES_RUN):
                clock.advance(lifetime / STEPS_PER_LIFETIME)
                for _round in range(CAP):
                    batch = refresh.lease_due_connections(server.broker, 100)
                    outcomes = [
                        refresh.attempt_refresh(server.broker, leased, batch.clients)
                        for leased in batch.leased
                    ]
                    refresh.store_outcomes(server.broker, outcomes, batch.sites)
                    if reads:
                        site.read(PROVIDER)
                    if not batch.leased:
                        break
                else:
                    capped += 1
            return Injected(lifetime, reads, CLOCK_LIFETIMES_RUN, _refreshes(site) - before, capped)


def table(real: list[RealTime], clocked: list[Injected]) -> str:
    lines = [
        "| lifetime | readers | refreshes in window | refreshes per lifetime | reads/s |",
        "|---|---|---|---|---|",
    ]
    for row in real:
        lines.append(
            f"| {row.lifetime_s} s | {row.readers} | {row.refreshes} in {row.window_s:.0f} s "
            f"| {row.per_lifetime:,.2f} | "
            + (
                f"{row.reads_per_s:,.0f} ({row.reads_not_logged_in} not logged in)"
                if row.readers
                else "-"
            )
            + " |"
        )
    lines += [
        "",
        "| lifetime (injected clock) | reads | refreshes per lifetime | steps at the cap |",
        "|---|---|---|---|",
    ]
    for item in clocked:
        shown = f"{item.per_lifetime:,.2f}"
        if item.capped_steps:
            shown = f"≥ {shown} (capped)"
        lifetime = (
            f"{item.lifetime_s // 3600} h" if item.lifetime_s >= 3600 else f"{item.lifetime_s} s"
        )
        lines.append(
            f"| {lifetime} | {'yes' if item.reads else 'no'} | {shown} | "
            f"{item.capped_steps}/{STEPS_PER_LIFETIME * CLOCK_LIFETIMES_RUN} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds per real-time window")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--skip-real-time", action="store_true")
    parser.add_argument("--skip-injected", action="store_true")
    args = parser.parse_args()
    real: list[RealTime] = []
    if not args.skip_real_time:
        for lifetime in REAL_TIME_LIFETIMES:
            real += real_time(lifetime, args.window, args.readers)
            print(f"real time, {lifetime} s: done", file=sys.stderr)
    clocked = []
    for lifetime in () if args.skip_injected else CLOCK_LIFETIMES:
        for reads in (False, True):
            clocked.append(injected(lifetime, reads))
        print(f"injected clock, {lifetime} s: done", file=sys.stderr)
    print(table(real, clocked))
    if args.json:
        data: dict[str, Any] = {
            "real_time": [
                asdict(r) | {"per_lifetime": r.per_lifetime, "reads_per_s": r.reads_per_s}
                for r in real
            ],
            "injected": [asdict(c) | {"per_lifetime": c.per_lifetime} for c in clocked],
        }
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
