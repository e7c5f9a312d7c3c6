"""`apiauth serve`: open the broker, build the app, run uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from apiauth.config import Settings
from apiauth.domain.broker import open_broker
from apiauth.server.app import create_app

log = logging.getLogger("apiauth")


def run_server(settings: Settings, *, host: str, port: int, demo: bool) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    broker = open_broker(settings, demo=demo)
    app = create_app(broker, demo=demo)
    base = settings.public_url.rstrip("/")
    log.info("apiauth listening on http://%s:%d (public URL %s)", host, port, base)
    if demo:
        log.info("demo mode: every provider is emulated at %s/_emulator", base)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        broker.close()
