"""A site's Visitors page: counts and status of the connections its visitors made through
connect links, a search by visitor id, and erasing a visitor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import sites, visitors
from apiauth.domain.token_store import CONNECTED, NEEDS_REAUTH, REFRESHING
from apiauth.server.dashboard.pages import (
    DashboardRoute,
    Flash,
    FormDep,
    SignedInDep,
    broker_of,
    redirect,
    render,
)

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

STATUSES = (CONNECTED, REFRESHING, NEEDS_REAUTH)


def _visitors_path(name: str) -> str:
    return f"/sites/{name}/visitors"


@router.get("/sites/{name}/visitors")
def visitors_page(request: Request, who: SignedInDep, name: str, search: str = "") -> Response:
    broker = broker_of(request)
    site = sites.get_site(broker, who.member, name)
    search = search.strip()[: visitors.MAX_VISITOR_ID]
    overview = visitors.visitor_overview(broker, who.member, name, search)
    return render(
        request,
        "visitors.html",
        who,
        site=site,
        section="visitors",
        overview=overview,
        search=search,
        statuses=STATUSES,
        display={p.name: p.display_name for p in broker.catalog.values()},
    )


@router.post("/sites/{name}/visitors/delete")
def delete_visitor(
    request: Request, who: FormDep, name: str, visitor_id: Annotated[str, Form()] = ""
) -> Response:
    erased = visitors.delete_visitor_of_site(broker_of(request), who.member, name, visitor_id)
    note = (
        f"Visitor {erased.visitor_id}: {erased.deleted_connections} connection(s) erased, "
        f"{erased.revoked_at_provider} revoked at the provider."
    )
    return redirect(_visitors_path(name), Flash("ok", note))
