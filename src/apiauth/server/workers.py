"""Background work that runs inside `apiauth serve`: each worker is a thread that sleeps
until it has something to do, started and stopped with the application."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from apiauth.domain.broker import Broker
from apiauth.domain.cache_notices import CacheNoticeListener
from apiauth.domain.delivery_worker import DeliveryWorker
from apiauth.domain.housekeeping import Housekeeper
from apiauth.domain.provider_rechecker import ProviderRechecker
from apiauth.domain.refresher import Refresher
from apiauth.domain.replicas import Heartbeat


class Worker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None:
        """Ask the worker to finish and wait (briefly) until it has."""


def background_workers(
    broker: Broker,
    *,
    refresher: bool = True,
    replicas_seen: Callable[[int], None] | None = None,
) -> list[Worker]:
    """`replicas_seen`: told how many server processes are live after each heartbeat."""
    workers: list[Worker] = [
        # Revocations made by other processes, heard of at once (PostgreSQL).
        CacheNoticeListener(broker),
        DeliveryWorker(broker),
        # Expired tokens, flows, links, sessions and old deliveries, pruned in batches.
        Housekeeper(broker),
        Heartbeat(broker, role="serve", refresher=refresher, replicas_seen=replicas_seen),
    ]
    if refresher:
        workers.append(Refresher(broker))
        # Alongside refreshing: a refresh failure is one reason to look again.
        workers.append(ProviderRechecker(broker))
    return workers
