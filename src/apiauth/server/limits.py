"""A cap on request bodies, before anything reads them.

Every body apiauth accepts (a site, a connection request, a dashboard form) is a few hundred
bytes; without a cap, one request could make the server buffer gigabytes. A body declared
larger than the cap is refused from its `Content-Length` alone; a chunked body without one is
read up to the cap and refused as soon as it passes it. The proxy (`/api/v1/proxy/…`) is left
alone: it streams bodies through to the provider (a file upload, say) without holding them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiauth.server.error_body import error_body

MAX_BODY_BYTES = 1024 * 1024
UNLIMITED_PREFIXES = ("/api/v1/proxy/",)


def _too_large_body(limit: int) -> bytes:
    message = f"the request body is larger than {limit} bytes ({limit // 1024} KiB)"
    return error_body("payload_too_large", message)


class BodySizeLimit:
    """ASGI middleware: 413 with the API's JSON error for a body over `max_bytes`."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        unlimited: tuple[str, ...] = UNLIMITED_PREFIXES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.unlimited = unlimited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.unlimited):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send)
                return
            # The server reads no more than the declared length.
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send) -> None:
        body = _too_large_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
