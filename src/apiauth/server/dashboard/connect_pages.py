"""The hosted connect page a site's visitor opens (`/connect/<token>`, from
`POST /api/v1/connect-sessions`): the site's name, the providers it offers, a Connect button
each. No sign-in and no CSRF token: the single-use link is the visitor's only credential, and
the buttons post back to it. Pressing one spends the link and starts the provider's flow;
`/oauth/callback` then sends the visitor to the site's return URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from apiauth.domain import visitors
from apiauth.domain.token_format import hash_token
from apiauth.errors import ApiAuthServerError, ConnectLinkSpent, NotFound
from apiauth.server.dashboard.pages import broker_of, redirect, render
from apiauth.server.dashboard.site_pages import logo_hue
from apiauth.server.rate_limits import client_address, rate_limits

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
    request: Request, token: str, provider: Annotated[str, Form(max_length=63)] = ""
) -> Response:
    try:
        if len(token) > MAX_LINK_TOKEN:
            raise NotFound("this connect link is not known here")
        rate_limits(request).check_oauth_start(
            "link:" + hash_token(token)[:16], client_address(request)
        )
        started = visitors.start_visitor_connection(broker_of(request), token, provider)
    except ApiAuthServerError as exc:
        return _problem(request, exc)
    return redirect(started.authorize_url)
