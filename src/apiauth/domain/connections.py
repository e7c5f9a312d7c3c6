"""Connections: start and finish a provider's OAuth flow for a site, list, delete, and read
the site's tokens (refreshing one inside the margin first)."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import client_for
from apiauth.domain.read_caches import Answer
from apiauth.domain.refresh import (
    ConnectionState,
    is_due_for_reader,
    is_refreshable,
    refresh_connection,
)
from apiauth.domain.sites import SiteCaller, find_site
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import (
    CONNECTED,
    NEEDS_REAUTH,
    lock_connection,
    open_sealed_token,
    open_token,
    put_token,
)
from apiauth.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    OAuthFlowError,
    ProviderError,
)
from apiauth.oauth import protocol
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import ParamError, Provider
from apiauth.store.db import transaction
from apiauth.store.models import AuthState, Connection, ConnectSession, Member, Site, new_id
from apiauth.vault import record_aad

log = logging.getLogger(__name__)

STATE_TTL = timedelta(minutes=10)
MAX_SCOPES = 100
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,200}$")


@dataclass(frozen=True)
class ConnectionView:
    provider: str
    status: str
    requested_scopes: tuple[str, ...]
    granted_scopes: tuple[str, ...]
    account_id: str | None
    account_login: str | None
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, repr=False)
class SecretView:
    provider: str
    bearer_token: str | None
    token_type: str
    granted_scopes: tuple[str, ...]
    is_logged_in: bool
    expires_at: datetime | None
    account_id: str | None
    account_login: str | None
    extra: dict[str, str]

    def __repr__(self) -> str:
        return f"SecretView(provider={self.provider!r}, is_logged_in={self.is_logged_in})"

    def to_json(self) -> dict[str, Any]:
        """Exactly the shape of SPEC §2 `GET /api/v1/secrets`."""
        return {
            "provider": self.provider,
            "bearer_token": self.bearer_token,
            "token_type": self.token_type,
            "granted_scopes": list(self.granted_scopes),
            "is_logged_in": self.is_logged_in,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z")
            if self.expires_at
            else None,
            "account": {"id": self.account_id, "login": self.account_login},
            "extra": self.extra,
        }


@dataclass(frozen=True)
class AuthorizationStart:
    authorize_url: str
    state_id: str
    expires_at: datetime


@dataclass(frozen=True)
class CompletedAuthorization:
    site_name: str
    connection: ConnectionView
    return_to: str | None
    # A visitor's flow goes back to the site's own page (its connect session's return URL).
    return_url: str | None = None


def _view(connection: Connection) -> ConnectionView:
    return ConnectionView(
        provider=connection.provider,
        status=connection.status,
        requested_scopes=tuple(connection.requested_scopes),
        granted_scopes=tuple(connection.granted_scopes),
        account_id=connection.account_id,
        account_login=connection.account_login,
        expires_at=connection.expires_at,
        last_refreshed_at=connection.last_refreshed_at,
        last_error=connection.last_error,
        created_at=connection.created_at,
        updated_at=connection.updated_at,
    )


connection_view = _view


def _token_aad(connection_id: str) -> bytes:
    return record_aad("connections", connection_id, "token_enc")


def provider_named(broker: Broker, name: str) -> Provider:
    try:
        return broker.catalog[name]
    except KeyError:
        raise NotFound(
            f"no provider named {name!r}; known: {', '.join(broker.catalog.names())}"
        ) from None


def is_local_path(path: str) -> bool:
    """A path on this server: no scheme, no host, no `//` or `\\` tricks (no open redirect)."""
    return (
        path.startswith("/")
        and not path.startswith("//")
        and "\\" not in path
        and len(path) <= 2048
        and all(ch.isprintable() and not ch.isspace() for ch in path)
    )


def validate_scopes(provider: Provider, scopes: Sequence[str] | None) -> tuple[str, ...]:
    if scopes is None:
        return provider.default_scopes
    if len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"at most {MAX_SCOPES} scopes may be requested")
    chosen: list[str] = []
    for scope in scopes:
        if not _SCOPE_TOKEN.match(scope):
            raise InvalidInput(f"{scope[:50]!r} is not a valid OAuth scope name")
        if scope not in chosen:
            chosen.append(scope)
    return tuple(chosen)


def start_connection(
    broker: Broker,
    member: MemberView | None,
    site_name: str,
    provider_name: str,
    scopes: Sequence[str] | None = None,
    *,
    return_to: str | None = None,
    params: Mapping[str, str] | None = None,
    visitor_id: str = "",
    connect_session_id: str | None = None,
) -> AuthorizationStart:
    """Begin the authorization-code flow: a single-use `state` bound to the site, the
    provider and the member, and a PKCE verifier where the provider supports it.
    `params` are the provider's declared connection parameters (a Shopify shop).

    A visitor's flow (`visitor_id`, see `visitors.py`) has no member: its connect session
    authorises it, and must be of that site and visitor."""
    provider = provider_named(broker, provider_name)
    chosen = validate_scopes(provider, scopes)
    try:
        given = provider.check_params(params)
    except ParamError as exc:
        raise InvalidInput(f"connection parameter {exc}") from None
    if return_to is not None and not is_local_path(return_to):
        raise InvalidInput("return_to must be a path on this server, such as /sites/my-site")
    team_id = (
        member.team_id
        if member is not None
        else _connect_session_team(broker, connect_session_id, site_name, visitor_id)
    )
    client = client_for(broker, team_id, provider.name)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48) if provider.pkce else None
    now = broker.clock()
    with transaction(broker.sessions) as db:
        site = find_site(db, team_id, site_name)
        state_id = new_id("st")
        db.add(
            AuthState(
                id=state_id,
                state_hash=hash_token(state),
                site_id=site.id,
                provider=provider.name,
                scopes=list(chosen),
                pkce_verifier_enc=broker.vault.seal_text(
                    verifier, record_aad("auth_states", state_id, "pkce_verifier_enc")
                )
                if verifier
                else None,
                params=given or None,
                member_id=member.id if member is not None else None,
                visitor_id=visitor_id or None,
                connect_session_id=connect_session_id,
                return_to=return_to,
                expires_at=now + STATE_TTL,
            )
        )
    url = protocol.authorization_url(
        provider,
        client,
        redirect_uri=broker.settings.redirect_uri,
        scopes=chosen,
        state=state,
        code_verifier=verifier,
        params=given,
    )
    return AuthorizationStart(url, state_id, now + STATE_TTL)


def _connect_session_team(
    broker: Broker, connect_session_id: str | None, site_name: str, visitor_id: str
) -> str:
    """The team of a visitor's flow, whose connect session must match the site and visitor."""
    with broker.sessions() as db:
        found = db.execute(
            select(ConnectSession, Site)
            .join(Site, Site.id == ConnectSession.site_id)
            .where(ConnectSession.id == (connect_session_id or ""))
        ).first()
    if found is None or not visitor_id:
        raise NotFound("a visitor's connection needs a connect session: ask the site for a link")
    session, site = found
    if site.name != site_name or session.visitor_id != visitor_id:
        raise NotFound("this connect session is for another site or visitor")
    return site.team_id


def _visitor_return_url(db: Session, row: AuthState) -> str | None:
    if row.connect_session_id is None:
        return None
    session = db.get(ConnectSession, row.connect_session_id)
    return session.return_url if session else None


def _back_to_start(row: AuthState, message: str, db: Session) -> OAuthFlowError:
    """A known but spent state still knows the page its flow started from: send the person
    back there with the message instead of to a bare error page."""
    failure = OAuthFlowError(message)
    failure.return_to = row.return_to
    failure.return_url = _visitor_return_url(db, row)
    return failure


def _claim_state(broker: Broker, state: str) -> tuple[AuthState, str | None]:
    """Mark the state used, exactly once, whatever happens next; hand out its PKCE verifier
    and erase it, since a used state's verifier is of no use to anyone."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        row = db.scalar(select(AuthState).where(AuthState.state_hash == hash_token(state)))
        if row is None:
            raise OAuthFlowError(
                "this authorization link is not known here: start the connection again"
            )
        if row.used_at is not None:
            raise _back_to_start(
                row, "this authorization link was used already: start the connection again", db
            )
        if row.expires_at <= now:
            raise _back_to_start(
                row,
                "this authorization link expired (they last 10 minutes): "
                "start the connection again",
                db,
            )
        verifier = (
            broker.vault.open_text(
                row.pkce_verifier_enc, record_aad("auth_states", row.id, "pkce_verifier_enc")
            )
            if row.pkce_verifier_enc
            else None
        )
        claimed = db.execute(
            update(AuthState)
            .where(AuthState.id == row.id, AuthState.used_at.is_(None))
            .values(used_at=now, pkce_verifier_enc=None)
        )
        if getattr(claimed, "rowcount", 1) != 1:
            raise OAuthFlowError(
                "this authorization link was used already: start the connection again"
            )
        return row, verifier


def _record_outcome(broker: Broker, state_id: str, outcome: str) -> None:
    with transaction(broker.sessions) as db:
        db.execute(update(AuthState).where(AuthState.id == state_id).values(outcome=outcome))


def complete_authorization(
    broker: Broker,
    *,
    state: str | None,
    code: str | None,
    error: str | None = None,
    error_description: str | None = None,
) -> CompletedAuthorization:
    """The provider sent the user back: check the state, exchange the code, name the account
    and store the connection. On any failure nothing is stored."""
    if not state:
        raise OAuthFlowError("the provider sent the user back without a state parameter")
    auth_state, verifier = _claim_state(broker, state)
    params = {str(k): str(v) for k, v in (auth_state.params or {}).items()}
    provider = provider_named(broker, auth_state.provider)
    try:
        if error:
            detail = f": {error_description[:200]}" if error_description else ""
            if error == "access_denied":
                raise OAuthFlowError(f"access to {provider.display_name} was denied{detail}")
            raise OAuthFlowError(f"{provider.display_name} reported {error[:100]}{detail}")
        if not code:
            raise OAuthFlowError(f"{provider.display_name} sent the user back without a code")
        with broker.sessions() as db:
            site = db.get(Site, auth_state.site_id)
            if site is None:
                raise NotFound("the site of this authorization was deleted")
            site_name, team_id = site.name, site.team_id
            return_url = _visitor_return_url(db, auth_state)
        client = client_for(broker, team_id, provider.name)
        token = protocol.exchange_code(
            broker.http,
            provider,
            client,
            code=code,
            redirect_uri=broker.settings.redirect_uri,
            code_verifier=verifier,
            requested_scopes=auth_state.scopes,
            now=broker.clock(),
            params=params,
        )
        account_id, account_login = protocol.fetch_account(broker.http, provider, token)
        view = _store_new_token(broker, auth_state, token, account_id, account_login)
    except (OAuthFlowError, ProviderError, NotFound) as exc:
        _record_outcome(broker, auth_state.id, exc.message)
        failure = OAuthFlowError(exc.message)
        failure.return_to = auth_state.return_to
        with broker.sessions() as db:
            failure.return_url = _visitor_return_url(db, auth_state)
        raise failure from exc
    _record_outcome(broker, auth_state.id, CONNECTED)
    broker.refresh_wakeup.set()
    return CompletedAuthorization(site_name, view, auth_state.return_to, return_url)


def _store_new_token(
    broker: Broker,
    auth_state: AuthState,
    token: TokenSet,
    account_id: str | None,
    account_login: str | None,
) -> ConnectionView:
    """Insert the connection or, for a re-run flow (new scopes, reconnect), replace its token
    in place: the old token serves until this commit."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        connection = lock_connection(
            db,
            select(Connection).where(
                Connection.site_id == auth_state.site_id,
                Connection.visitor_id == (auth_state.visitor_id or ""),
                Connection.provider == auth_state.provider,
            ),
        )
        created = connection is None
        if connection is None:
            connection = Connection(
                id=new_id("con"),
                site_id=auth_state.site_id,
                visitor_id=auth_state.visitor_id or "",
                provider=auth_state.provider,
                version=0,
                created_at=now,
            )
            db.add(connection)
        connection.status = CONNECTED
        connection.requested_scopes = list(auth_state.scopes)
        connection.granted_scopes = list(token.granted_scopes)
        connection.account_id = account_id
        connection.account_login = account_login
        put_token(broker, connection, token, now)
        connection.last_refreshed_at = None
        connection.last_error = None
        connection.failure_count = 0
        connection.claimed_by = None
        connection.claim_expires_at = None
        connection.version = (connection.version or 0) + 1
        connection.updated_at = now
        db.flush()
        event = "connection.created" if created else "connection.updated"
        detail: dict[str, Any] = {
            "provider": auth_state.provider,
            "granted_scopes": list(token.granted_scopes),
            "account": account_login,
        }
        actor = _actor(db, auth_state.member_id)
        if auth_state.visitor_id:
            detail["visitor_id"] = auth_state.visitor_id
            actor = f"visitor {auth_state.visitor_id}"
        audit.record(db, auth_state.site_id, event, actor, detail)
        site = db.get(Site, auth_state.site_id)
        if site is not None:
            deliveries.enqueue(db, site, event, detail)
        return _view(connection)


def _actor(db: Session, member_id: str | None) -> str:
    if member_id is None:
        return "system"
    member = db.get(Member, member_id)
    return member.email if member else "deleted member"


def list_connections(broker: Broker, member: MemberView, site_name: str) -> list[ConnectionView]:
    with broker.sessions() as db:
        site = find_site(db, member.team_id, site_name)
        rows = db.scalars(
            select(Connection)
            .where(Connection.site_id == site.id, Connection.visitor_id == "")
            .order_by(Connection.provider)
        )
        return [_view(row) for row in rows]


def find_connection(
    db: Session, member: MemberView, site_name: str, provider: str
) -> tuple[Site, Connection]:
    """A site of the member's team and its own connection to `provider` (not a visitor's),
    or NotFound."""
    site = find_site(db, member.team_id, site_name)
    connection = db.scalar(
        select(Connection).where(
            Connection.site_id == site.id,
            Connection.visitor_id == "",
            Connection.provider == provider,
        )
    )
    if connection is None:
        raise NotFound(f"{site_name!r} has no {provider} connection")
    return site, connection


def get_connection(
    broker: Broker, member: MemberView, site_name: str, provider: str
) -> ConnectionView:
    with broker.sessions() as db:
        _site, row = find_connection(db, member, site_name, provider)
        return _view(row)


def authorization_outcome(broker: Broker, state_id: str) -> str | None:
    """What became of a flow started with `start_connection`: None while still open."""
    with broker.sessions() as db:
        state = db.get(AuthState, state_id)
        if state is None:
            raise NotFound("unknown authorization")
        if state.outcome is None and state.expires_at <= broker.clock():
            return "the authorization link expired before it was used"
        return state.outcome


def delete_connection(broker: Broker, member: MemberView, site_name: str, provider: str) -> bool:
    """Revoke at the provider where the catalog says how, then forget the tokens. A provider
    that cannot be reached does not keep a site owner from disconnecting."""
    with broker.sessions() as db:
        site, connection = find_connection(db, member, site_name, provider)
        token = open_token(broker, connection)
    revoked = False
    catalog_entry = broker.catalog.get(provider)
    if token is not None and catalog_entry is not None:
        try:
            revoked = protocol.revoke(
                broker.http, catalog_entry, client_for(broker, member.team_id, provider), token
            )
        except ProviderError as exc:
            log.warning("could not revoke the %s token of %s: %s", provider, site_name, exc)
    with transaction(broker.sessions) as db:
        row = db.get(Connection, connection.id)
        if row is not None:
            db.delete(row)
        detail = {"provider": provider, "revoked_at_provider": revoked}
        audit.record(db, site.id, "connection.deleted", member.email, detail)
        deliveries.enqueue(db, site, "connection.deleted", detail)
    return revoked


class _SecretSource(ConnectionState, Protocol):
    """What a secret is made of: a row of `_SECRET_COLUMNS`, or a `Connection` after a
    refresh."""

    @property
    def provider(self) -> str: ...

    @property
    def granted_scopes(self) -> list[str]: ...

    @property
    def account_id(self) -> str | None: ...

    @property
    def account_login(self) -> str | None: ...


# Built once with bound parameters: the hottest query, only the columns an answer needs, and
# no ORM objects (their loading cost more than the query). Served by the unique index on
# (site_id, visitor_id, provider).
_SECRET_COLUMNS = select(
    Connection.id,
    Connection.provider,
    Connection.status,
    Connection.granted_scopes,
    Connection.account_id,
    Connection.account_login,
    Connection.token_enc,
    Connection.refresh_due_at,
).where(Connection.site_id == bindparam("site_id"), Connection.visitor_id == bindparam("whose"))
_SECRETS = _SECRET_COLUMNS.order_by(Connection.provider)
_SOME_SECRETS = _SECRET_COLUMNS.where(
    Connection.provider.in_(bindparam("providers", expanding=True))
).order_by(Connection.provider)


def read_secrets(
    broker: Broker, caller: SiteCaller, visitor_id: str | None = None
) -> dict[str, SecretView]:
    """Every connected provider of the caller's site (only those a function token names),
    each token refreshed first when it expires within the margin. Whose: `visitor_id` as
    `visitors.visitor_to_read` allowed it; by default the visitor a function token is bound
    to, else the site owner's own. One query; each token is decrypted once per ciphertext
    (`Broker.opened_tokens`), and only the returned ones."""
    return _read_secrets(broker, caller, visitor_id)[0]


def _read_secrets(
    broker: Broker, caller: SiteCaller, visitor_id: str | None
) -> tuple[dict[str, SecretView], datetime | None]:
    """`read_secrets`, and the first moment a token in the answer expires or falls due for a
    refresh (None: never)."""
    whose = caller.visitor_id or "" if visitor_id is None else visitor_id
    params: dict[str, Any] = {"site_id": caller.site_id, "whose": whose}
    if caller.providers is not None:
        params["providers"] = list(caller.providers)
    with broker.engine.connect() as db:
        rows = db.execute(_SECRETS if caller.providers is None else _SOME_SECRETS, params).all()
    due = is_due_for_reader(broker)
    margin = timedelta(seconds=broker.settings.refresh_margin_seconds)
    answer: dict[str, SecretView] = {}
    changes: list[datetime] = []
    for row in rows:
        source: _SecretSource = row
        token = open_sealed_token(broker, row.id, row.token_enc)
        if due(source, token, broker.clock()):
            refreshed = refresh_connection(broker, row.id, due)
            source, token = refreshed.connection, refreshed.token
        answer[source.provider] = _secret(broker, source, token)
        if token is not None and token.expires_at is not None:
            changes.append(token.expires_at)
            if token.refresh_token is not None and source.refresh_due_at is not None:
                # when `due` (is_due_for_reader) turns true
                changes.append(max(token.expires_at - margin, source.refresh_due_at))
    return answer, min(changes, default=None)


def answer_key(caller: SiteCaller, whose: str) -> tuple[str, str]:
    """What a remembered secrets answer is kept under: the token (its id) and whose."""
    return caller.token_id, whose


def remembered_secrets(
    broker: Broker, caller: SiteCaller, whose: str, now: datetime
) -> Answer | None:
    """The encoded answer of `secrets_answer` given within the last second, if nothing made
    it stale since (`read_caches.Answers`): no database, no blocking, so the server asks
    from its event loop."""
    return broker.answers.get(answer_key(caller, whose), now)


def secrets_answer(broker: Broker, caller: SiteCaller, whose: str) -> Answer:
    """`read_secrets` encoded as the body of `GET /api/v1/secrets` (SPEC §2), remembered for
    at most a second and never past a token's expiry or refresh time."""
    began = broker.answers.begin()
    found, changes = _read_secrets(broker, caller, whose)
    body = {name: view.to_json() for name, view in found.items()}
    answer = Answer(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), tuple(found)
    )
    broker.answers.put(answer_key(caller, whose), answer, changes, began)
    return answer


def _secret(broker: Broker, connection: _SecretSource, token: TokenSet | None) -> SecretView:
    now = broker.clock()
    usable = (
        token is not None
        and connection.status != NEEDS_REAUTH
        and (token.expires_at is None or token.expires_at > now)
    )
    return SecretView(
        provider=connection.provider,
        bearer_token=token.access_token if usable and token else None,
        token_type=token.token_type if token else "bearer",
        granted_scopes=tuple(connection.granted_scopes),
        is_logged_in=usable,
        expires_at=token.expires_at if token else None,
        account_id=connection.account_id,
        account_login=connection.account_login,
        extra=dict(token.extra) if token else {},
    )


def refresh_site_connection(
    broker: Broker, member: MemberView, site_name: str, provider: str
) -> ConnectionView:
    """A person asked for a refresh now: done whatever the schedule or backoff says."""
    with broker.sessions() as db:
        _site, connection = find_connection(db, member, site_name, provider)
        token = open_token(broker, connection)
    if connection.status == NEEDS_REAUTH:
        raise Conflict(f"the {provider} connection needs re-authorization: connect it again")
    if token is None or token.refresh_token is None:
        raise Conflict(f"{provider} gave no refresh token: its token cannot be refreshed")
    refreshed = refresh_connection(broker, connection.id, is_refreshable, check_first=False)
    return _view(refreshed.connection)
