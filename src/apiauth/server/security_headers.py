"""Browser security headers on every response.

The dashboard is plain server-rendered HTML with one stylesheet and one script file, so its
Content-Security-Policy allows nothing inline and nothing from elsewhere. Forms post to the
dashboard itself (`form-action 'self'`); a connection's way to the provider is a 303 redirect,
which form-action does not restrict in browsers that follow CSP Level 3.

Two kinds of page get a looser policy:
- `/docs` and `/redoc` (FastAPI's Swagger UI and ReDoc) load their code from a CDN and start
  it with an inline script; they show only the public OpenAPI description, no user data.
- `/_emulator/…` (demo mode only) stands in for third-party providers' sites, on the
  dashboard's origin: sandboxed (`EMULATOR_POLICY`), so nothing it serves runs script there.

A pure ASGI middleware (not Starlette's `BaseHTTPMiddleware`), so that streamed responses
stay streamed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = ("/docs", "/redoc")
EMULATOR_PATH = "/_emulator"
HSTS = "max-age=31536000; includeSubDomains"


def style_hash(css: str) -> str:
    """The CSP source that allows exactly this inline `<style>` content."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def dashboard_policy(style_sources: Iterable[str] = ()) -> str:
    styles = " ".join(["'self'", *style_sources])
    return (
        "default-src 'self'; script-src 'self'; "
        f"style-src {styles}; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "font-src 'self' https://fonts.gstatic.com; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


# The emulator's pages stand in for a provider's, on the dashboard's origin in demo mode:
# sandboxed (an opaque origin, no script), so that HTML it is told to serve (a fault's raw
# body) can neither run nor reach the dashboard. Its consent forms still post.
EMULATOR_POLICY = (
    "sandbox allow-forms; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, https: bool, style_sources: Iterable[str] = ()) -> None:
        self.app = app
        self.https = https
        self.policy = dashboard_policy(style_sources)

    def _policy_for(self, path: str) -> str | None:
        if path == EMULATOR_PATH or path.startswith(EMULATOR_PATH + "/"):
            return EMULATOR_POLICY
        if path in DOCS_PATHS or path.startswith("/docs/"):
            return DOCS_POLICY
        return self.policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy_for(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                if policy is not None:
                    headers.setdefault("Content-Security-Policy", policy)
                if self.https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
