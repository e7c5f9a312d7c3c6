"""`/metrics` under `apiauth serve --workers N`: every scrape answers for all the workers.

A scrape reaches whichever worker accepts it; alone, each would answer for itself, and a
counter would jump between processes from one scrape to the next. So each worker writes its
registry, in the Prometheus text format, to a file of its own in a directory the parent made
(`worker-<index>.prom`, replaced atomically every `SNAPSHOT_SECONDS`), and the worker that is
scraped answers with its own registry, read now, and the other workers' latest files, every
sample labelled `worker="<index>"`: sum by worker in PromQL (`sum without (worker) (...)`).
The database gauges (`apiauth_connections`, the outbox) are the same in every worker: take
their `max`. A file older than `STALE_SECONDS` (a worker that died and was not started again)
is left out. Only the text format is offered here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from apiauth.domain.background import BackgroundThread
from apiauth.metrics import Metrics

__all__ = ["WorkerMetrics"]

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 1.0
STALE_SECONDS = 30.0
LABEL = "worker"


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class WorkerMetrics(BackgroundThread):
    """One worker's part: its snapshot file, written by a thread, and the merged answer."""

    thread_name = "worker-metrics"

    def __init__(self, metrics: Metrics, directory: Path, index: int) -> None:
        super().__init__()
        self.metrics = metrics
        self.directory = directory
        self.index = index

    @property
    def path(self) -> Path:
        return self.directory / f"worker-{self.index}.prom"

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.write_snapshot()
            except OSError as exc:
                log.warning("metrics: could not write this worker's snapshot (%s)", exc)
            self.stopping.wait(SNAPSHOT_SECONDS)

    def write_snapshot(self) -> None:
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(generate_latest(self.metrics.registry))
        os.replace(partial, self.path)

    def _texts(self) -> Iterator[tuple[int, str]]:
        """(worker index, exposition text): this worker's now, the others' latest."""
        yield self.index, generate_latest(self.metrics.registry).decode()
        now = time.time()
        for path in sorted(self.directory.glob("worker-*.prom")):
            try:
                index = int(path.stem.removeprefix("worker-"))
                if index == self.index or now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                yield index, path.read_text()
            except (OSError, ValueError):
                continue  # a worker replaced or removed its file meanwhile

    def exposition(self) -> tuple[bytes, str]:
        merged: dict[str, Metric] = {}
        for index, text in self._texts():
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                if into.type != family.type:
                    continue  # another version's worker: keep the first one's families
                worker = str(index)
                into.samples.extend(
                    Sample(s.name, {**s.labels, LABEL: worker}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merged.values()))
        return generate_latest(registry), CONTENT_TYPE_LATEST
