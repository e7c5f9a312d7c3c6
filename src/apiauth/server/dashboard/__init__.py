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
from apiauth.server.routes import add_routes

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    app.state.login_throttle = LoginThrottle()
    for pages in (account_pages, site_pages, team_pages, connect_pages, visitor_pages):
        add_routes(app, pages.router)
    app.mount(
        "/static",
        StaticFiles(packages=[("apiauth.server.dashboard", "static")]),
        name="static",
    )
