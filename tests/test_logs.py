"""Log lines (issue 20): `APIAUTH_LOG_FORMAT=json` gives one JSON object per line with the
request's id, site and provider; text lines carry them at their end; the access log never
shows a URL's secrets. (A whole server's JSON log is read for tokens in test_no_leaks.py.)"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from apiauth.server import logs
from apiauth.server.logs import (
    JsonFormatter,
    RedactAccessLog,
    TextFormatter,
    begin_request,
    bind,
    redact_path,
)

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def _outside_any_request() -> Iterator[None]:
    """What a test binds stays in the test (the server's requests each get a fresh context)."""
    token = logs._request.set(None)
    yield
    logs._request.reset(token)


def record(
    message: str, *args: object, name: str = "apiauth.test", **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_names_the_request_site_and_provider_it_belongs_to() -> None:
    begin_request("req-42")
    bind(site="my-site", provider="github")
    line = JsonFormatter().format(
        record("refresh of %s failed", "box", provider="box", outcome="failed")
    )
    entry = json.loads(line)
    assert entry["message"] == "refresh of box failed"
    assert entry["level"] == "warning"
    assert entry["logger"] == "apiauth.test"
    assert entry["request_id"] == "req-42"
    assert entry["site"] == "my-site"
    assert entry["provider"] == "box"  # what the code logging said wins over the request's
    assert entry["outcome"] == "failed"
    assert entry["timestamp"].endswith("Z")


def test_a_traceback_stays_inside_its_one_json_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = record("it broke")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_a_text_line_ends_with_the_request_id() -> None:
    begin_request("req-7")
    line = TextFormatter().format(record("hello"))
    assert line.endswith("apiauth.test: hello request_id=req-7")


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (
            "/oauth/callback?state=s3cr3t&code=c0de",
            "/oauth/callback?state=[redacted]&code=[redacted]",
        ),
        ("/connect/cs_0123456789abcdef", "/connect/[redacted]"),
        ("/setup?token=abc", "/setup?token=[redacted]"),
        ("/api/v1/secrets", "/api/v1/secrets"),
        ("/healthz?ghp_0123456789", "/healthz?[redacted]"),
        ("/x?" + "n" * 60 + "=v", "/x?[redacted]=[redacted]"),
    ],
)
def test_the_access_log_shows_no_value_of_a_url(target: str, shown: str) -> None:
    assert redact_path(target) == shown


def test_uvicorns_access_line_is_redacted_in_both_formats() -> None:
    line = record(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/oauth/callback?code=c0de-secret",
        "1.1",
        200,
        name="uvicorn.access",
    )
    assert RedactAccessLog().filter(line)
    assert "c0de-secret" not in TextFormatter().format(line)
    entry = json.loads(JsonFormatter().format(line))
    assert entry["path"] == "/oauth/callback?code=[redacted]"
    assert entry["status"] == 200
    assert "c0de-secret" not in entry["message"]
