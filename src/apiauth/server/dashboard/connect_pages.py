"""The pages a person sees before apiauth sends their browser to a provider, outside the
signed-in dashboard.

`/connect/<token>` is the hosted connect page a site's visitor opens (from `POST
/api/v1/connect-sessions`): the site's and team's names, the providers it offers, a Connect
button each. No sign-in: the single-use link is the visitor's credential, and the buttons
post back to it with the pre-sign-in CSRF token (a double-submit cookie), so another site
cannot press Connect for them. Pressing one spends the link, starts the provider's flow and
binds it to this browser; `/oauth/callback` then sends the visitor to the site's return URL.

`/oauth/continue/<token>` is where a flow started from the API or the CLI begins: it names
the site, the team, the provider and who started it, and only its Continue button (a
CSRF-checked POST) binds the flow to this browser and goes on to the provider."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import connect_flow, visitors
from apiauth.domain.token_format import hash_token
from apiauth.errors import ApiAuthServerError, ConnectLinkSpent, NotFound
from apiauth.server.client_address import client_key
from apiauth.server.dashboard.pages import (
    broker_of,
    error_page,
    form_token_matches,
    redirect,
    render,
    set_binding_cookie,
)
from apiauth.server.dashboard.site_pages import logo_hue
from apiauth.server.rate_limits import rate_limits

router = APIRouter(include_in_schema=False)

MAX_LINK_TOKEN = 100


def _problem(request: Request, exc: ApiAuthServerError) -> Response:
    back = None
    if isinstance(exc, ConnectLinkSpent) and exc.return_url:
        back = visitors.return_location(exc.return_url, apiauth_error=exc.message)
    response = render(
        request, "connect.html", None, exc.status, page=None, message=exc.message, back_url=back
    )
    response.headers["Referrer-Policy"] = "no-referrer"  # the path is the link's secret
    return response


@router.get("/connect/{token}")
def connect_page(request: Request, token: str) -> Response:
    try:
        if len(token) > MAX_LINK_TOKEN:
            raise NotFound("this connect link is not known here")
        page = visitors.open_connect_page(broker_of(request), token)
    except ApiAuthServerError as exc:
        return _problem(request, exc)
    response = render(
        request,
        "connect.html",
        None,
        page=page,
        hues={p.name: logo_hue(p.name) for p in page.providers},
        cancel_url=visitors.return_location(
            page.return_url, apiauth_error="the visitor did not connect an account"
        ),
        message=None,
        back_url=None,
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.post("/connect/{token}")
def start_connect(
    request: Request,
    token: str,
    provider: Annotated[str, Form(max_length=63)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if not form_token_matches(request, csrf_token):
        return _form_refused(request)
    try:
        if len(token) > MAX_LINK_TOKEN:
            raise NotFound("this connect link is not known here")
        rate_limits(request).check_oauth_start(
            "link:" + hash_token(token)[:16], client_key(request)
        )
        started = visitors.start_visitor_connection(broker_of(request), token, provider)
    except ApiAuthServerError as exc:
        return _problem(request, exc)
    response = redirect(started.authorize_url)
    set_binding_cookie(request, response, started)
    return response


def _form_refused(request: Request) -> Response:
    response = error_page(
        request,
        403,
        "Form refused",
        "This form did not carry a valid security token (CSRF), so nothing was started. "
        "Go back, reload the page and press the button again.",
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# --------------------------------------------------------------------------- Continue


def _continue_problem(request: Request, exc: ApiAuthServerError) -> Response:
    response = render(request, "continue.html", None, exc.status, flow=None, message=exc.message)
    response.headers["Referrer-Policy"] = "no-referrer"  # the path is the link's secret
    return response


@router.get("/oauth/continue/{token}")
def continue_page(request: Request, token: str) -> Response:
    try:
        flow = connect_flow.flow_to_continue(broker_of(request), token)
    except ApiAuthServerError as exc:
        return _continue_problem(request, exc)
    response = render(
        request, "continue.html", None, flow=flow, hue=logo_hue(flow.provider_name), message=None
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.post("/oauth/continue/{token}")
def continue_to_provider(
    request: Request, token: str, csrf_token: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    if not form_token_matches(request, csrf_token):
        return _form_refused(request)
    try:
        rate_limits(request).check_oauth_start(
            "continue:" + hash_token(token)[:16], client_key(request)
        )
        bound = connect_flow.continue_in_browser(broker_of(request), token)
    except ApiAuthServerError as exc:
        return _continue_problem(request, exc)
    response = redirect(bound.provider_url)
    set_binding_cookie(
        request,
        response,
        connect_flow.AuthorizationStart(
            bound.provider_url, bound.state_id, bound.expires_at, bound.provider_url, bound.binding
        ),
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
