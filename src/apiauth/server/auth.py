"""Who is calling: a member (personal access token) or a site (site or function token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, authenticate_personal_token
from apiauth.domain.sites import SiteCaller
from apiauth.domain.web_sessions import signed_in
from apiauth.errors import AuthenticationFailed, PermissionDenied
from apiauth.server.client_address import client_key
from apiauth.server.rate_limits import rate_limits
from apiauth.server.read_path import ReadPath
from apiauth.server.session_cookie import CSRF_HEADER, SESSION_COOKIE

_bearer = HTTPBearer(auto_error=False, description="apiauth_pat_… or apiauth_site_… token")


async def get_broker(request: Request) -> Broker:
    # async: FastAPI runs a sync dependency in a worker thread, a hop this needs not.
    broker: Broker = request.app.state.broker
    return broker


BrokerDep = Annotated[Broker, Depends(get_broker)]


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def current_member(
    request: Request,
    broker: BrokerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> MemberView:
    if credentials is None:
        # A dashboard session works too; a change made with it needs the session's CSRF token.
        who = signed_in(broker, request.cookies.get(SESSION_COOKIE))
        if who is not None:
            if request.method not in _SAFE_METHODS and not who.csrf_matches(
                request.headers.get(CSRF_HEADER, "")
            ):
                raise PermissionDenied(
                    f"a change made with a dashboard session needs its CSRF token in {CSRF_HEADER}"
                )
            return who.member
        raise AuthenticationFailed(
            "sign in, or send a personal access token (`apiauth tokens create`) as "
            "`Authorization: Bearer apiauth_pat_…`"
        )
    limits, address = rate_limits(request), client_key(request)
    limits.check_address(address)
    try:
        member = authenticate_personal_token(broker, credentials.credentials)
    except AuthenticationFailed:
        limits.bad_token(address)
        raise
    limits.check_token(credentials.credentials)
    return member


async def current_site(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> SiteCaller:
    if credentials is None:
        raise AuthenticationFailed(
            "send the site's token as `Authorization: Bearer …` (the APIAUTH_TOKEN variable)"
        )
    # A token found valid within the last second is answered from memory, on the event loop;
    # only a lookup in the database goes to a worker thread.
    token = credentials.credentials
    read_path: ReadPath = request.app.state.read_path
    limits, address = rate_limits(request), client_key(request)
    limits.check_address(address)
    try:
        caller = await read_path.caller(token)
    except AuthenticationFailed:
        limits.bad_token(address)
        raise
    # Counted once the token is known good, so that only real tokens take room in memory.
    limits.check_token(token)
    return caller


MemberDep = Annotated[MemberView, Depends(current_member)]
SiteDep = Annotated[SiteCaller, Depends(current_site)]
