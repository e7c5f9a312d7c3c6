"""Team settings, for owners: OAuth apps per provider, and members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import members, oauth_apps
from apiauth.domain.oauth_apps import OAuthAppView
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
from apiauth.server.dashboard.site_pages import logo_hue

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

APPS_PATH = "/team/oauth-apps"
MEMBERS_PATH = "/team/members"


@dataclass(frozen=True)
class AppRow:
    provider: Provider
    app: OAuthAppView | None
    hue: int

    @property
    def needs_secret(self) -> bool:
        return self.provider.token_auth_method != "none"  # noqa: S105 (RFC 7591 name)


@router.get("/team")
def team(request: Request, who: SignedInDep) -> Response:
    return redirect(APPS_PATH)


@router.get(APPS_PATH)
def oauth_apps_page(request: Request, who: SignedInDep) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    broker = broker_of(request)
    apps = {app.provider: app for app in oauth_apps.list_oauth_apps(broker, who.member)}
    rows = [AppRow(p, apps.get(p.name), logo_hue(p.name)) for p in broker.catalog.values()]
    return render(
        request,
        "oauth_apps.html",
        who,
        section="oauth-apps",
        rows=rows,
        redirect_uri=broker.settings.redirect_uri,
    )


@router.post(APPS_PATH + "/{provider}")
def set_oauth_app(
    request: Request,
    who: FormDep,
    provider: str,
    client_id: Annotated[str, Form()] = "",
    client_secret: Annotated[str, Form()] = "",
) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    try:
        oauth_apps.set_oauth_app(
            broker_of(request), who.member, provider, client_id, client_secret or None
        )
    except ApiAuthServerError as exc:
        return redirect(APPS_PATH, Flash("error", exc.message))
    return redirect(APPS_PATH, Flash("ok", f"The team's OAuth app for {provider} is saved."))


@router.post(APPS_PATH + "/{provider}/remove")
def remove_oauth_app(request: Request, who: FormDep, provider: str) -> Response:
    members.require_owner(who.member, "manage the team's OAuth apps")
    oauth_apps.remove_oauth_app(broker_of(request), who.member, provider)
    return redirect(APPS_PATH, Flash("ok", f"The team's OAuth app for {provider} is removed."))


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
