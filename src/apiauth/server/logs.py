"""Log lines as text or JSON (`APIAUTH_LOG_FORMAT`), each carrying its request's id.

`configure_logging` sets up the root logger once per process (`apiauth serve`, `apiauth
refresher`); uvicorn's own loggers, the access log included, propagate to it, so every line
goes through one formatter. A JSON line is one object: `timestamp`, `level`, `logger`,
`message`, and when known `request_id`, `site`, `provider`, `outcome` (from the request being
served, or passed as `extra=` by the code that logs), `exception` for a traceback; access log
lines add `client`, `method`, `path`, `status`.

Never a token: the code that logs never formats one (tests/test_no_leaks.py reads a whole
server's log for them), and the access log, which would print whatever a URL holds, has its
query values and the connect links' tokens replaced by `[redacted]` (`RedactAccessLog`).

The request's fields live in a `ContextVar`: its value belongs to the request's own task
(uvicorn runs each request in a fresh context), so two requests, or two brokers in one
process, never see each other's. The value is one mutable `RequestFields` per request, so
that a field bound in a dependency run in a worker thread (a copy of the context) is seen by
the rest of the request too.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from apiauth.config import Settings

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "RedactAccessLog",
    "RequestFields",
    "TextFormatter",
    "begin_request",
    "bind",
    "configure_logging",
    "current_request_id",
]

LogFormat = Literal["text", "json"]

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Paths whose next segment is a credential: a visitor's connect link (`/connect/<token>`),
# an API- or CLI-started flow's Continue page (`/oauth/continue/<token>`).
SECRET_PATH_SEGMENTS = ("/connect/", "/oauth/continue/")
MAX_SHOWN_NAME = 40
FIELDS = ("request_id", "site", "provider", "outcome")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(slots=True)
class RequestFields:
    request_id: str
    site: str | None = None
    provider: str | None = None


_request: ContextVar[RequestFields | None] = ContextVar("apiauth_request", default=None)


def begin_request(request_id: str) -> RequestFields:
    """Called by the request middleware before anything else sees the request."""
    fields = RequestFields(request_id)
    _request.set(fields)
    return fields


def bind(*, site: str | None = None, provider: str | None = None) -> None:
    """Name the site and provider the current request is about (no-op outside a request)."""
    fields = _request.get()
    if fields is None:
        return
    if site is not None:
        fields.site = site
    if provider is not None:
        fields.provider = provider


def current_request_id() -> str | None:
    fields = _request.get()
    return None if fields is None else fields.request_id


def _field(record: logging.LogRecord, name: str) -> Any:
    value = record.__dict__.get(name)
    if value is None:
        fields = _request.get()
        if fields is not None:
            value = getattr(fields, name, None)
    return value


def redact_path(path: str) -> str:
    """A request target as the access log may show it: parameter names kept, their values
    and the token of a connect link replaced. A "name" without `=` or longer than a name
    would be (`?<token>`) is replaced too: it may be a value sent without a name."""
    parts = urlsplit(path)
    shown = parts.path
    for segment in SECRET_PATH_SEGMENTS:
        if shown.startswith(segment) and len(shown) > len(segment):
            shown = segment + REDACTED
    if parts.query:
        names = []
        for pair in parts.query.split("&"):
            name, equals, _value = pair.partition("=")
            shown_name = name if equals and len(name) <= MAX_SHOWN_NAME else REDACTED
            names.append(f"{shown_name}={REDACTED}" if equals else shown_name)
        shown += "?" + "&".join(names)
    return shown


class RedactAccessLog(logging.Filter):
    """uvicorn's access log line (`client - "METHOD target HTTP/v" status`) with its target
    redacted (`redact_path`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, target, version, status = args
            record.args = (client, method, redact_path(str(target)), version, status)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = _field(record, name)
            if value is not None:
                entry[name] = value
        args = record.args
        if record.name == ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            entry.update(client=args[0], method=args[1], path=args[2], status=args[4])
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with ` request_id=…` (and the other fields) at its end when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [(name, _field(record, name)) for name in FIELDS]
        suffix = " ".join(f"{name}={value}" for name, value in known if value is not None)
        if not suffix:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} {suffix}{newline}{rest}"


def _formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _ApiauthHandler(logging.StreamHandler[TextIO]):
    """Ours, so that configuring again replaces it instead of adding a second one."""


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ApiauthHandler)]:
        root.removeHandler(handler)
    handler = _ApiauthHandler(sys.stderr)
    handler.setFormatter(_formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn's start-up chatter stays out; its errors (and the access log, when on) go
    # through the handler above.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)
    if not any(isinstance(f, RedactAccessLog) for f in access.filters):
        access.addFilter(RedactAccessLog())
