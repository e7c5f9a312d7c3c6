"""Where Prometheus reads a process's metrics (`apiauth.metrics`): `GET /metrics` on the
server's own port, for callers with `Authorization: Bearer $APIAUTH_METRICS_TOKEN`, and/or a
port of its own (`APIAUTH_METRICS_PORT`, on loopback unless `APIAUTH_METRICS_HOST` says
otherwise), which `apiauth refresher` uses too since it serves nothing else.

Without a token `/metrics` answers 404: metrics name the providers and sites' activity, so
they are never public by default. On the metrics port, the token is asked for when it is set.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder

from apiauth.config import Settings
from apiauth.errors import ConfigurationError
from apiauth.metrics import Metrics

__all__ = ["MetricsPort", "metrics_port_of", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

_NOT_SERVED = (
    "metrics are not served on this port: set APIAUTH_METRICS_TOKEN to scrape /metrics here "
    "with that bearer token, or APIAUTH_METRICS_PORT for a port of their own"
)


def _token_matches(settings: Settings, authorization: str | None) -> bool:
    expected = settings.metrics_token
    if expected is None or authorization is None:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    )


def exposition(metrics: Metrics, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (Prometheus text or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(metrics.registry), content_type


@router.get(
    "/metrics",
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        401: {"description": "Missing or wrong `Authorization: Bearer $APIAUTH_METRICS_TOKEN`."},
        404: {"description": "APIAUTH_METRICS_TOKEN is not set: no metrics on this port."},
    },
)
def metrics_endpoint(request: Request) -> Response:
    """This process's metrics (with `--workers`, every worker's), in the Prometheus text
    format."""
    broker = request.app.state.broker
    settings: Settings = broker.settings
    if settings.metrics_token is None:
        return JSONResponse(
            {"error": {"code": "not_found", "message": _NOT_SERVED}}, status_code=404
        )
    if not _token_matches(settings, request.headers.get("authorization")):
        return JSONResponse(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "send Authorization: Bearer <APIAUTH_METRICS_TOKEN>",
                }
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    workers = getattr(request.app.state, "worker_metrics", None)
    if workers is not None:  # `serve --workers N`: every worker's, labelled by worker
        body, content_type = workers.exposition()
    else:
        body, content_type = exposition(broker.runtime.metrics, request.headers.get("accept"))
    return Response(body, media_type=content_type)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class MetricsPort:
    """`/metrics` on a port of its own, served by a thread (started and stopped with the
    process's other workers)."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        if settings.metrics_port is None:
            raise ValueError("MetricsPort needs APIAUTH_METRICS_PORT")
        self.metrics = metrics
        self.settings = settings
        try:
            self._server = make_server(
                settings.metrics_host,
                settings.metrics_port,
                self._app,
                ThreadingWSGIServer,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
                f"({exc.strerror}): choose another APIAUTH_METRICS_PORT (each process on a "
                "machine needs its own)"
            ) from None
        # A short poll: `stop` (at shutdown) waits for the next one, 0.5 s by default.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="apiauth-metrics",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        if self.settings.metrics_token is not None and not _token_matches(
            self.settings, environ.get("HTTP_AUTHORIZATION")
        ):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"send Authorization: Bearer <APIAUTH_METRICS_TOKEN>\n"]
        body, content_type = exposition(self.metrics, environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]


def metrics_port_of(metrics: Metrics, settings: Settings) -> MetricsPort | None:
    """The process's own metrics port, when `APIAUTH_METRICS_PORT` asks for one."""
    return MetricsPort(metrics, settings) if settings.metrics_port else None
