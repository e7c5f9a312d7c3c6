"""The emulator's admin endpoints (`/_admin/…`: faults, reset, grants, metadata changes) take
no credentials: they are for the tests and the person running the demo. In `serve --demo`
they share the dashboard's origin, so a page on another site must not be able to drive them
with a form or a `fetch`: a request a browser marks as coming from elsewhere (`Origin` of
another origin, `Sec-Fetch-Site: cross-site` or `same-site`) is refused, and a body must be
JSON, which no HTML form can send (`enctype` allows only urlencoded, multipart and
text/plain) and which a cross-origin `fetch` may only send after a CORS preflight that
nothing here answers."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["AdminGuard"]

ADMIN_SEGMENT = "_admin"
_REFUSED_SITES = (b"cross-site", b"same-site")


class AdminGuard:
    """Pure ASGI middleware of the emulator app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ADMIN_SEGMENT in scope["path"].split("/"):
            problem = _problem(scope)
            if problem is not None:
                status, message = problem
                body = json.dumps({"error": message}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _problem(scope: Scope) -> tuple[int, str] | None:
    headers = dict(scope["headers"])
    if headers.get(b"sec-fetch-site", b"").lower() in _REFUSED_SITES:
        return 403, "the emulator's admin endpoints take no requests from other sites"
    origin = headers.get(b"origin")
    if origin is not None and origin.decode("latin-1") != _own_origin(scope, headers):
        return 403, "the emulator's admin endpoints take no requests from other origins"
    length = headers.get(b"content-length", b"0")
    has_body = length.strip() not in (b"", b"0") or b"transfer-encoding" in headers
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if has_body and content_type != b"application/json":
        return 415, "the emulator's admin endpoints take JSON bodies only"
    return None


def _own_origin(scope: Scope, headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}"
