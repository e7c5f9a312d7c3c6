"""The authorization-code flow of a connection: start it (a single-use `state` bound to the
site, the provider and whoever started it; PKCE where the provider supports it), and finish it
when the provider sends the person back (exchange the code, name the account, store the
connection). On any failure nothing is stored.

Every flow is bound to one browser (RFC 6749 §10.12, OAuth 2.0 Security BCP §4.7): the one
that holds the flow's binding secret in the `apiauth_flow_<state id>` cookie. A flow started
from a browser (a dashboard form, a visitor's connect link) gets the cookie in the answer that
sends the browser to the provider. A flow started from the API or the CLI first sends the
person to apiauth's own page (`continue_url`), which names the site, the team, the provider
and who started it; pressing Continue there binds that browser and only then goes to the
provider. A callback from a browser without the binding is refused and stores nothing, so a
link started by one party cannot connect the account of whoever else clicks it."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from apiauth.domain import audit, deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.connections import ConnectionView, connection_view
from apiauth.domain.members import MemberView
from apiauth.domain.oauth_apps import client_for, provider_for
from apiauth.domain.sites import find_site
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import CONNECTED, lock_connection, put_token
from apiauth.errors import InvalidInput, NotFound, OAuthFlowError, ProviderError
from apiauth.oauth import github_app, protocol
from apiauth.oauth.authorization_response import check_issuer
from apiauth.oauth.modes import PASTED_FIELDS
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.oauth.untrusted_json import printable
from apiauth.providers import KEY_MODES, MACHINE_MODES, ParamError, Provider
from apiauth.store.db import transaction
from apiauth.store.dialect import rows_matched
from apiauth.store.models import (
    AuthState,
    Connection,
    ConnectSession,
    Member,
    Site,
    Team,
    new_id,
)
from apiauth.vault import record_aad

log = logging.getLogger(__name__)

STATE_TTL = timedelta(minutes=10)

MAX_SCOPES = 100
MAX_SCOPE_LENGTH = 200

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]{1,200}\Z")


BINDING_COOKIE_PREFIX = "apiauth_flow_"


def binding_cookie_name(state_id: str) -> str:
    return BINDING_COOKIE_PREFIX + state_id


@dataclass(frozen=True)
class AuthorizationStart:
    """`authorize_url` is what the person opens: the provider's URL when the flow is bound to
    the browser already (`binding` is then the cookie's value), else apiauth's Continue page.
    `provider_url` is the provider's URL either way (for the code that set the binding)."""

    authorize_url: str
    state_id: str
    expires_at: datetime
    provider_url: str = ""
    binding: str | None = None


@dataclass(frozen=True)
class FlowToContinue:
    """What apiauth's Continue page shows before the browser goes to the provider."""

    site_name: str
    team_name: str
    provider_name: str
    provider_display_name: str
    started_by: str
    scopes: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class BrowserBinding:
    state_id: str
    binding: str
    provider_url: str
    expires_at: datetime


class FlowNotBound(OAuthFlowError):
    """The browser that came back from the provider is not the one the flow was bound to."""

    status = 403
    code = "flow_not_bound"


@dataclass(frozen=True)
class CompletedAuthorization:
    site_name: str
    connection: ConnectionView
    return_to: str | None
    # A visitor's flow goes back to the site's own page (its connect session's return URL).
    return_url: str | None = None


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
        if len(scope) > MAX_SCOPE_LENGTH:
            raise InvalidInput(f"a scope has at most {MAX_SCOPE_LENGTH} characters")
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
    bind_browser: bool = False,
) -> AuthorizationStart:
    """Begin the authorization-code flow: a single-use `state` bound to the site, the
    provider and the member, and a PKCE verifier where the provider supports it.
    `params` are the provider's declared connection parameters (a Shopify shop).

    `bind_browser`: the caller is answering a browser and sets the binding cookie itself;
    otherwise the flow starts at apiauth's Continue page (see the module's docstring).

    A visitor's flow (`visitor_id`, see `visitors.py`) has no member: its connect session
    authorises it, and must be of that site and visitor."""
    team_id = (
        member.team_id
        if member is not None
        else _connect_session_team(broker, connect_session_id, site_name, visitor_id)
    )
    provider = provider_for(broker, team_id, provider_name)
    if provider.auth_mode in KEY_MODES:
        fields = " and ".join(PASTED_FIELDS[provider.auth_mode])
        raise InvalidInput(
            f"{provider.display_name} connects with pasted credentials, not a consent flow: "
            f"send `credentials` with {fields}"
        )
    if provider.auth_mode in MACHINE_MODES:
        raise InvalidInput(
            f"{provider.display_name} needs no consent flow: its token is minted for the site "
            "when the connection is made (machine_connections.connect_client)"
        )
    chosen = validate_scopes(provider, scopes)
    try:
        given = provider.check_params(params)
    except ParamError as exc:
        raise InvalidInput(f"connection parameter {exc}") from None
    if return_to is not None and not is_local_path(return_to):
        raise InvalidInput("return_to must be a path on this server, such as /sites/my-site")
    client = client_for(broker, team_id, provider.name)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48) if provider.pkce else None
    if provider.auth_mode == "github_app":
        # The person installs the team's App; GitHub's setup URL brings `state` back.
        try:
            url = github_app.install_url(provider, client, state)
        except ProviderError as exc:
            raise InvalidInput(exc.message) from None
    else:
        url = protocol.authorization_url(
            provider,
            client,
            redirect_uri=broker.settings.redirect_uri,
            scopes=chosen,
            state=state,
            code_verifier=verifier,
            params=given,
        )
    binding = secrets.token_urlsafe(32) if bind_browser else None
    continue_token = None if bind_browser else secrets.token_urlsafe(32)
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
                binding_hash=hash_token(binding) if binding else None,
                continue_hash=hash_token(continue_token) if continue_token else None,
                authorize_url_enc=broker.vault.seal_text(
                    url, record_aad("auth_states", state_id, "authorize_url_enc")
                )
                if continue_token
                else None,
                expires_at=now + STATE_TTL,
            )
        )
    if continue_token is None:
        return AuthorizationStart(url, state_id, now + STATE_TTL, url, binding)
    return AuthorizationStart(continue_url(broker, continue_token), state_id, now + STATE_TTL, url)


CONTINUE_PATH = "/oauth/continue/"


def continue_url(broker: Broker, token: str) -> str:
    return broker.settings.public_url.rstrip("/") + CONTINUE_PATH + token


def _open_flow_by_token(db: Session, broker: Broker, token: str) -> AuthState:
    row = (
        db.scalar(select(AuthState).where(AuthState.continue_hash == hash_token(token)))
        if 20 <= len(token) <= 100
        else None
    )
    if row is None:
        raise NotFound("this connection link is not known here: start the connection again")
    if row.used_at is not None or row.expires_at <= broker.clock():
        raise OAuthFlowError(
            "this connection link was used or expired (they last 10 minutes): "
            "start the connection again"
        )
    if row.binding_hash is not None:
        raise OAuthFlowError(
            "this connection link was continued in a browser already; "
            "only that browser can finish it: start the connection again"
        )
    return row


def flow_to_continue(broker: Broker, token: str) -> FlowToContinue:
    """What an API- or CLI-started flow's link shows before anyone is sent to the provider.
    Showing it changes nothing (link previews fetch pages too)."""
    with broker.sessions() as db:
        row = _open_flow_by_token(db, broker, token)
        site = db.get(Site, row.site_id)
        if site is None:
            raise NotFound("the site of this connection was deleted")
        team = db.get(Team, site.team_id)
        started_by = _actor(db, row.member_id)
        if row.visitor_id:
            started_by = f"visitor {row.visitor_id}"
        site_name, team_id, team_name = site.name, site.team_id, team.name if team else ""
    provider = provider_for(broker, team_id, row.provider)
    return FlowToContinue(
        site_name,
        team_name,
        provider.name,
        provider.display_name,
        started_by,
        tuple(row.scopes),
        row.expires_at,
    )


def continue_in_browser(broker: Broker, token: str) -> BrowserBinding:
    """Continue was pressed: bind the flow to this browser (once; compare-and-set, so of two
    browsers pressing at once only one gets the provider's URL) and hand out that URL."""
    binding = secrets.token_urlsafe(32)
    with transaction(broker.sessions) as db:
        row = _open_flow_by_token(db, broker, token)
        if row.authorize_url_enc is None:
            raise OAuthFlowError("this connection link cannot be continued: start again")
        url = broker.vault.open_text(
            row.authorize_url_enc, record_aad("auth_states", row.id, "authorize_url_enc")
        )
        claimed = db.execute(
            update(AuthState)
            .where(AuthState.id == row.id, AuthState.binding_hash.is_(None))
            .values(binding_hash=hash_token(binding), authorize_url_enc=None)
        )
        if rows_matched(claimed) != 1:
            raise OAuthFlowError(
                "this connection link was continued in a browser already; "
                "only that browser can finish it: start the connection again"
            )
        return BrowserBinding(row.id, binding, url, row.expires_at)


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


def _claim_state(
    broker: Broker, state: str, bindings: Mapping[str, str]
) -> tuple[AuthState, str | None]:
    """Mark the state used, exactly once, whatever happens next; hand out its PKCE verifier
    and erase it, since a used state's verifier is of no use to anyone.

    A browser without the flow's binding spends the state too: its code belongs to whoever
    consented in that browser, and must not be replayable from the browser that has it."""
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
        if rows_matched(claimed) != 1:
            raise OAuthFlowError(
                "this authorization link was used already: start the connection again"
            )
        if not _holds_binding(row, bindings):
            message = (
                "this connection was started in another browser, so it cannot be finished "
                "in this one and nothing was connected. If you started it, start it again "
                "here; if you did not, someone may have tried to connect your account to "
                "their site."
            )
            if row.binding_hash is None:
                message = (
                    "this connection was not continued from apiauth's page first, so nothing "
                    "was connected: open the link the connection started with and press "
                    "Continue"
                )
            db.execute(update(AuthState).where(AuthState.id == row.id).values(outcome=message))
            refused = message
        else:
            refused = None
    if refused is not None:
        raise FlowNotBound(refused)  # after the commit: the state stays spent
    return row, verifier


def _holds_binding(row: AuthState, bindings: Mapping[str, str]) -> bool:
    presented = bindings.get(binding_cookie_name(row.id), "")
    if row.binding_hash is None or not presented or len(presented) > 100:
        return False
    return secrets.compare_digest(hash_token(presented), row.binding_hash)


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
    iss: str | None = None,
    bindings: Mapping[str, str] | None = None,
    callback: Mapping[str, str] | None = None,
) -> CompletedAuthorization:
    """The provider sent the user back: check the state, that this browser holds the flow's
    binding (`bindings`: its cookies) and `iss` (RFC 9207), exchange the code, name the
    account and store the connection. On any failure nothing is stored.
    `callback` is the whole callback query, for values the catalog learns from it."""
    if not state:
        raise OAuthFlowError("the provider sent the user back without a state parameter")
    auth_state, verifier = _claim_state(broker, state, bindings or {})
    params = {str(k): str(v) for k, v in (auth_state.params or {}).items()}
    with broker.sessions() as db:
        site = db.get(Site, auth_state.site_id)
        team_id = site.team_id if site is not None else ""
    provider = provider_for(broker, team_id, auth_state.provider)
    try:
        check_issuer(provider, iss)
        if error:
            detail = f": {error_description[:200]}" if error_description else ""
            if error == "access_denied":
                raise OAuthFlowError(f"access to {provider.display_name} was denied{detail}")
            raise OAuthFlowError(f"{provider.display_name} reported {error[:100]}{detail}")
        installing = provider.auth_mode == "github_app"
        if not code and not installing:
            raise OAuthFlowError(f"{provider.display_name} sent the user back without a code")
        with broker.sessions() as db:
            site = db.get(Site, auth_state.site_id)
            if site is None:
                raise NotFound("the site of this authorization was deleted")
            site_name, team_id = site.name, site.team_id
            return_url = _visitor_return_url(db, auth_state)
        client = client_for(broker, team_id, provider.name)
        if installing:
            token, account_id, account_login = _installed(broker, provider, client, callback)
        else:
            assert code is not None
            token = protocol.exchange_code(
                broker.http_for(provider),
                provider,
                client,
                code=code,
                redirect_uri=broker.settings.redirect_uri,
                code_verifier=verifier,
                requested_scopes=auth_state.scopes,
                now=broker.clock(),
                params=params,
                callback=callback,
            )
            account_id, account_login, token = protocol.fetch_account_and_learn(
                broker.http_for(provider), provider, token
            )
        view = _store_new_token(broker, auth_state, token, account_id, account_login)
    except (OAuthFlowError, ProviderError, NotFound) as exc:
        _record_outcome(broker, auth_state.id, exc.message)
        failure = OAuthFlowError(exc.message)
        failure.return_to = auth_state.return_to
        with broker.sessions() as db:
            failure.return_url = _visitor_return_url(db, auth_state)
        raise failure from exc
    _record_outcome(broker, auth_state.id, CONNECTED)
    broker.runtime.refresh_wakeup.set()
    return CompletedAuthorization(site_name, view, auth_state.return_to, return_url)


def _installed(
    broker: Broker,
    provider: Provider,
    client: ClientCredentials,
    callback: Mapping[str, str] | None,
) -> tuple[TokenSet, str | None, str | None]:
    """A GitHub App was installed (the setup URL's `installation_id`, `setup_action`): check
    with the App's JWT that the installation is the App's, and mint its first token. The id
    is taken only from the browser the flow is bound to, and only if the App sees it."""
    query = callback or {}
    if query.get("setup_action") == "request":
        raise OAuthFlowError(
            f"{provider.display_name}: the installation awaits an organization owner's "
            "approval; connect again once it is approved"
        )
    installation_id = github_app.check_installation_id(query.get("installation_id"))
    http, now = broker.http_for(provider), broker.clock()
    found = github_app.find_installation(http, provider, client, installation_id, now=now)
    seed = TokenSet("", None, "bearer", None, (), found.extra(), auth_mode="github_app")
    token = github_app.mint_installation_token(http, provider, client, seed, now=now)
    return token, found.account_id or None, found.account_login or None


def _store_new_token(
    broker: Broker,
    auth_state: AuthState,
    token: TokenSet,
    account_id: str | None,
    account_login: str | None,
) -> ConnectionView:
    with broker.sessions() as db:
        actor = _actor(db, auth_state.member_id)
    return store_new_connection(
        broker,
        NewConnection(
            site_id=auth_state.site_id,
            visitor_id=auth_state.visitor_id or "",
            provider=auth_state.provider,
            requested_scopes=tuple(auth_state.scopes),
            actor=f"visitor {auth_state.visitor_id}" if auth_state.visitor_id else actor,
        ),
        token,
        account_id,
        account_login,
    )


# `connections.account_id` / `account_login`: a provider chooses these, so a longer value is
# cut rather than refused (it names the account; it is not a credential).
MAX_ACCOUNT_FIELD_LENGTH = 255


def bounded_account_field(value: str | None) -> str | None:
    # Printable too: PostgreSQL stores no NUL in text.
    return None if value is None else printable(value, MAX_ACCOUNT_FIELD_LENGTH)


@dataclass(frozen=True)
class NewConnection:
    """Whose connection a new credential makes, and who made it (for the audit log)."""

    site_id: str
    visitor_id: str
    provider: str
    requested_scopes: tuple[str, ...]
    actor: str


def store_new_connection(
    broker: Broker,
    new: NewConnection,
    token: TokenSet,
    account_id: str | None,
    account_login: str | None,
) -> ConnectionView:
    """Insert the connection or, for a re-run flow (new scopes, reconnect, a new key),
    replace its token in place: the old token serves until this commit. Any auth mode."""
    now = broker.clock()
    with transaction(broker.sessions) as db:
        connection = lock_connection(
            db,
            select(Connection).where(
                Connection.site_id == new.site_id,
                Connection.visitor_id == new.visitor_id,
                Connection.provider == new.provider,
            ),
        )
        created = connection is None
        if connection is None:
            connection = Connection(
                id=new_id("con"),
                site_id=new.site_id,
                visitor_id=new.visitor_id,
                provider=new.provider,
                version=0,
                created_at=now,
            )
            db.add(connection)
        connection.status = CONNECTED
        connection.auth_mode = token.auth_mode
        connection.requested_scopes = list(new.requested_scopes)
        connection.granted_scopes = list(token.granted_scopes)
        # What a provider's who-am-I answered, cut to its columns (VARCHAR(255)).
        connection.account_id = bounded_account_field(account_id)
        connection.account_login = bounded_account_field(account_login)
        put_token(broker, connection, token, now)
        connection.last_refreshed_at = None
        connection.last_error = None
        connection.failure_count = 0
        connection.degraded_since = None
        connection.refresh_not_before = None
        connection.claimed_by = None
        connection.claim_expires_at = None
        connection.version = (connection.version or 0) + 1
        connection.updated_at = now
        db.flush()
        event = "connection.created" if created else "connection.updated"
        detail: dict[str, Any] = {
            "provider": new.provider,
            "granted_scopes": list(token.granted_scopes),
            "account": connection.account_login,
        }
        if token.auth_mode != "oauth2":
            detail["auth_mode"] = token.auth_mode
        if new.visitor_id:
            detail["visitor_id"] = new.visitor_id
        audit.record(db, new.site_id, event, new.actor, detail)
        site = db.get(Site, new.site_id)
        if site is not None:
            deliveries.enqueue(broker, db, site, event, detail)
        return connection_view(connection)


def _actor(db: Session, member_id: str | None) -> str:
    if member_id is None:
        return "system"
    member = db.get(Member, member_id)
    return member.email if member else "deleted member"


def authorization_outcome(broker: Broker, state_id: str) -> str | None:
    """What became of a flow started with `start_connection`: None while still open."""
    with broker.sessions() as db:
        state = db.get(AuthState, state_id)
        if state is None:
            raise NotFound("unknown authorization")
        if state.outcome is None and state.expires_at <= broker.clock():
            return "the authorization link expired before it was used"
        return state.outcome
