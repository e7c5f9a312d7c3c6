"""How a dashboard page is made: templates, the signed-in member, CSRF checks, flash
messages, and domain errors turned into HTML pages (the JSON API keeps its own handlers).

Every dashboard route uses `DashboardRoute`, so a domain error raised anywhere below a page
becomes a friendly page with the right status instead of the API's JSON.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined

from apiauth.domain import web_sessions
from apiauth.domain.broker import Broker
from apiauth.domain.connect_flow import AuthorizationStart, binding_cookie_name, is_local_path
from apiauth.domain.web_sessions import SignedIn, WebSession
from apiauth.errors import ApiAuthServerError, RateLimited
from apiauth.server.session_cookie import SESSION_COOKIE

log = logging.getLogger(__name__)

FLASH_COOKIE = "apiauth_flash"
# Before sign-in there is no session to hold a CSRF token: the sign-in and setup forms use a
# double-submit cookie instead.
FORM_COOKIE = "apiauth_form"
CSRF_FIELD = "csrf_token"
MAX_FLASH_LENGTH = 300

_templates = Environment(
    loader=PackageLoader("apiauth.server.dashboard", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None, empty: str = "—") -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else empty


_templates.filters["when"] = _when


class SignInRequired(Exception):
    """No valid session: the person is sent to the sign-in page."""


class CsrfRejected(Exception):
    """A form post without the right CSRF token."""


@dataclass(frozen=True)
class Flash:
    kind: str  # "ok" or "error"
    text: str


def broker_of(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def secure_cookies(request: Request) -> bool:
    return broker_of(request).settings.public_url.startswith("https://")


# --------------------------------------------------------------------------- who is signed in


def current_session(request: Request) -> SignedIn | None:
    return web_sessions.signed_in(broker_of(request), request.cookies.get(SESSION_COOKIE))


def signed_in_member(request: Request) -> SignedIn:
    who = current_session(request)
    if who is None:
        raise SignInRequired
    return who


async def posted_csrf(request: Request) -> str:
    """The form's CSRF field (FastAPI's own `Form()` parameters read the same cached form)."""
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else ""


def checked_form(
    who: Annotated[SignedIn, Depends(signed_in_member)],
    posted: Annotated[str, Depends(posted_csrf)],
) -> SignedIn:
    if not posted or not who.csrf_matches(posted):
        raise CsrfRejected
    return who


SignedInDep = Annotated[SignedIn, Depends(signed_in_member)]
FormDep = Annotated[SignedIn, Depends(checked_form)]


def set_session_cookie(request: Request, response: Response, session: WebSession) -> None:
    # Lax, not Strict: the provider's redirect back to /oauth/callback and on to the
    # dashboard is a top-level navigation from another site that must keep the session.
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int((session.expires_at - broker_of(request).clock()).total_seconds()),
        path="/",
        httponly=True,
        secure=secure_cookies(request),
        samesite="lax",
    )


def set_binding_cookie(request: Request, response: Response, start: AuthorizationStart) -> None:
    """Bind an OAuth flow to this browser (`connect_flow`): only the callback reads it, and
    Lax lets the provider's top-level redirect back carry it."""
    if start.binding is None:
        return
    response.set_cookie(
        binding_cookie_name(start.state_id),
        start.binding,
        max_age=max(1, int((start.expires_at - broker_of(request).clock()).total_seconds())),
        path="/oauth/callback",
        httponly=True,
        secure=secure_cookies(request),
        samesite="lax",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, secure=secure_cookies(request), samesite="lax"
    )


def form_token(request: Request) -> str:
    """The pre-sign-in CSRF token: the cookie's, or a new one that `render` sets."""
    existing = request.cookies.get(FORM_COOKIE)
    if existing and 20 <= len(existing) <= 100:
        return existing
    token: str | None = getattr(request.state, "form_token", None)
    if token is None:
        token = secrets.token_urlsafe(32)
        request.state.form_token = token
    return token


def form_token_matches(request: Request, posted: str) -> bool:
    cookie = request.cookies.get(FORM_COOKIE, "")
    return bool(cookie) and secrets.compare_digest(cookie.encode(), posted.encode())


# --------------------------------------------------------------------------- responses


def redirect(url: str, flash: Flash | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if flash is not None:
        value = quote(json.dumps([flash.kind, flash.text[:MAX_FLASH_LENGTH]]))
        response.set_cookie(FLASH_COOKIE, value, max_age=60, path="/", httponly=True)
    return response


def _flashes(request: Request) -> list[Flash]:
    found = []
    raw = request.cookies.get(FLASH_COOKIE)
    if raw:
        try:
            kind, text = json.loads(unquote(raw))
            if kind in ("ok", "error") and isinstance(text, str):
                found.append(Flash(kind, text[:MAX_FLASH_LENGTH]))
        except (ValueError, TypeError):
            pass
    # What the OAuth callback appends to `return_to`: shown as text, never as markup.
    connected = request.query_params.get("connected")
    if connected:
        provider = broker_of(request).catalog.get(connected)
        name = provider.display_name if provider else connected[:60]
        found.append(Flash("ok", f"{name} connected."))
    error = request.query_params.get("error")
    if error:
        found.append(Flash("error", error[:MAX_FLASH_LENGTH]))
    return found


def render(
    request: Request,
    template: str,
    who: SignedIn | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    broker = broker_of(request)
    page = _templates.get_template(template).render(
        request_path=request.url.path,
        who=who,
        member=who.member if who else None,
        csrf_token=who.csrf_token if who else form_token(request),
        demo=bool(getattr(request.app.state, "demo", False)),
        flashes=_flashes(request),
        public_url=broker.settings.public_url.rstrip("/"),
        **context,
    )
    response = HTMLResponse(page, status_code=status)
    # Pages may hold a token revealed once, and always hold the CSRF token: keep them out of
    # caches and the back-forward cache.
    response.headers["Cache-Control"] = "no-store"
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True)
    new_form_token = getattr(request.state, "form_token", None)
    if who is None and new_form_token:
        response.set_cookie(
            FORM_COOKIE,
            new_form_token,
            path="/",
            httponly=True,
            secure=secure_cookies(request),
            samesite="strict",
        )
    return response


def error_page(
    request: Request, status: int, title: str, message: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    response = render(
        request, "error.html", current_session(request), status, title=title, message=message
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def sign_in_url(next_path: str | None) -> str:
    if next_path and is_local_path(next_path) and next_path not in ("/sign-in", "/sign-out"):
        return "/sign-in?" + urlencode({"next": next_path})
    return "/sign-in"


_TITLES = {
    400: "That did not work",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    409: "That conflicts with what is there",
    422: "Please check what you entered",
    429: "Too many requests",
}


class DashboardRoute(APIRoute):
    """Errors of a dashboard route become HTML pages; a missing session, the sign-in page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_or_error(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = request.url.path if request.method == "GET" else None
                if target and request.url.query:
                    target += "?" + request.url.query
                return redirect(sign_in_url(target))
            except CsrfRejected:
                return error_page(
                    request,
                    403,
                    "Form refused",
                    "This form did not carry a valid security token (CSRF), so nothing was "
                    "changed. Go back, reload the page and try again.",
                )
            except ApiAuthServerError as exc:
                if exc.status >= 500:
                    log.error("%s: %s", exc.code, exc.message)
                title = _TITLES.get(exc.status, "Something went wrong")
                headers = (
                    {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
                )
                return error_page(request, exc.status, title, exc.message, headers)
            except RequestValidationError as exc:
                fields = sorted(
                    {str(e.get("loc", ("", "?"))[-1]) for e in exc.errors() if e.get("loc")}
                )
                message = "Some fields are missing or invalid: " + (", ".join(fields) or "?")
                return error_page(request, 422, _TITLES[422], message)

        return page_or_error
