"""JSON from servers nobody vetted: metadata documents, registration answers, their error pages.

Everything such a server sends is read with limits (size, time), parsed strictly (one JSON
object, no duplicate keys, no NaN) and turned into a `DiscoveryFailed` that says what was
wrong without repeating what the server sent, beyond a short printable `error` and
`error_description`. The HTTP client is the broker's guarded one (`url_policy.
GuardedTransport`), so every URL is checked against the URL policy right before the call;
redirects are never followed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from apiauth.errors import DiscoveryFailed, UrlNotAllowed

MAX_DOCUMENT_BYTES = 256_000
"""A metadata document or registration answer is a few kilobytes; far more is not one."""
DEFAULT_TOTAL_SECONDS = 10.0


@dataclass(frozen=True)
class Answer:
    """A server's answer: status, headers, and the JSON object of its body (None when the
    body was empty or not JSON; `problem` then says why)."""

    url: str
    status: int
    headers: httpx.Headers
    body: Mapping[str, Any] | None
    problem: str | None

    def error_detail(self) -> str:
        """The server's own `error` / `error_description`, printable and short, if any."""
        if self.body is None:
            return ""
        error = printable(str(self.body.get("error") or ""), 80)
        description = printable(str(self.body.get("error_description") or ""), 200)
        if error and description:
            return f"{error}: {description}"
        return error or description


def call(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    what: str,
    json_body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    read_body: bool = True,
) -> Answer:
    """Send one request and read its answer within the limits. Raises `DiscoveryFailed`
    when the server cannot be reached, is too slow or sends too much, and `UrlNotAllowed`
    (from the guarded transport) when the URL policy refuses the URL. `read_body=False`
    reads only the status and headers (a probe of a page that may be large)."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    request = http.build_request(method, url, headers=all_headers, json=json_body)
    deadline = time.monotonic() + (http.timeout.read or DEFAULT_TOTAL_SECONDS)
    try:
        response = http.send(request, stream=True, follow_redirects=False)
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes() if read_body else ():
                if time.monotonic() > deadline:
                    raise DiscoveryFailed(f"{url} took too long to send its {what}")
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise DiscoveryFailed(
                        f"{url} sent more than {MAX_DOCUMENT_BYTES:,} bytes as its {what}: "
                        "that is not one"
                    )
                chunks.append(chunk)
        finally:
            response.close()
    except UrlNotAllowed:
        raise
    except httpx.TimeoutException:
        raise DiscoveryFailed(f"{url} did not answer in time (asked for its {what})") from None
    except httpx.HTTPError as exc:
        raise DiscoveryFailed(
            f"could not reach {url} for its {what}: {type(exc).__name__}"
        ) from None
    raw = b"".join(chunks)
    body, problem = _json_object(raw, response.headers.get("Content-Type", ""))
    return Answer(url, response.status_code, response.headers, body, problem)


def _json_object(raw: bytes, content_type: str) -> tuple[Mapping[str, Any] | None, str | None]:
    if not raw.strip():
        return None, "the body is empty"
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return None, f"the body is {media_type or 'of no declared type'}, not JSON"
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, _StrictJsonError) else "it does not parse"
        return None, f"the body is not valid JSON ({reason})"
    if not isinstance(value, dict):
        return None, "the body is JSON but not an object"
    return value, None


class _StrictJsonError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 §4 leaves duplicate names to the parser; two readers could see two documents.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _StrictJsonError(f"the member {printable(key, 40)!r} appears twice")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise _StrictJsonError(f"{name} is not JSON")


def printable(text: str, limit: int) -> str:
    """`text` without control characters, at most `limit` characters: for messages quoting a
    server."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:limit]
