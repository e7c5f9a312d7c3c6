"""Function tokens: short-lived tokens a site token mints for one build or function.

A site token reads every provider of its site for as long as it lives, which is too much to
leave in a build's environment or a function bundle. A function token expires (15 minutes by
default, a day at most), may name fewer providers, and dies with the site token it came from:
rotating or revoking that token, or disabling API Authentication, invalidates it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import insert

from apiauth.domain import audit
from apiauth.domain.broker import Broker
from apiauth.domain.sites import SiteCaller
from apiauth.domain.team_catalog import providers_of_team, team_of_site
from apiauth.domain.token_format import TokenKind, generate_token, hash_token
from apiauth.errors import InvalidInput, PermissionDenied
from apiauth.store.models import Base, SiteToken, new_id

DEFAULT_TTL_SECONDS = 15 * 60
MAX_TTL_SECONDS = 24 * 60 * 60
MAX_PROVIDERS = 100

_INSERT_TOKEN = insert(Base.metadata.tables[SiteToken.__tablename__])


def validate_ttl(ttl_seconds: int | None) -> int:
    if ttl_seconds is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"ttl_seconds must be a whole number of seconds from 1 to {MAX_TTL_SECONDS} "
            f"(24 hours); the default is {DEFAULT_TTL_SECONDS}"
        )
    return ttl_seconds


def validate_providers(
    broker: Broker, providers: Sequence[str] | None, site_id: str
) -> tuple[str, ...] | None:
    """Catalog names, first occurrence kept; None (every provider of the site) stays None.

    An empty list is refused rather than read as "none" or "all": either would surprise
    whoever sent it.
    """
    if providers is None:
        return None
    if isinstance(providers, str):
        raise InvalidInput("providers must be a list of provider names")
    if not providers:
        raise InvalidInput("providers must name at least one provider, or be left out for all")
    if len(providers) > MAX_PROVIDERS:
        raise InvalidInput(f"providers may name at most {MAX_PROVIDERS} providers")
    names = tuple(dict.fromkeys(providers))
    known = broker.catalog
    if any(name not in known for name in names):  # maybe the site's team added it by URL
        known = providers_of_team(broker, team_of_site(broker, site_id))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidInput(
            f"unknown providers: {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(known.names())}"
        )
    return names


def mint_function_token(
    broker: Broker,
    caller: SiteCaller,
    ttl_seconds: int | None,
    providers: Sequence[str] | None,
    *,
    ip: str | None = None,
    visitor_id: str | None = None,
) -> tuple[str, datetime]:
    """A new function token for the caller's site and when it expires (the caller shows it).

    Only a site token mints: a function token minting another could outlive its own expiry
    and the provider subset it was limited to. With `visitor_id` the token reads that
    visitor's connections and nobody else's (`visitors.py`).
    """
    # visitors imports this module for `validate_providers`.
    from apiauth.domain.visitors import validate_visitor_id

    if caller.kind != "site":
        raise PermissionDenied(
            "only a site token can mint function tokens; this is a function token "
            "(use the site's APIAUTH_TOKEN)"
        )
    ttl = validate_ttl(ttl_seconds)
    names = validate_providers(broker, providers, caller.site_id)
    if visitor_id is not None:
        visitor_id = validate_visitor_id(visitor_id)
    now = broker.clock()
    expires_at = now + timedelta(seconds=ttl)
    token = generate_token(TokenKind.FUNCTION)
    token_id = new_id("ftok")
    detail: dict[str, Any] = {
        "token_id": caller.token_id,
        "function_token_id": token_id,
        "ttl_seconds": ttl,
        "providers": list(names) if names is not None else None,
    }
    if visitor_id is not None:
        detail["visitor_id"] = visitor_id
    row = {
        "id": token_id,
        "site_id": caller.site_id,
        "kind": "function",
        "parent_id": caller.token_id,
        "token_hash": hash_token(token),
        "providers": list(names) if names is not None else None,
        "visitor_id": visitor_id,
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    event = audit.Event(caller.site_id, "function_token.minted", "site token", detail)
    # Minting is on the path of every build and invocation: concurrent mints share one
    # transaction (`group_commit`), of Core statements, no ORM objects.
    broker.runtime.minted_tokens.submit((row, (event, ip)), partial(_write_minted, broker))
    return token, expires_at


_Minted = tuple[dict[str, Any], tuple[audit.Event, str | None]]


def _write_minted(broker: Broker, minted: Sequence[_Minted]) -> None:
    """Function tokens and their audit events, in one transaction."""
    with broker.engine.begin() as db:
        db.execute(_INSERT_TOKEN, [row for row, _event in minted])
        audit.record_in(db, [event for _row, event in minted])
