"""Function tokens: short-lived tokens a site token mints for one build or function.

A site token reads every provider of its site for as long as it lives, which is too much to
leave in a build's environment or a function bundle. A function token expires (15 minutes by
default, a day at most), may name fewer providers, and dies with the site token it came from:
rotating or revoking that token, or disabling API Authentication, invalidates it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from apiauth.domain import audit
from apiauth.domain.broker import Broker
from apiauth.domain.sites import SiteCaller
from apiauth.domain.token_format import TokenKind, generate_token, hash_token
from apiauth.errors import InvalidInput, PermissionDenied
from apiauth.store.db import transaction
from apiauth.store.models import SiteToken, new_id

DEFAULT_TTL_SECONDS = 15 * 60
MAX_TTL_SECONDS = 24 * 60 * 60
MAX_PROVIDERS = 100


def validate_ttl(ttl_seconds: int | None) -> int:
    if ttl_seconds is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"ttl_seconds must be a whole number of seconds from 1 to {MAX_TTL_SECONDS} "
            f"(24 hours); the default is {DEFAULT_TTL_SECONDS}"
        )
    return ttl_seconds


def validate_providers(broker: Broker, providers: Sequence[str] | None) -> tuple[str, ...] | None:
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
    unknown = [name for name in names if name not in broker.catalog]
    if unknown:
        raise InvalidInput(
            f"unknown providers: {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(broker.catalog.names())}"
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
    names = validate_providers(broker, providers)
    if visitor_id is not None:
        visitor_id = validate_visitor_id(visitor_id)
    now = broker.clock()
    expires_at = now + timedelta(seconds=ttl)
    token = generate_token(TokenKind.FUNCTION)
    token_id = new_id("ftok")
    with transaction(broker.sessions) as db:
        db.add(
            SiteToken(
                id=token_id,
                site_id=caller.site_id,
                kind="function",
                parent_id=caller.token_id,
                token_hash=hash_token(token),
                providers=list(names) if names is not None else None,
                visitor_id=visitor_id,
                created_at=now,
                expires_at=expires_at,
            )
        )
        detail = {
            "token_id": caller.token_id,
            "function_token_id": token_id,
            "ttl_seconds": ttl,
            "providers": list(names) if names is not None else None,
        }
        if visitor_id is not None:
            detail["visitor_id"] = visitor_id
        audit.record(db, caller.site_id, "function_token.minted", "site token", detail, ip=ip)
    return token, expires_at
