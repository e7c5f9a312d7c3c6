"""How a dashboard session travels over HTTP, for both of its readers: the dashboard's pages,
and the REST API, which accepts a signed-in browser as well as a personal access token.

A change made through the API with a session must carry the session's CSRF token in
`CSRF_HEADER` (the dashboard's forms carry it in a field of their own).
"""

from __future__ import annotations

__all__ = ["CSRF_HEADER", "SESSION_COOKIE"]

SESSION_COOKIE = "apiauth_session"
CSRF_HEADER = "X-CSRF-Token"
