"""First start, sign-in and sign-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import members, setup, web_sessions
from apiauth.domain.connect_flow import is_local_path
from apiauth.errors import ApiAuthServerError, AuthenticationFailed
from apiauth.server.client_address import client_key
from apiauth.server.dashboard.pages import (
    CsrfRejected,
    DashboardRoute,
    Flash,
    FormDep,
    broker_of,
    clear_session_cookie,
    current_session,
    error_page,
    form_token_matches,
    redirect,
    render,
    set_session_cookie,
)
from apiauth.server.dashboard.throttle import LoginThrottle
from apiauth.server.session_cookie import SESSION_COOKIE

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


def _next_or_home(next_path: str | None) -> str:
    if next_path and is_local_path(next_path) and not next_path.startswith("/sign-"):
        return next_path
    return "/"


def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


def _address(request: Request) -> str:
    return client_key(request)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    if current_session(request) is not None:
        return redirect(_next_or_home(next))
    no_members = members.member_count(broker_of(request)) == 0
    return render(
        request, "sign_in.html", None, next=next or "", email="", error=None, no_members=no_members
    )


@router.post("/sign-in")
def sign_in(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not form_token_matches(request, csrf_token):
        raise CsrfRejected
    broker = broker_of(request)
    throttle = _throttle(request)
    address = _address(request)

    def again(status: int, error: str) -> Response:
        return render(
            request,
            "sign_in.html",
            None,
            status,
            next=next,
            email=email,
            error=error,
            no_members=False,
        )

    wait = throttle.attempt(address, email)
    if wait is not None:
        response = again(
            429,
            f"Too many failed sign-ins for this email from your address. "
            f"Try again in {(wait + 59) // 60} minute(s).",
        )
        response.headers["Retry-After"] = str(wait)
        return response
    try:
        member = members.verify_password(broker, email, password)
    except AuthenticationFailed:
        return again(401, "Wrong email or password.")  # counted by `attempt` already
    throttle.succeeded(address, email)
    session = web_sessions.start_session(broker, member)
    response = redirect(_next_or_home(next))
    set_session_cookie(request, response, session)
    return response


@router.post("/sign-out")
def sign_out(request: Request, who: FormDep) -> Response:
    web_sessions.end_session(broker_of(request), request.cookies.get(SESSION_COOKIE))
    response = redirect("/sign-in", Flash("ok", "You are signed out."))
    clear_session_cookie(request, response)
    return response


def _setup_link_refused(request: Request) -> Response:
    if members.member_count(broker_of(request)):
        message = "The owner account exists already, so this setup link no longer works: sign in."
    else:
        message = (
            "This setup link is not valid. Use the newest link `apiauth serve` printed "
            "(restarting the server prints a new one)."
        )
    return error_page(request, 403, "Setup link not valid", message)


@router.get("/setup")
def setup_page(request: Request, token: str | None = None) -> Response:
    if not setup.setup_token_valid(broker_of(request), token):
        return _setup_link_refused(request)
    return render(request, "setup.html", None, token=token, email="", team_name="", error=None)


@router.post("/setup")
def create_owner(
    request: Request,
    token: Annotated[str, Form()] = "",
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    team_name: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not form_token_matches(request, csrf_token):
        raise CsrfRejected
    broker = broker_of(request)
    if not setup.setup_token_valid(broker, token):
        return _setup_link_refused(request)
    try:
        owner = setup.create_owner(broker, token, email, password, team_name)
    except ApiAuthServerError as exc:
        return render(
            request,
            "setup.html",
            None,
            exc.status,
            token=token,
            email=email,
            team_name=team_name,
            error=exc.message,
        )
    session = web_sessions.start_session(broker, owner)
    response = redirect(
        "/", Flash("ok", f"Welcome! You own the team {owner.team_name}. Add your first site.")
    )
    set_session_cookie(request, response, session)
    return response
