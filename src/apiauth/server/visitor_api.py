"""The REST API of visitor connections (`domain/visitors.py`): connect sessions and the
erasure of a visitor, with a site token; the overview of a site's visitors, for members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status

from apiauth.domain import visitors
from apiauth.server.auth import BrokerDep, MemberDep, SiteDep
from apiauth.server.client_address import client_address
from apiauth.server.schemas import (
    ConnectSessionCreate,
    ConnectSessionOut,
    ErrorResponse,
    VisitorDeletedOut,
    VisitorOverviewOut,
)

_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 429)
}
router = APIRouter(prefix="/api/v1", responses=_errors, tags=["visitors"])

VisitorId = Annotated[str, Path(min_length=1, max_length=visitors.MAX_VISITOR_ID)]


@router.post("/connect-sessions", status_code=status.HTTP_201_CREATED)
def create_connect_session(
    request: Request, body: ConnectSessionCreate, broker: BrokerDep, caller: SiteDep
) -> ConnectSessionOut:
    """With a site token: a single-use link (30 minutes) for one visitor to connect one of
    `providers`; the visitor comes back to `return_url` with `apiauth_connected=<provider>`
    or `apiauth_error=<message>`."""
    link = visitors.create_connect_session(
        broker,
        caller,
        body.visitor_id,
        body.providers,
        body.return_url,
        body.scopes,
        ip=client_address(request),
    )
    return ConnectSessionOut(url=link.url, expires_at=link.expires_at)


@router.delete("/visitors/{visitor_id}")
def delete_visitor(
    request: Request, visitor_id: VisitorId, broker: BrokerDep, caller: SiteDep
) -> VisitorDeletedOut:
    """With a site token: revoke the visitor's tokens at each provider that can, and erase
    their connections, flows in progress, connect links and bound function tokens."""
    erased = visitors.delete_visitor(broker, caller, visitor_id, ip=client_address(request))
    return VisitorDeletedOut(
        visitor_id=erased.visitor_id,
        deleted_connections=erased.deleted_connections,
        revoked_at_provider=erased.revoked_at_provider,
    )


@router.get("/sites/{site}/visitors")
def list_visitors(
    site: str,
    broker: BrokerDep,
    member: MemberDep,
    search: Annotated[
        str, Query(max_length=visitors.MAX_VISITOR_ID, description="A visitor id prefix.")
    ] = "",
    limit: Annotated[int, Query(ge=1, le=visitors.MAX_PAGE)] = visitors.DEFAULT_PAGE,
) -> VisitorOverviewOut:
    """Counts of the site's visitor connections per provider and status, and the visitors
    whose id starts with `search`, with their connections (never a token)."""
    return VisitorOverviewOut.of(visitors.visitor_overview(broker, member, site, search, limit))


@router.delete("/sites/{site}/visitors/{visitor_id}")
def delete_visitor_of_site(
    site: str, visitor_id: VisitorId, broker: BrokerDep, member: MemberDep
) -> VisitorDeletedOut:
    """The same erasure as `DELETE /api/v1/visitors/{visitor_id}`, by a team member."""
    erased = visitors.delete_visitor_of_site(broker, member, site, visitor_id)
    return VisitorDeletedOut(
        visitor_id=erased.visitor_id,
        deleted_connections=erased.deleted_connections,
        revoked_at_provider=erased.revoked_at_provider,
    )
