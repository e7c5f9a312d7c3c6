"""Adding a module's `APIRouter` to an application.

The routers (`api.router`, the dashboard's pages, ...) are built once, when their module is
imported: each route's parameters, body and response model are compiled then. `add_routes`
adds those same routes to an application. `app.include_router` would wrap the router instead
and, on FastAPI's lazy inclusion, compile every route again for each application at its first
request (a quarter of a second per application on a 2-core machine, paid by the first
request after a start, and by every test that builds an app). The routers are included with
no prefix, tags or dependencies of their own, which is all `include_router` would add; and
nothing here overrides dependencies.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI


def add_routes(app: FastAPI, router: APIRouter) -> None:
    app.router.routes.extend(router.routes)
