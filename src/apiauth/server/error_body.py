"""The one shape of every error the API answers, whoever answers it - an exception handler
of the app, the body-size middleware below the framework, the proxy's gateway errors:
`{"error": {"code": "...", "message": "..."}}` (`schemas.ErrorResponse` documents it).
"""

from __future__ import annotations

import json

from starlette.responses import Response

__all__ = ["error_body", "error_response"]


def error_body(code: str, message: str) -> bytes:
    """The encoded body: `code` for programs, `message` for the person reading it."""
    return json.dumps(
        {"error": {"code": code, "message": message}}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
