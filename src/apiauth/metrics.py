"""One process's Prometheus metrics: what it counts as it works, in a registry of its own.

Why a registry per `Metrics` (and one `Metrics` per broker) instead of prometheus_client's
global `REGISTRY`: two brokers in one process (tests, an embedding application) must not add
up each other's requests and refreshes, nor collide registering the same names.

Three kinds of numbers, each recorded where it is cheapest:

- HTTP requests (`HttpRequests`): every request passes the recorder, the secrets read path at
  tens of thousands a second. prometheus_client's children take a lock per increment (three
  per histogram observation); the requests are all recorded on the event loop's one thread,
  so plain integers in dictionaries do, turned into metric families only when scraped.
- Work done off the event loop (refreshes, deliveries, KMS calls): prometheus_client's own
  counters and histograms, thread-safe, a few per second.
- State (connections by status, the outbox, the audit buffer, caches, the database pool):
  read when Prometheus scrapes, by collectors registered here (`register`), never kept up
  to date on the way.

Names follow Prometheus's conventions: `apiauth_` prefix, base units (`_seconds`),
`_total` on counters (prometheus_client adds it). The README's "Operating" section lists them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import accumulate
from typing import Literal, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HttpRequests", "Metrics", "RefreshOutcome", "RouteFamily", "route_family"]

RouteFamily = Literal[
    "secrets", "proxy", "management", "oauth", "dashboard", "health", "metrics", "emulator"
]

# Seconds. The remembered secrets read takes well under a millisecond of server time, a
# proxied call or a provider's token exchange whole seconds: both ends are resolved.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REFRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# How late a refresh began after its connection fell due: the refresher's backlog.
LAG_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)

_EXACT_PATHS: dict[str, RouteFamily] = {
    "/api/v1/secrets": "secrets",
    "/api/v1/function-tokens": "secrets",
    "/healthz": "health",
    "/readyz": "health",
    "/metrics": "metrics",
}
_PREFIXES: tuple[tuple[str, RouteFamily], ...] = (
    ("/api/v1/proxy/", "proxy"),
    ("/api/", "management"),
    ("/oauth/", "oauth"),
    ("/connect/", "oauth"),
    ("/_emulator", "emulator"),
)


def route_family(path: str) -> RouteFamily:
    """The family a request path belongs to: a closed set, so that a path an attacker makes
    up cannot add a time series."""
    family = _EXACT_PATHS.get(path)
    if family is not None:
        return family
    for prefix, prefixed in _PREFIXES:
        if path.startswith(prefix):
            return prefixed
    return "dashboard"


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`0.5`, `1.0`, `10.0`)."""
    return repr(float(bound))


class _Route:
    """One route family's numbers: answers by status class (index: status // 100), answers
    by duration bucket (not cumulative; the last is +Inf), the sum of durations."""

    __slots__ = ("buckets", "by_class", "seconds")

    def __init__(self, buckets: int) -> None:
        self.by_class = [0] * 10
        self.buckets = [0] * buckets
        self.seconds = 0.0


class HttpRequests(Collector):
    """Requests by route family and status class, and their durations by route family.

    `observe` must be called from one thread only (the event loop's); `collect` may run in
    any other, reading a snapshot."""

    def __init__(self, bounds: Sequence[float] = HTTP_BUCKETS) -> None:
        self._bounds = tuple(bounds)
        self._routes: dict[str, _Route] = {}
        # The most frequent paths straight to their family's numbers (the secrets read).
        self._exact = {path: self._route(family) for path, family in _EXACT_PATHS.items()}

    def _route(self, family: str) -> _Route:
        numbers = self._routes.get(family)
        if numbers is None:
            numbers = self._routes[family] = _Route(len(self._bounds) + 1)
        return numbers

    def observe(self, path: str, status: int, seconds: float) -> None:
        """One answer to a request for `path` (its family: `route_family`)."""
        numbers = self._exact.get(path)
        if numbers is None:
            numbers = self._route(route_family(path))
        numbers.by_class[(status // 100) % 10] += 1
        numbers.buckets[bisect_left(self._bounds, seconds)] += 1
        numbers.seconds += seconds

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "apiauth_http_requests",
            "HTTP requests answered, by route family and status class.",
            labels=["route", "status_class"],
        )
        durations = HistogramMetricFamily(
            "apiauth_http_request_duration_seconds",
            "Time from a request's arrival at apiauth to the end of its answer.",
            labels=["route"],
        )
        bounds = [_go_float(bound) for bound in self._bounds] + ["+Inf"]
        for route, numbers in sorted(self._routes.items()):
            for digit, count in enumerate(list(numbers.by_class)):
                if count:
                    requests.add_metric([route, f"{digit}xx"], count)
            cumulative = list(accumulate(list(numbers.buckets)))
            durations.add_metric(
                [route], list(zip(bounds, cumulative, strict=True)), numbers.seconds
            )
        yield requests
        yield durations


# What a refresh outcome (`refresh.Outcome.kind`) is called in `apiauth_refreshes_total`.
_REFRESH_OUTCOMES = {
    "fresh": "ok",
    "checked": "checked",
    "refused": "invalid_grant",
    "failed": "failed",
    "untried": "untried",
}


class _Leased(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def refresh_due_at(self) -> datetime | None: ...


class RefreshOutcome(Protocol):
    """What `refreshes_stored` reads of a refresh outcome (`domain.refresh.Outcome`)."""

    @property
    def leased(self) -> _Leased: ...

    @property
    def kind(self) -> str: ...

    @property
    def at(self) -> datetime: ...


class Metrics:
    """The registry of one broker and the instruments its parts record into.

    `enabled` is False when no one can scrape (neither `APIAUTH_METRICS_TOKEN` nor
    `APIAUTH_METRICS_PORT` is set): the HTTP recorder then costs requests nothing."""

    def __init__(self, *, enabled: bool = True, version: str = "") -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Info("apiauth_build", "The apiauth version of this process.", registry=registry).info(
            {"version": version}
        )
        self.http = HttpRequests()
        registry.register(self.http)
        self.refreshes = Counter(
            "apiauth_refreshes",
            "Refresh attempts stored, by provider and outcome (ok, checked: a token without "
            "expiry found still good, failed: retried with backoff, invalid_grant: needs "
            "re-authorization, untried: lease given back).",
            ["provider", "outcome"],
            registry=registry,
        )
        self.refresh_duration = Histogram(
            "apiauth_refresh_duration_seconds",
            "Time a provider's token endpoint took to answer a refresh.",
            ["provider"],
            buckets=REFRESH_BUCKETS,
            registry=registry,
        )
        self.refresh_lag = Histogram(
            "apiauth_refresh_lag_seconds",
            "How long after its connection fell due (refresh_due_at) a refresh began.",
            ["provider"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "apiauth_deliveries",
            "Deploy hook and webhook delivery attempts, by kind and outcome (delivered, "
            "retry: failed, tried again later, gave_up: failed for the last time).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.deliveries_set_aside = Counter(
            "apiauth_deliveries_set_aside",
            "Deploy hook and webhook deliveries given up at once because their row could not "
            "be read, sent or recorded (not because the receiver failed), by kind.",
            ["kind"],
            registry=registry,
        )
        self.housekeeping = Counter(
            "apiauth_housekeeping_pruned",
            "Rows housekeeping deleted because they outlived their use, by what they were "
            "(function_tokens, auth_states, connect_sessions, sessions, deliveries).",
            ["what"],
            registry=registry,
        )
        self.kms_requests = Counter(
            "apiauth_kms_requests",
            "Calls to the key management service, by operation and outcome (ok, unavailable, "
            "refused).",
            ["operation", "outcome"],
            registry=registry,
        )

    def register(self, collector: Collector) -> None:
        """Add a collector whose numbers are read at scrape time."""
        self.registry.register(collector)

    def refreshes_stored(self, outcomes: Iterable[RefreshOutcome]) -> None:
        """Count stored refresh outcomes, and how late each attempt began."""
        for outcome in outcomes:
            provider = outcome.leased.provider
            self.refreshes.labels(provider, _REFRESH_OUTCOMES.get(outcome.kind, outcome.kind)).inc()
            due = outcome.leased.refresh_due_at
            if due is not None and due <= outcome.at and outcome.kind != "untried":
                self.refresh_lag.labels(provider).observe((outcome.at - due).total_seconds())

    @contextmanager
    def timing_refresh(self, provider: str) -> Iterator[None]:
        """Time a call to a provider's token endpoint, whatever it answers."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.refresh_duration.labels(provider).observe(time.perf_counter() - started)

    def delivery(self, kind: str, outcome: str) -> None:
        self.deliveries.labels(kind, outcome).inc()

    def delivery_set_aside(self, kind: str) -> None:
        self.deliveries_set_aside.labels(kind).inc()

    def housekeeping_pruned(self, what: str, count: int) -> None:
        self.housekeeping.labels(what).inc(count)

    def kms_call(self, operation: str, outcome: str) -> None:
        self.kms_requests.labels(operation, outcome).inc()
