"""Team settings, for owners: OAuth apps per provider, providers added by URL, members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import members, oauth_apps, team_providers
from apiauth.domain.oauth_apps import OAuthAppView
from apiauth.domain.team_catalog import providers_of_team
from apiauth.errors import ApiAuthServerError
from apiauth.providers import Provider
from apiauth.server.dashboard.pages import (
    DashboardRoute,
    Flash,
    FormDep,
    SignedInDep,
    broker_of,
    redirect,
    render,
)
from apiauth.server.dashboard.provider_search import (
    ProviderSearch,
    group_by_category,
    search_text,
)
from apiauth.server.dashboard.site_pages import logo_hue

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

APPS_PATH = "/team/oauth-apps"
MEMBERS_PATH = "/team/members"
PROVIDERS_PATH = "/team/providers"


@dataclass(frozen=True)
class AppRow:
    provider: Provider
    app: OAuthAppView | None
    hue: int

    @property
    def needs_secret(self) -> bool:
        return self.provider.token_auth_method != "none" or self.needs_private_key  # noqa: S105

    @property
    def needs_private_key(self) -> bool:
        """A PEM private key instead of a secret: a textarea (service accounts, GitHub Apps,
        `private_key_jwt` clients)."""
        return (
            self.provider.auth_mode in ("jwt_bearer", "github_app")
            or self.provider.token_auth_method == "private_key_jwt"  # noqa: S105
        )

    @property
    def is_github_app(self) -> bool:
        return self.provider.auth_mode == "github_app"


@router.get("/team")
def team(request: Request, who: SignedInDep) -> Response:
    return redirect(APPS_PATH)


@router.get(APPS_PATH)
def oauth_apps_page(request: Request, who: SignedInDep) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    broker = broker_of(request)
    apps = {app.provider: app for app in oauth_apps.list_oauth_apps(broker, who.member)}
    rows = [
        AppRow(p, apps.get(p.name), logo_hue(p.name))
        for p in providers_of_team(broker, who.member.team_id).values()
    ]
    # The team's own apps first, always; the others by category, filtered by the search.
    search = ProviderSearch.from_request(request)
    own = [row for row in rows if row.app is not None and row.app.source == "team"]
    others = [row for row in rows if row not in own]
    return render(
        request,
        "oauth_apps.html",
        who,
        section="oauth-apps",
        own=own,
        groups=group_by_category(
            (row for row in others if search.matches(row.provider)), lambda r: r.provider
        ),
        available_count=len(others),
        categories=sorted({row.provider.category for row in others}, key=str.lower),
        search=search,
        search_text=search_text,
        redirect_uri=broker.settings.redirect_uri,
    )


@router.post(APPS_PATH + "/{provider}")
def set_oauth_app(
    request: Request,
    who: FormDep,
    provider: str,
    client_id: Annotated[str, Form()] = "",
    client_secret: Annotated[str, Form()] = "",
    app_slug: Annotated[str, Form()] = "",
) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    # A PEM pasted into a textarea comes with the browser's CRLF line ends.
    secret = client_secret.replace("\r\n", "\n").strip()
    if secret.startswith("-----BEGIN"):
        secret += "\n"
    try:
        oauth_apps.set_oauth_app(
            broker_of(request),
            who.member,
            provider,
            client_id,
            secret or None,
            app_slug.strip() or None,
        )
    except ApiAuthServerError as exc:
        return redirect(APPS_PATH, Flash("error", exc.message))
    return redirect(APPS_PATH, Flash("ok", f"The team's OAuth app for {provider} is saved."))


@router.post(APPS_PATH + "/{provider}/remove")
def remove_oauth_app(request: Request, who: FormDep, provider: str) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    oauth_apps.remove_oauth_app(broker_of(request), who.member, provider)
    return redirect(APPS_PATH, Flash("ok", f"The team's OAuth app for {provider} is removed."))


@router.get(PROVIDERS_PATH)
def providers_page(request: Request, who: SignedInDep) -> Response:
    members.require_owner(who.member, "add providers")
    broker = broker_of(request)
    return render(
        request,
        "team_providers.html",
        who,
        section="providers",
        providers=team_providers.list_team_providers(broker, who.member),
        redirect_uri=broker.settings.redirect_uri,
    )


@router.post(PROVIDERS_PATH)
def add_provider(
    request: Request,
    who: FormDep,
    url: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    members.require_owner(who.member, "add providers")
    try:
        added = team_providers.add_provider(
            broker_of(request), who.member, url, name=name.strip() or None
        )
    except ApiAuthServerError as exc:
        return redirect(PROVIDERS_PATH, Flash("error", exc.message))
    return redirect(PROVIDERS_PATH, Flash("ok", added.message))


@router.post(PROVIDERS_PATH + "/{name}/remove")
def remove_provider(request: Request, who: FormDep, name: str) -> Response:
    members.require_owner(who.member, "remove providers")
    try:
        removed = team_providers.remove_provider(broker_of(request), who.member, name)
    except ApiAuthServerError as exc:
        return redirect(PROVIDERS_PATH, Flash("error", exc.message))
    note = " and apiauth's registration there deleted" if removed.registration_deleted else ""
    return redirect(PROVIDERS_PATH, Flash("ok", f"{name} removed{note}."))


@router.get(MEMBERS_PATH)
def members_page(request: Request, who: SignedInDep) -> Response:
    members.require_owner(who.member, "manage the team's members")
    team = members.list_members(broker_of(request), who.member)
    return render(
        request,
        "members.html",
        who,
        section="members",
        team=team,
        roles=members.ROLES,
        min_password=members.MIN_PASSWORD_LENGTH,
    )


@router.post(MEMBERS_PATH)
def add_member(
    request: Request,
    who: FormDep,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "member",
) -> Response:
    try:
        added = members.add_member(broker_of(request), who.member, email, password, role)
    except ApiAuthServerError as exc:
        if exc.status == 403:
            raise
        return redirect(MEMBERS_PATH, Flash("error", exc.message))
    return redirect(
        MEMBERS_PATH,
        Flash("ok", f"{added.email} was added as {added.role}; pass them their password."),
    )


@router.post(MEMBERS_PATH + "/{member_id}/role")
def set_role(
    request: Request, who: FormDep, member_id: str, role: Annotated[str, Form()] = ""
) -> Response:
    try:
        members.set_role(broker_of(request), who.member, member_id, role)
    except ApiAuthServerError as exc:
        if exc.status == 403:
            raise
        return redirect(MEMBERS_PATH, Flash("error", exc.message))
    return redirect(MEMBERS_PATH, Flash("ok", "Role changed."))


@router.post(MEMBERS_PATH + "/{member_id}/remove")
def remove_member(request: Request, who: FormDep, member_id: str) -> Response:
    try:
        members.remove_member(broker_of(request), who.member, member_id)
    except ApiAuthServerError as exc:
        if exc.status == 403:
            raise
        return redirect(MEMBERS_PATH, Flash("error", exc.message))
    return redirect(MEMBERS_PATH, Flash("ok", "Member removed."))
