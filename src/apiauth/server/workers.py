"""Background work that runs inside `apiauth serve`: each worker is a thread that sleeps
until it has something to do, started and stopped with the application."""

from __future__ import annotations

from typing import Protocol

from apiauth.domain.broker import Broker
from apiauth.domain.delivery_worker import DeliveryWorker
from apiauth.domain.refresher import Refresher


class Worker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None:
        """Ask the worker to finish and wait (briefly) until it has."""


def background_workers(broker: Broker, *, refresher: bool = True) -> list[Worker]:
    workers: list[Worker] = [DeliveryWorker(broker)]
    if refresher:
        workers.append(Refresher(broker))
    return workers
