"""The REST API of SPEC §2: thin routes over the domain services."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from apiauth.domain import (
    audit,
    connect_flow,
    connections,
    function_tokens,
    machine_connections,
    pasted_credentials,
    sites,
    team_providers,
    visitors,
)
from apiauth.domain.oauth_apps import list_oauth_apps
from apiauth.domain.pasted_credentials import credential_fields
from apiauth.domain.team_catalog import providers_of_team
from apiauth.providers import KEY_MODES
from apiauth.providers.search import MAX_QUERY, ProviderQuery
from apiauth.server.auth import BrokerDep, MemberDep, SiteDep
from apiauth.server.client_address import client_address, client_key
from apiauth.server.rate_limits import rate_limits
from apiauth.server.read_path import ReadPath
from apiauth.server.schemas import (
    AuthorizeOut,
    ConnectionCreate,
    ConnectionOut,
    CredentialFieldOut,
    DeletedConnectionOut,
    ErrorResponse,
    EventPageOut,
    FunctionTokenCreate,
    FunctionTokenOut,
    ParamOut,
    ProviderAdd,
    ProviderOut,
    ProviderSecretOut,
    RemovedProviderOut,
    ScopeOut,
    SiteCreate,
    SiteOut,
    SiteTokenOut,
    SiteUpdate,
    SiteWithSecretOut,
    TeamProviderOut,
)

_errors: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422, 429)
}
router = APIRouter(prefix="/api/v1", responses=_errors)


@router.get("/providers", tags=["providers"])
def list_providers(
    broker: BrokerDep,
    member: MemberDep,
    q: Annotated[
        str,
        Query(
            max_length=MAX_QUERY,
            description="Words that must all appear in the name, display name or category.",
        ),
    ] = "",
    category: Annotated[
        str, Query(max_length=MAX_QUERY, description="Only this category (e.g. `CRM`).")
    ] = "",
) -> list[ProviderOut]:
    """The catalog and the team's providers added by URL: every provider a site can
    connect, and whether an OAuth app (or a client apiauth registered itself) is set up."""
    configured = {app.provider for app in list_oauth_apps(broker, member)}
    catalog = providers_of_team(broker, member.team_id)
    search = ProviderQuery.of(q, category)
    return [
        ProviderOut(
            name=p.name,
            display_name=p.display_name,
            category=p.category,
            auth_mode=p.auth_mode,
            credential_fields=[
                CredentialFieldOut(name=f.name, label=f.label, secret=f.secret)
                for f in credential_fields(p)
            ],
            credentials_url=p.app_registration_url if p.auth_mode in KEY_MODES else None,
            scopes=[
                ScopeOut(name=s.name, description=s.description, default=s.default)
                for s in p.scopes
            ],
            configured=p.name in configured or p.auth_mode in KEY_MODES,
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
                    format=a.format,
                )
                for a in p.params
            ],
            added_by_url=p.name not in broker.catalog,
        )
        for p in catalog.values()
        if search.matches(p)
    ]


@router.post("/providers", status_code=status.HTTP_201_CREATED, tags=["providers"])
def add_provider(body: ProviderAdd, broker: BrokerDep, member: MemberDep) -> TeamProviderOut:
    """Owners: add a provider from one URL, an OAuth issuer (RFC 8414 / OpenID Connect
    discovery) or a protected resource such as an MCP server (RFC 9728). apiauth registers
    itself as a client (Client ID Metadata Document, else RFC 7591) unless `client_id` is
    given; `message` says what was found and what is left to do. 422 when the URL leads to
    no usable server or the URL policy refuses it."""
    added = team_providers.add_provider(
        broker,
        member,
        body.url,
        name=body.name,
        scopes=body.scopes,
        client_id=body.client_id,
        client_secret=body.client_secret,
        allow_without_pkce=body.allow_without_pkce,
    )
    return TeamProviderOut.of(added.view, added.message)


@router.get("/providers/{name}", tags=["providers"])
def get_team_provider(name: str, broker: BrokerDep, member: MemberDep) -> TeamProviderOut:
    """A provider of the team's added by URL: where it came from, its client, its last
    re-check (404 for catalog providers, which `GET /providers` describes)."""
    return TeamProviderOut.of(team_providers.get_team_provider(broker, member, name))


@router.delete("/providers/{name}", tags=["providers"])
def remove_provider(
    name: str,
    broker: BrokerDep,
    member: MemberDep,
    keep_registration: Annotated[
        bool, Query(description="Keep apiauth's client registration at the server.")
    ] = False,
) -> RemovedProviderOut:
    """Owners: remove a provider added by URL, deleting apiauth's registration at the server
    (RFC 7592). 409 while a site is connected to it."""
    removed = team_providers.remove_provider(
        broker, member, name, keep_registration=keep_registration
    )
    return RemovedProviderOut(name=removed.name, registration_deleted=removed.registration_deleted)


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


@router.post(
    "/sites/{site}/connections",
    tags=["connections"],
    responses={201: {"model": ConnectionOut, "description": "connected with `credentials`"}},
)
def start_connection(
    request: Request,
    response: Response,
    site: str,
    body: ConnectionCreate,
    broker: BrokerDep,
    member: MemberDep,
) -> AuthorizeOut | ConnectionOut:
    """Start the OAuth flow; open `authorize_url` in a browser to consent at the provider.
    A client-credentials provider needs no consent: its first token is minted at once (201).
    A key-based provider (`auth_mode` `api_key`, `basic`) takes `credentials` instead: they
    are verified at the provider and stored, and the answer is the connection (201); a
    credential the provider refuses is a 422 naming its answer, and nothing is stored."""
    rate_limits(request).check_oauth_start(member.id, client_key(request))
    if body.credentials is not None:
        view = pasted_credentials.connect_with_credentials(
            broker, member, site, body.provider, body.credentials, body.params
        )
        response.status_code = status.HTTP_201_CREATED
        return ConnectionOut.of(view)
    if machine_connections.needs_no_consent(broker, member, body.provider):
        view = machine_connections.connect_client(
            broker, member, site, body.provider, body.scopes, body.params
        )
        response.status_code = status.HTTP_201_CREATED
        return ConnectionOut.of(view)
    start = connect_flow.start_connection(
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
        broker, caller, answer.providers, ip=client_address(request), visitor_id=whose
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
        ip=client_address(request),
        visitor_id=body.visitor_id,
    )
    return FunctionTokenOut(token=token, expires_at=expires_at)


@router.get("/sites/{site}/events", tags=["sites"])
def list_events(
    site: str,
    broker: BrokerDep,
    member: MemberDep,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = audit.DEFAULT_PAGE,
    before: Annotated[
        int | None, Query(ge=1, le=audit.MAX_EVENT_ID, description="Older events than this id.")
    ] = None,
) -> EventPageOut:
    """The site's audit log, newest first: changes, and every read of its secrets (which
    providers, which token id, from which IP; never a token)."""
    return EventPageOut.of(audit.list_events(broker, member, site, limit, before))
