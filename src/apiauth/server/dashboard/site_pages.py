"""The team's sites, a site's overview, its API Authentication page and its audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from apiauth.domain import (
    audit,
    connect_flow,
    connections,
    machine_connections,
    pasted_credentials,
    sites,
)
from apiauth.domain.connections import ConnectionView
from apiauth.domain.oauth_apps import list_oauth_apps
from apiauth.domain.pasted_credentials import CredentialField, credential_fields
from apiauth.domain.sites import ENV_VAR, SiteView
from apiauth.domain.team_catalog import providers_of_team
from apiauth.domain.token_format import TokenKind
from apiauth.domain.web_sessions import SignedIn
from apiauth.errors import ApiAuthServerError
from apiauth.providers import KEY_MODES, Provider
from apiauth.server.client_address import client_key
from apiauth.server.dashboard.pages import (
    DashboardRoute,
    Flash,
    FormDep,
    SignedInDep,
    broker_of,
    redirect,
    render,
    set_binding_cookie,
)
from apiauth.server.dashboard.provider_search import (
    ProviderSearch,
    group_by_category,
    search_text,
)
from apiauth.server.rate_limits import rate_limits

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

MASKED_TOKEN = TokenKind.SITE.prefix + "•" * 16
LOGO_HUES = 8


def logo_hue(name: str) -> int:
    """A stable colour for a provider's initial, custom providers included."""
    return sum(map(ord, name)) % LOGO_HUES


@dataclass(frozen=True)
class ProviderRow:
    provider: Provider
    configured: bool
    connection: ConnectionView | None
    ticked: frozenset[str]
    hue: int
    #: A key-based provider's inputs (`pasted_credentials.credential_fields`); () for OAuth.
    credentials: tuple[CredentialField, ...] = ()

    @property
    def not_granted(self) -> tuple[str, ...]:
        if self.connection is None:
            return ()
        granted = set(self.connection.granted_scopes)
        return tuple(s for s in self.connection.requested_scopes if s not in granted)

    @property
    def account(self) -> str:
        c = self.connection
        return (c.account_login or c.account_id or "an unnamed account") if c else ""


def _hook_host(url: str | None) -> str | None:
    """Where a hook points, without its path (deploy hook paths are often secrets)."""
    return urlsplit(url).hostname if url else None


def _api_auth_path(name: str) -> str:
    return f"/sites/{name}/api-auth"


# --------------------------------------------------------------------------- team dashboard


@router.get("/")
def team_dashboard(request: Request, who: SignedInDep) -> Response:
    team_sites = sites.list_sites(broker_of(request), who.member)
    return render(request, "sites.html", who, sites=team_sites)


@router.post("/sites")
def add_site(
    request: Request,
    who: FormDep,
    name: Annotated[str, Form()] = "",
    deploy_hook_url: Annotated[str, Form()] = "",
    webhook_url: Annotated[str, Form()] = "",
) -> Response:
    try:
        site = sites.create_site(
            broker_of(request),
            who.member,
            name.strip(),
            deploy_hook_url=deploy_hook_url.strip() or None,
            webhook_url=webhook_url.strip() or None,
        )
    except ApiAuthServerError as exc:
        return redirect("/", Flash("error", exc.message))
    return redirect(_api_auth_path(site.name), Flash("ok", f"Site {site.name} added."))


# --------------------------------------------------------------------------- one site


@router.get("/sites/{name}")
def site_overview(request: Request, who: SignedInDep, name: str) -> Response:
    site = sites.get_site(broker_of(request), who.member, name)
    return render(request, "site_overview.html", who, site=site, section="overview")


@router.post("/sites/{name}/settings")
def update_site(
    request: Request,
    who: FormDep,
    name: str,
    deploy_hook_url: Annotated[str, Form()] = "",
    webhook_url: Annotated[str, Form()] = "",
) -> Response:
    try:
        sites.update_site(
            broker_of(request),
            who.member,
            name,
            deploy_hook_url=deploy_hook_url.strip() or None,
            webhook_url=webhook_url.strip() or None,
        )
    except ApiAuthServerError as exc:
        if exc.status == 404:
            raise
        return redirect(f"/sites/{name}", Flash("error", exc.message))
    return redirect(f"/sites/{name}", Flash("ok", "Site settings saved."))


@router.post("/sites/{name}/delete")
def delete_site(request: Request, who: FormDep, name: str) -> Response:
    sites.delete_site(broker_of(request), who.member, name)
    return redirect("/", Flash("ok", f"Site {name} and its connections were deleted."))


# --------------------------------------------------------------------------- API Authentication


def _api_auth_page(
    request: Request, who: SignedIn, name: str, revealed_token: str | None = None
) -> Response:
    broker = broker_of(request)
    site = sites.get_site(broker, who.member, name)
    rows: list[ProviderRow] = []
    search = ProviderSearch.from_request(request)
    if site.api_auth_enabled:
        by_provider = {
            c.provider: c for c in connections.list_connections(broker, who.member, name)
        }
        configured = {app.provider for app in list_oauth_apps(broker, who.member)}
        for provider in providers_of_team(broker, who.member.team_id).values():
            connection = by_provider.get(provider.name)
            ticked = (
                frozenset(connection.requested_scopes)
                if connection
                else frozenset(provider.default_scopes)
            )
            rows.append(
                ProviderRow(
                    provider,
                    provider.name in configured or provider.auth_mode in KEY_MODES,
                    connection,
                    ticked,
                    logo_hue(provider.name),
                    credential_fields(provider),
                )
            )
    # Connected providers first, always; the others by category, filtered by the search.
    connected = [row for row in rows if row.connection is not None]
    available = [row for row in rows if row.connection is None]
    return render(
        request,
        "api_auth.html",
        who,
        site=site,
        section="api-auth",
        connected=connected,
        groups=group_by_category(
            (row for row in available if search.matches(row.provider)), lambda r: r.provider
        ),
        available_count=len(available),
        categories=sorted({row.provider.category for row in available}, key=str.lower),
        search=search,
        search_text=search_text,
        env_var=ENV_VAR,
        masked_token=MASKED_TOKEN,
        revealed_token=revealed_token,
        hook_host=_hook_host(site.deploy_hook_url),
        canonical_path=_api_auth_path(name) if revealed_token else None,
    )


@router.get("/sites/{name}/api-auth")
def api_auth(request: Request, who: SignedInDep, name: str) -> Response:
    return _api_auth_page(request, who, name)


@router.post("/sites/{name}/api-auth/enable")
def enable_api_auth(request: Request, who: FormDep, name: str) -> Response:
    # The token is shown on this response and nowhere else; reloading the page shows it masked.
    token = sites.enable_api_auth(broker_of(request), who.member, name)
    return _api_auth_page(request, who, name, revealed_token=token)


@router.post("/sites/{name}/api-auth/rotate")
def rotate_site_token(request: Request, who: FormDep, name: str) -> Response:
    token = sites.rotate_site_token(broker_of(request), who.member, name)
    return _api_auth_page(request, who, name, revealed_token=token)


@router.post("/sites/{name}/api-auth/disable")
def disable_api_auth(request: Request, who: FormDep, name: str) -> Response:
    sites.disable_api_auth(broker_of(request), who.member, name)
    return redirect(
        _api_auth_path(name),
        Flash("ok", f"API Authentication is off for {name}; its {ENV_VAR} no longer works."),
    )


@router.post("/sites/{name}/connections")
def connect(
    request: Request,
    who: FormDep,
    name: str,
    provider: Annotated[str, Form()] = "",
    scope: Annotated[list[str] | None, Form()] = None,
    param_name: Annotated[list[str] | None, Form()] = None,
    param_value: Annotated[list[str] | None, Form()] = None,
    credential_name: Annotated[list[str] | None, Form()] = None,
    credential_value: Annotated[list[str] | None, Form()] = None,
) -> Response:
    # The form lists each declared parameter's name (hidden) beside its input, in order.
    params = {k: v for k, v in zip(param_name or [], param_value or [], strict=False) if v}
    rate_limits(request).check_oauth_start(who.member.id, client_key(request))
    if credential_name:
        # A key-based provider's form: verified at the provider, stored, back to the page.
        given = dict(zip(credential_name, credential_value or [], strict=False))
        try:
            view = pasted_credentials.connect_with_credentials(
                broker_of(request), who.member, name, provider, given, params
            )
        except ApiAuthServerError as exc:
            return redirect(_api_auth_path(name), Flash("error", exc.message))
        who_name = view.account_login or view.account_id or "the account"
        return redirect(_api_auth_path(name), Flash("ok", f"{provider} connected ({who_name})."))
    try:
        if machine_connections.needs_no_consent(broker_of(request), who.member, provider):
            machine_connections.connect_client(
                broker_of(request), who.member, name, provider, scope or None, params
            )
            return redirect(_api_auth_path(name), Flash("ok", f"{provider} connected."))
        started = connect_flow.start_connection(
            broker_of(request),
            who.member,
            name,
            provider,
            scope or [],
            return_to=_api_auth_path(name),
            params=params,
            bind_browser=True,
        )
    except ApiAuthServerError as exc:
        if exc.status == 404 and provider in broker_of(request).catalog:
            raise
        return redirect(_api_auth_path(name), Flash("error", exc.message))
    response = redirect(started.authorize_url)
    set_binding_cookie(request, response, started)
    return response


@router.post("/sites/{name}/connections/{provider}/delete")
def disconnect(request: Request, who: FormDep, name: str, provider: str) -> Response:
    broker = broker_of(request)
    revoked = connections.delete_connection(broker, who.member, name, provider)
    entry = broker.catalog.get(provider)
    display = entry.display_name if entry else provider
    note = f" and its token revoked at {display}" if revoked else ""
    return redirect(_api_auth_path(name), Flash("ok", f"{display} disconnected{note}."))


# --------------------------------------------------------------------------- audit log


@router.get("/sites/{name}/events")
def site_events(
    request: Request,
    who: SignedInDep,
    name: str,
    before: Annotated[int | None, Query(ge=1, le=audit.MAX_EVENT_ID)] = None,
) -> Response:
    broker = broker_of(request)
    site: SiteView = sites.get_site(broker, who.member, name)
    page = audit.list_events(broker, who.member, name, before=before)
    return render(
        request,
        "events.html",
        who,
        site=site,
        section="events",
        page=page,
        first_page=before is None,
    )
