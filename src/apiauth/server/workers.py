"""Background work that runs inside `apiauth serve`: each worker is a thread that sleeps
until it has something to do, started and stopped with the application."""

from __future__ import annotations

from typing import Protocol

from apiauth.domain.broker import Broker


class Worker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None:
        """Ask the worker to finish and wait (briefly) until it has."""


def background_workers(broker: Broker) -> list[Worker]:
    return []
