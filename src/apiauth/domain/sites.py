"""Sites, API Authentication on/off, and the site tokens that read a site's secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.cache_notices import Forget, announce
from apiauth.domain.members import MemberView
from apiauth.domain.token_format import TokenKind, generate_token, hash_token, token_kind
from apiauth.domain.token_store import NEEDS_REAUTH
from apiauth.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site, SiteToken, new_id
from apiauth.url_policy import UrlPolicy, check_url

SITE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_SITE_NAME = re.compile(SITE_NAME_PATTERN)
ENV_VAR = "APIAUTH_TOKEN"


@dataclass(frozen=True)
class SiteView:
    id: str
    name: str
    team_id: str
    api_auth_enabled: bool
    deploy_hook_url: str | None
    webhook_url: str | None
    created_at: datetime
    connection_count: int
    needs_attention: int
    # Only in the answer that gave the site a webhook URL: shown once, then only sealed.
    webhook_secret: str | None = None


@dataclass(frozen=True)
class SiteCaller:
    """Who presented a site or function token, and what it may read."""

    site_id: str
    site_name: str
    token_id: str
    kind: str
    providers: tuple[str, ...] | None
    # A function token bound to one visitor reads only that visitor's connections.
    visitor_id: str | None = None


def validate_site_name(name: str) -> str:
    if not _SITE_NAME.match(name):
        raise InvalidInput(
            f"{name!r} is not a site name: use 1 to 63 lowercase letters, digits and dashes, "
            "not starting or ending with a dash"
        )
    return name


def validate_hook_url(url: str | None, what: str, policy: UrlPolicy) -> str | None:
    """The URL if the server may POST to it (`url_policy`); checked again at each call."""
    if url is None or url == "":
        return None
    return check_url(url, policy, what).url


def _view(db: Session, site: Site) -> SiteView:
    counts = db.execute(
        select(Connection.status, func.count(Connection.id))
        .where(Connection.site_id == site.id, Connection.visitor_id == "")
        .group_by(Connection.status)
    ).all()
    by_status: dict[str, int] = dict(counts)
    return SiteView(
        id=site.id,
        name=site.name,
        team_id=site.team_id,
        api_auth_enabled=site.api_auth_enabled,
        deploy_hook_url=site.deploy_hook_url,
        webhook_url=site.webhook_url,
        created_at=site.created_at,
        connection_count=sum(by_status.values()),
        needs_attention=by_status.get(NEEDS_REAUTH, 0),
    )


def find_site(db: Session, team_id: str, name: str) -> Site:
    if not _SITE_NAME.match(name):  # no such site can exist; spare the database odd bytes
        raise NotFound(f"no site named {name!r}")
    site = db.scalar(select(Site).where(Site.name == name, Site.team_id == team_id))
    if site is None:
        raise NotFound(f"no site named {name!r}")
    return site


def create_site(
    broker: Broker,
    member: MemberView,
    name: str,
    *,
    deploy_hook_url: str | None = None,
    webhook_url: str | None = None,
) -> SiteView:
    name = validate_site_name(name)
    # Resolving the hosts takes a moment: before the transaction, not inside it.
    deploy_hook_url = validate_hook_url(deploy_hook_url, "deploy hook URL", broker.url_policy)
    webhook_url = validate_hook_url(webhook_url, "webhook URL", broker.url_policy)
    with transaction(broker.sessions) as db:
        if db.scalar(select(Site.id).where(Site.name == name)):
            raise Conflict(f"a site named {name!r} exists already")
        site = Site(
            id=new_id("site"),
            team_id=member.team_id,
            name=name,
            deploy_hook_url=deploy_hook_url,
            webhook_url=webhook_url,
            api_auth_enabled=False,
        )
        db.add(site)
        secret = _new_webhook_secret(broker, site) if site.webhook_url else None
        db.flush()
        audit.record(db, site.id, "site.created", member.email)
        return replace(_view(db, site), webhook_secret=secret)


def list_sites(broker: Broker, member: MemberView) -> list[SiteView]:
    with broker.sessions() as db:
        sites = db.scalars(select(Site).where(Site.team_id == member.team_id).order_by(Site.name))
        return [_view(db, site) for site in sites]


def get_site(broker: Broker, member: MemberView, name: str) -> SiteView:
    with broker.sessions() as db:
        return _view(db, find_site(db, member.team_id, name))


_UNSET = object()


def update_site(
    broker: Broker,
    member: MemberView,
    name: str,
    *,
    deploy_hook_url: str | object | None = _UNSET,
    webhook_url: str | object | None = _UNSET,
) -> SiteView:
    with transaction(broker.sessions) as db:
        site = find_site(db, member.team_id, name)
        if deploy_hook_url is not _UNSET:
            assert deploy_hook_url is None or isinstance(deploy_hook_url, str)
            site.deploy_hook_url = validate_hook_url(
                deploy_hook_url, "deploy hook URL", broker.url_policy
            )
        secret = None
        if webhook_url is not _UNSET:
            assert webhook_url is None or isinstance(webhook_url, str)
            new_url = validate_hook_url(webhook_url, "webhook URL", broker.url_policy)
            if new_url is None:
                site.webhook_secret_enc = None
            elif new_url != site.webhook_url or site.webhook_secret_enc is None:
                secret = _new_webhook_secret(broker, site)
            site.webhook_url = new_url
        audit.record(db, site.id, "site.updated", member.email)
        return replace(_view(db, site), webhook_secret=secret)


def _new_webhook_secret(broker: Broker, site: Site) -> str:
    """A new signing secret for the site's webhooks, stored sealed; the caller shows it once."""
    secret = deliveries.new_webhook_secret()
    site.webhook_secret_enc = broker.vault.seal_text(secret, deliveries.webhook_secret_aad(site.id))
    return secret


def delete_site(broker: Broker, member: MemberView, name: str) -> None:
    with transaction(broker.sessions) as db:
        db.delete(find_site(db, member.team_id, name))
    forget_valid_tokens(broker)


def enable_api_auth(broker: Broker, member: MemberView, name: str) -> str:
    """Turn API Authentication on and issue a new site token (the caller shows it once).

    Enabling an enabled site issues a new token and revokes the old one, like a rotation:
    a token that was shown once cannot be shown again.
    """
    token = _enable(broker, member, name, rotate=True)
    assert token is not None
    return token


def enable_api_auth_once(broker: Broker, member: MemberView, name: str) -> str | None:
    """Turn API Authentication on and issue a site token; None (and nothing changed) when
    it is on already, so that enabling twice never revokes a token in use by surprise."""
    return _enable(broker, member, name, rotate=False)


def _enable(broker: Broker, member: MemberView, name: str, *, rotate: bool) -> str | None:
    with transaction(broker.sessions) as db:
        site = find_site(db, member.team_id, name)
        was_enabled = site.api_auth_enabled
        if was_enabled and not rotate:
            return None
        site.api_auth_enabled = True
        token = _issue_site_token(db, site, broker.clock())
        event = "api_auth.rotated" if was_enabled else "api_auth.enabled"
        audit.record(db, site.id, event, member.email)
        deliveries.enqueue(broker, db, site, "api_auth.enabled", {})
    forget_valid_tokens(broker)
    return token


def rotate_site_token(broker: Broker, member: MemberView, name: str) -> str:
    with transaction(broker.sessions) as db:
        site = find_site(db, member.team_id, name)
        if not site.api_auth_enabled:
            raise Conflict(f"API Authentication is not enabled for {name!r}: enable it first")
        token = _issue_site_token(db, site, broker.clock())
        audit.record(db, site.id, "api_auth.rotated", member.email)
    forget_valid_tokens(broker)
    return token


def disable_api_auth(broker: Broker, member: MemberView, name: str) -> None:
    with transaction(broker.sessions) as db:
        site = find_site(db, member.team_id, name)
        site.api_auth_enabled = False
        _revoke_site_tokens(db, site.id, broker.clock())
        audit.record(db, site.id, "api_auth.disabled", member.email)
    forget_valid_tokens(broker)


def forget_valid_tokens(broker: Broker) -> None:
    """Call after committing a revocation: it takes effect at once in this process, and in
    the others when they hear of it (`cache_notices`; within `SITE_TOKEN_CACHE_SECONDS` if
    a notice is lost)."""
    announce(broker, Forget.TOKENS)


def _revoke_site_tokens(db: Session, site_id: str, now: datetime) -> None:
    """Revoking a site token revokes every function token minted from it too."""
    db.execute(
        update(SiteToken)
        .where(SiteToken.site_id == site_id, SiteToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def _issue_site_token(db: Session, site: Site, now: datetime) -> str:
    _revoke_site_tokens(db, site.id, now)
    token = generate_token(TokenKind.SITE)
    db.add(
        SiteToken(
            id=new_id("stok"),
            site_id=site.id,
            kind="site",
            token_hash=hash_token(token),
            providers=None,
        )
    )
    return token


# The columns that decide whether a site or function token is good, from its hash in one
# statement with the token it was minted from and its site (Core rows, no ORM objects: the
# cold read of `secrets_read.first_read` adds the site's connections to the same statement).
_PARENT = aliased(SiteToken, name="parent_token")
CALLER_COLUMNS = (
    SiteToken.id.label("token_id"),
    SiteToken.kind.label("caller_kind"),
    SiteToken.providers.label("token_providers"),
    SiteToken.visitor_id.label("token_visitor_id"),
    SiteToken.expires_at.label("token_expires_at"),
    SiteToken.revoked_at.label("token_revoked_at"),
    _PARENT.id.label("parent_id"),
    _PARENT.expires_at.label("parent_expires_at"),
    _PARENT.revoked_at.label("parent_revoked_at"),
    Site.id.label("site_id"),
    Site.name.label("site_name"),
    Site.api_auth_enabled.label("site_enabled"),
)


def tokens_with_sites(*columns: Any) -> Select[*tuple[Any, ...]]:
    """`CALLER_COLUMNS` (and `columns`) of the token whose hash is the `token_hash` bound
    parameter, joined to its site and the token it was minted from."""
    return (
        select(*CALLER_COLUMNS, *columns)
        .select_from(SiteToken)
        .join(Site, Site.id == SiteToken.site_id)
        .outerjoin(_PARENT, _PARENT.id == SiteToken.parent_id)
        .where(SiteToken.token_hash == bindparam("token_hash"))
    )


_CALLER = tokens_with_sites()


def token_refused() -> AuthenticationFailed:
    """One answer for every kind of bad token."""
    return AuthenticationFailed(
        f"a valid site or function token is required (set {ENV_VAR}; "
        "`apiauth sites enable SITE` issues one)"
    )


def well_formed_site_token(token: str) -> bool:
    """A site or function token by its form (prefix, length, checksum): anything else is
    refused without asking the database."""
    return token_kind(token) in (TokenKind.SITE, TokenKind.FUNCTION)


def caller_of(row: Any, now: datetime) -> tuple[SiteCaller, datetime | None] | None:
    """The caller a row of `CALLER_COLUMNS` names and when its token (or the one it was
    minted from) expires, or None when the token is not good now."""
    # A function token lives only as long as the site token it was minted from, whether or
    # not the revocation reached its own row.
    if row.token_revoked_at is not None or not row.site_enabled:
        return None
    expiries = [row.token_expires_at]
    if row.caller_kind != "site":
        if row.parent_id is None or row.parent_revoked_at is not None:
            return None
        expiries.append(row.parent_expires_at)
    known = [at for at in expiries if at is not None]
    if any(at <= now for at in known):
        return None
    providers = tuple(row.token_providers) if row.token_providers is not None else None
    caller = SiteCaller(
        row.site_id, row.site_name, row.token_id, row.caller_kind, providers, row.token_visitor_id
    )
    return caller, min(known, default=None)


def authenticate_site_token(broker: Broker, token: str, *, renew: bool = False) -> SiteCaller:
    """The site a site or function token reads; one answer for every kind of bad token.
    `renew`: look it up even if it was found valid within the last second (and remember the
    new answer)."""
    if not well_formed_site_token(token):
        raise token_refused()
    now = broker.clock()
    token_hash = hash_token(token)
    cached = None if renew else broker.runtime.site_tokens.get(token_hash, now)
    if cached is not None:
        return cached
    began = broker.runtime.site_tokens.begin()
    with broker.engine.connect() as db:
        row = db.execute(_CALLER, {"token_hash": token_hash}).first()
    found = None if row is None else caller_of(row, now)
    if found is None:
        raise token_refused()
    caller, expires_at = found
    broker.runtime.site_tokens.put(token_hash, caller, expires_at, began)
    return caller
