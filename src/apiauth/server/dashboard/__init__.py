"""The dashboard: server-rendered pages (Jinja2) with one stylesheet and a little vanilla JS.

`install_dashboard(app)` adds its routes (kept out of the OpenAPI description) and its
static files to the application.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from apiauth.server.dashboard import (
    account_pages,
    connect_pages,
    site_pages,
    team_pages,
    visitor_pages,
)
from apiauth.server.dashboard.throttle import LoginThrottle

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    app.state.login_throttle = LoginThrottle()
    app.include_router(account_pages.router)
    app.include_router(site_pages.router)
    app.include_router(team_pages.router)
    app.include_router(connect_pages.router)
    app.include_router(visitor_pages.router)
    app.mount(
        "/static",
        StaticFiles(packages=[("apiauth.server.dashboard", "static")]),
        name="static",
    )
