"""The server's processes: `apiauth serve` (open the broker, build the app, run uvicorn) and
`apiauth refresher` (the refresher alone, with its heartbeat and, when asked, its metrics
port), each with the logging and metrics of `logs` and `metrics`."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from sqlalchemy.engine import make_url

from apiauth.config import Settings
from apiauth.domain.broker import open_broker
from apiauth.domain.provider_rechecker import ProviderRechecker
from apiauth.domain.refresher import Refresher
from apiauth.domain.replicas import Heartbeat
from apiauth.domain.setup import issue_setup_token
from apiauth.errors import ConfigurationError
from apiauth.server.app import create_app
from apiauth.server.logs import configure_logging
from apiauth.server.metrics import metrics_port_of
from apiauth.server.worker_metrics import WorkerMetrics
from apiauth.server.workers import Worker

log = logging.getLogger("apiauth")


def check_workers(settings: Settings, workers: int) -> None:
    """`--workers N`: PostgreSQL only (an SQLite database is one process's), and not with
    `APIAUTH_METRICS_PORT` (each process would want the port)."""
    if workers < 1:
        raise ConfigurationError("--workers must be 1 or more")
    if workers == 1:
        return
    if make_url(settings.resolved_database_url).get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"--workers {workers} needs PostgreSQL: SQLite serves one process (set "
            "APIAUTH_DATABASE_URL=postgresql+psycopg://…, or serve with --workers 1)"
        )
    if settings.metrics_port is not None:
        raise ConfigurationError(
            f"--workers {workers} cannot share APIAUTH_METRICS_PORT between processes: "
            "unset it and scrape /metrics with APIAUTH_METRICS_TOKEN, or serve with --workers 1"
        )


def run_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    demo: bool,
    refresher: bool = True,
    workers: int = 1,
) -> None:
    """Serve in this process, or (`workers` > 1, PostgreSQL) in that many processes sharing
    the port: each is a replica of its own, with its refresher and delivery worker (safe
    side by side: they claim work with row locks) and its read memories, which hear of
    revocations from the others (`cache_notices`)."""
    check_workers(settings, workers)
    configure_logging(settings)
    broker = open_broker(settings, demo=demo)
    base = settings.public_url.rstrip("/")
    log.info("apiauth listening on http://%s:%d (public URL %s)", host, port, base)
    if workers > 1:
        log.info("apiauth serving with %d worker processes", workers)
    if demo:
        log.info("demo mode: every provider is emulated at %s/_emulator", base)
        log.info(
            "demo mode: add a provider by URL with `apiauth providers add %s/_emulator/_mcp` "
            "(an MCP server) or %s/_emulator/_oauth/oidc (an OpenID provider)",
            base,
            base,
        )
    setup_token = issue_setup_token(broker)
    if setup_token is not None:
        # Printed, not logged: the one-time link is for the person at this console only.
        print(f"Open {base}/setup?token={setup_token} to create the owner account", flush=True)
    if workers > 1:
        broker.close()  # each worker opens its own
        _serve_forked(settings, host=host, port=port, workers=workers, options=(demo, refresher))
        return
    app = create_app(broker, demo=demo, refresher=refresher)
    metrics_port = metrics_port_of(broker.runtime.metrics, settings)
    _freeze_startup_objects()
    try:
        if metrics_port is not None:
            metrics_port.start()
        # Logging as `configure_logging` set it up: uvicorn adds no handlers or levels.
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,
            log_level=None,
            access_log=settings.access_log,
            # Forwarded headers are believed only from APIAUTH_TRUSTED_PROXIES, by apiauth's
            # own rule (`server/client_address.py`): uvicorn's default would believe any
            # loopback peer's X-Forwarded-For.
            proxy_headers=False,
        )
    finally:
        if metrics_port is not None:
            metrics_port.stop()
        broker.close()


RESTART_SECONDS = 1.0


def _serve_forked(
    settings: Settings, *, host: str, port: int, workers: int, options: tuple[bool, bool]
) -> None:
    """`serve --workers N`: bind the port here, fork N workers that accept on it, and wait;
    SIGTERM or Ctrl-C stops them all, and a worker that dies otherwise is started again.
    Forked rather than spawned: a worker starts in a moment, with the imports done here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    # Where the workers leave their metrics for each other (`worker_metrics`): a scrape of
    # any worker answers for all of them.
    metrics_dir = (
        Path(tempfile.mkdtemp(prefix="apiauth-metrics-")) if settings.metrics_token else None
    )
    _freeze_startup_objects()
    children: dict[int, int] = {}
    stopping = threading.Event()

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _run_worker(
                    settings,
                    listener,
                    host=host,
                    port=port,
                    options=options,
                    metrics=(metrics_dir, index),
                )
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def stop(*_args: object) -> None:
        stopping.set()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(workers):
        start(index)
    try:
        while children:
            pid, status = os.wait()
            index = children.pop(pid, -1)
            if index < 0 or stopping.is_set():
                continue
            log.warning(
                "worker %d (pid %d) exited with status %d; starting it again",
                index,
                pid,
                os.waitstatus_to_exitcode(status),
            )
            time.sleep(RESTART_SECONDS)
            if not stopping.is_set():
                start(index)
    finally:
        listener.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_worker(
    settings: Settings,
    listener: socket.socket,
    *,
    host: str,
    port: int,
    options: tuple[bool, bool],
    metrics: tuple[Path | None, int],
) -> None:
    """One `serve --workers N` process: its own broker and application (its refresher,
    delivery worker and read memories), accepting on the shared socket; `metrics`: the
    directory the workers share their metrics in (None: not scraped) and this one's index."""
    demo, refresher = options
    # `serve` recorded demo mode already: the worker follows the record (demo=None).
    broker = open_broker(settings)
    metrics_dir, index = metrics
    shared = (
        None if metrics_dir is None else WorkerMetrics(broker.runtime.metrics, metrics_dir, index)
    )
    try:
        app = create_app(broker, demo=demo, refresher=refresher)
        if shared is not None:
            app.state.worker_metrics = shared
            shared.start()
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            log_level=None,
            access_log=settings.access_log,
        )
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        if shared is not None:
            shared.stop()
        broker.close()


def _freeze_startup_objects() -> None:
    # Everything loaded so far (the framework, the models, the catalog) lives as long as the
    # process: kept out of the garbage collector's full passes, which otherwise walk it all
    # and pause every request in flight for tens of milliseconds.
    gc.collect()
    gc.freeze()


def run_refresher(settings: Settings, *, announce: Callable[[], None] = lambda: None) -> None:
    """Refresh due connections (and re-check providers added by URL) until SIGTERM or
    Ctrl-C; `announce` once running."""
    configure_logging(settings)
    broker = open_broker(settings)
    try:
        metrics_port = metrics_port_of(broker.runtime.metrics, settings)
        workers: list[Worker] = [
            Refresher(broker),
            ProviderRechecker(broker),  # the re-checks of providers added by URL
            Heartbeat(broker, role="refresher", refresher=True),
        ]
        if metrics_port is not None:
            metrics_port.start()
        for worker in workers:
            worker.start()
        announce()
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for worker in workers:
                worker.stop()
            if metrics_port is not None:
                metrics_port.stop()
    finally:
        broker.close()
