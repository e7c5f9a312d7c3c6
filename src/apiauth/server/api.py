"""The REST API of SPEC §2: thin routes over the domain services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from apiauth.domain import audit, connections, function_tokens, sites, visitors
from apiauth.domain.oauth_apps import list_oauth_apps
from apiauth.server.auth import BrokerDep, MemberDep, SiteDep
from apiauth.server.rate_limits import client_address, rate_limits
from apiauth.server.read_path import ReadPath
from apiauth.server.schemas import (
    AuthorizeOut,
    ConnectionCreate,
    ConnectionOut,
    DeletedConnectionOut,
    ErrorResponse,
    EventPageOut,
    FunctionTokenCreate,
    FunctionTokenOut,
    ParamOut,
    ProviderOut,
    ProviderSecretOut,
    ScopeOut,
    SiteCreate,
    SiteOut,
    SiteTokenOut,
    SiteUpdate,
    SiteWithSecretOut,
)

_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 429)
}
router = APIRouter(prefix="/api/v1", responses=_errors)


@router.get("/providers", tags=["providers"])
def list_providers(broker: BrokerDep, member: MemberDep) -> list[ProviderOut]:
    """The catalog: every provider a site can connect, and whether an OAuth app is set up."""
    configured = {app.provider for app in list_oauth_apps(broker, member)}
    return [
        ProviderOut(
            name=p.name,
            display_name=p.display_name,
            scopes=[
                ScopeOut(name=s.name, description=s.description, default=s.default)
                for s in p.scopes
            ],
            configured=p.name in configured,
            pkce=p.pkce,
            builtin=p.builtin,
            params=[
                ParamOut(
                    name=a.name,
                    description=a.description,
                    required=a.required,
                    pattern=a.pattern,
                    choices=list(a.choices),
                    default=a.default,
                )
                for a in p.params
            ],
        )
        for p in broker.catalog.values()
    ]


@router.post("/sites", status_code=status.HTTP_201_CREATED, tags=["sites"])
def create_site(body: SiteCreate, broker: BrokerDep, member: MemberDep) -> SiteWithSecretOut:
    return SiteWithSecretOut.of(
        sites.create_site(
            broker,
            member,
            body.name,
            deploy_hook_url=body.deploy_hook_url,
            webhook_url=body.webhook_url,
        )
    )


@router.get("/sites", tags=["sites"])
def list_sites(broker: BrokerDep, member: MemberDep) -> list[SiteOut]:
    return [SiteOut.of(view) for view in sites.list_sites(broker, member)]


@router.get("/sites/{site}", tags=["sites"])
def get_site(site: str, broker: BrokerDep, member: MemberDep) -> SiteOut:
    return SiteOut.of(sites.get_site(broker, member, site))


@router.patch("/sites/{site}", tags=["sites"])
def update_site(
    site: str, body: SiteUpdate, broker: BrokerDep, member: MemberDep
) -> SiteWithSecretOut:
    changes = body.model_dump(exclude_unset=True)
    return SiteWithSecretOut.of(sites.update_site(broker, member, site, **changes))


@router.delete("/sites/{site}", status_code=status.HTTP_204_NO_CONTENT, tags=["sites"])
def delete_site(site: str, broker: BrokerDep, member: MemberDep) -> Response:
    sites.delete_site(broker, member, site)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sites/{site}/api-auth", tags=["sites"])
def enable_api_auth(site: str, broker: BrokerDep, member: MemberDep) -> SiteTokenOut:
    """Enable API Authentication: returns the site token once and fires the deploy hook."""
    return SiteTokenOut(token=sites.enable_api_auth(broker, member, site))


@router.delete("/sites/{site}/api-auth", status_code=status.HTTP_204_NO_CONTENT, tags=["sites"])
def disable_api_auth(site: str, broker: BrokerDep, member: MemberDep) -> Response:
    """Disable API Authentication and revoke the site's tokens."""
    sites.disable_api_auth(broker, member, site)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sites/{site}/api-auth/rotate", tags=["sites"])
def rotate_site_token(site: str, broker: BrokerDep, member: MemberDep) -> SiteTokenOut:
    """A new site token; the old one stops working at once."""
    return SiteTokenOut(token=sites.rotate_site_token(broker, member, site))


@router.get("/sites/{site}/connections", tags=["connections"])
def list_connections(site: str, broker: BrokerDep, member: MemberDep) -> list[ConnectionOut]:
    return [ConnectionOut.of(v) for v in connections.list_connections(broker, member, site)]


@router.post("/sites/{site}/connections", tags=["connections"])
def start_connection(
    request: Request, site: str, body: ConnectionCreate, broker: BrokerDep, member: MemberDep
) -> AuthorizeOut:
    """Start the OAuth flow; open `authorize_url` in a browser to consent at the provider."""
    rate_limits(request).check_oauth_start(member.id, client_address(request))
    start = connections.start_connection(
        broker, member, site, body.provider, body.scopes, params=body.params
    )
    return AuthorizeOut(authorize_url=start.authorize_url, expires_at=start.expires_at)


@router.get("/sites/{site}/connections/{provider}", tags=["connections"])
def get_connection(site: str, provider: str, broker: BrokerDep, member: MemberDep) -> ConnectionOut:
    return ConnectionOut.of(connections.get_connection(broker, member, site, provider))


@router.delete("/sites/{site}/connections/{provider}", tags=["connections"])
def delete_connection(
    site: str, provider: str, broker: BrokerDep, member: MemberDep
) -> DeletedConnectionOut:
    """Disconnect: revoke at the provider where it can, then delete the tokens."""
    revoked = connections.delete_connection(broker, member, site, provider)
    return DeletedConnectionOut(provider=provider, revoked_at_provider=revoked)


@router.post("/sites/{site}/connections/{provider}/refresh", tags=["connections"])
def refresh_connection(
    site: str, provider: str, broker: BrokerDep, member: MemberDep
) -> ConnectionOut:
    """Refresh the connection's token now; `last_error` says if the provider refused."""
    return ConnectionOut.of(connections.refresh_site_connection(broker, member, site, provider))


# The hottest route: the answer is built by `SecretView.to_json` in exactly the documented
# shape and encoded once, instead of being validated again through `response_model`;
# `responses=` keeps the shape in the OpenAPI description.
@router.get(
    "/secrets",
    tags=["secrets"],
    responses={200: {"model": dict[str, ProviderSecretOut], "description": "Successful Response"}},
)
async def read_secrets(
    request: Request,
    broker: BrokerDep,
    caller: SiteDep,
    visitor_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            description="A visitor's connections instead of the site owner's (site token, or "
            "a function token bound to that visitor).",
        ),
    ] = None,
) -> Response:
    """Every connected provider of the token's site, tokens refreshed first when due."""
    whose = visitors.visitor_to_read(caller, visitor_id)
    # An answer given within the last second is sent from memory, on the event loop; only
    # the database query (and a refresh it may need) goes to a worker thread.
    read_path: ReadPath = request.app.state.read_path
    answer = await read_path.answer(caller, whose)
    audit.record_secrets_read(
        broker, caller, answer.providers, ip=_client_ip(request), visitor_id=whose
    )
    return Response(answer.body, media_type="application/json")


@router.post("/function-tokens", status_code=status.HTTP_201_CREATED, tags=["secrets"])
def mint_function_token(
    request: Request, body: FunctionTokenCreate, broker: BrokerDep, caller: SiteDep
) -> FunctionTokenOut:
    """With a site token: a short-lived token for one build or function, optionally limited
    to some providers. It stops working when it expires or the site token is rotated."""
    token, expires_at = function_tokens.mint_function_token(
        broker,
        caller,
        body.ttl_seconds,
        body.providers,
        ip=_client_ip(request),
        visitor_id=body.visitor_id,
    )
    return FunctionTokenOut(token=token, expires_at=expires_at)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("/sites/{site}/events", tags=["sites"])
def list_events(
    site: str,
    broker: BrokerDep,
    member: MemberDep,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = audit.DEFAULT_PAGE,
    before: Annotated[int | None, Query(ge=1, description="Older events than this id.")] = None,
) -> EventPageOut:
    """The site's audit log, newest first: changes, and every read of its secrets (which
    providers, which token id, from which IP; never a token)."""
    return EventPageOut.of(audit.list_events(broker, member, site, limit, before))
