"""`apiauth serve`: open the broker, build the app, run uvicorn."""

from __future__ import annotations

import gc
import logging

import uvicorn

from apiauth.config import Settings
from apiauth.domain.broker import open_broker
from apiauth.domain.setup import issue_setup_token
from apiauth.server.app import create_app

log = logging.getLogger("apiauth")


def run_server(
    settings: Settings, *, host: str, port: int, demo: bool, refresher: bool = True
) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    broker = open_broker(settings, demo=demo)
    app = create_app(broker, demo=demo, refresher=refresher)
    base = settings.public_url.rstrip("/")
    log.info("apiauth listening on http://%s:%d (public URL %s)", host, port, base)
    if demo:
        log.info("demo mode: every provider is emulated at %s/_emulator", base)
    setup_token = issue_setup_token(broker)
    if setup_token is not None:
        # Printed, not logged: the one-time link is for the person at this console only.
        print(f"Open {base}/setup?token={setup_token} to create the owner account", flush=True)
    # Everything loaded so far (the framework, the models, the catalog) lives as long as the
    # process: kept out of the garbage collector's full passes, which otherwise walk it all
    # and pause every request in flight for tens of milliseconds.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        broker.close()
