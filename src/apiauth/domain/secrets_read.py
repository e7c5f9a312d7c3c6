"""The hot read: a site's (or a visitor's) connected providers with fresh tokens, as
`GET /api/v1/secrets` answers them (SPEC §2), each token refreshed first when a reader must
not hand it out as it is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, func, select

from apiauth.domain.broker import Broker
from apiauth.domain.read_caches import Answer
from apiauth.domain.refresh import ConnectionState, refresh_if_due
from apiauth.domain.sites import (
    SiteCaller,
    caller_of,
    token_refused,
    tokens_with_sites,
    well_formed_site_token,
)
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import NEEDS_REAUTH, open_sealed_token
from apiauth.oauth.modes import mode_of
from apiauth.oauth.token_set import TokenSet
from apiauth.store.driver import DriverConnections, DriverQuery
from apiauth.store.models import Connection, SiteToken


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
    auth_mode: str = "oauth2"
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

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
            # SPEC §7: every entry names its mode; keys and basic credentials have fields
            # of their own (null for the other modes).
            "auth_mode": self.auth_mode,
            "api_key": self.api_key,
            "username": self.username,
            "password": self.password,
        }


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
    Connection.refresh_not_before,
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
    (`Runtime.opened_tokens`), and only the returned ones."""
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
    return _secrets_of(broker, rows)


def _secrets_of(
    broker: Broker, rows: Sequence[Any]
) -> tuple[dict[str, SecretView], datetime | None]:
    """The answer made of rows of `_SECRET_COLUMNS` (`_read_secrets`)."""
    answer: dict[str, SecretView] = {}
    changes: list[datetime] = []
    for row in rows:
        token = open_sealed_token(broker, row.id, row.token_enc)
        source, token = refresh_if_due(broker, row.id, row, token)
        answer[source.provider] = _secret(broker, source, token)
        if token is not None and token.expires_at is not None:
            changes.append(token.expires_at)
            if mode_of(token).renewable(token) and source.refresh_due_at is not None:
                # when `due` (is_due_for_reader) turns true
                changes.append(
                    max(source.refresh_due_at, source.refresh_not_before or source.refresh_due_at)
                )
    return answer, min(changes, default=None)


# The cold read in one statement: from the token's hash to its site's connections, the
# token's and its parent's validity alongside (`sites.caller_of`). An outer join, so that a
# good token of a site without connections still comes back as one row (with no connection).
_FIRST_READ = (
    tokens_with_sites(*_SECRET_COLUMNS.selected_columns)
    .outerjoin(
        Connection,
        and_(
            Connection.site_id == SiteToken.site_id,
            Connection.visitor_id == func.coalesce(SiteToken.visitor_id, ""),
        ),
    )
    .order_by(Connection.provider)
)


class FirstReads:
    """`_FIRST_READ` on the database driver's own connections (`store.driver`): the one
    query every first read of a token costs, without SQLAlchemy's per-execution work or, on
    PostgreSQL, the pool's ping and rollback around it. When all its connections are busy,
    the engine runs the same statement."""

    def __init__(self, broker: Broker, connections: int = 8) -> None:
        self.engine = broker.engine
        self.query = DriverQuery(broker.engine, _FIRST_READ)
        self.connections = DriverConnections(broker.engine, connections)

    def rows(self, token_hash: str) -> Sequence[Any]:
        params = {"token_hash": token_hash}
        rows = self.connections.run(self.query, params)
        if rows is None:
            with self.engine.connect() as db:
                return db.execute(_FIRST_READ, params).all()
        return rows


def first_read(
    broker: Broker, token: str, reads: FirstReads | None = None
) -> tuple[SiteCaller, Answer]:
    """`authenticate_site_token` and `secrets_answer` of a token's own connections in one
    query (through `reads` when given): a function token's first read, which no memory
    answers. Both answers are remembered as those two remember them. Raises
    `AuthenticationFailed` for a bad token."""
    if not well_formed_site_token(token):
        raise token_refused()
    token_hash = hash_token(token)
    now = broker.clock()
    runtime = broker.runtime
    caller_began, answer_began = runtime.site_tokens.begin(), runtime.answers.begin()
    if reads is not None:
        rows = reads.rows(token_hash)
    else:
        with broker.engine.connect() as db:
            rows = db.execute(_FIRST_READ, {"token_hash": token_hash}).all()
    found = caller_of(rows[0], now) if rows else None
    if found is None:
        raise token_refused()
    caller, token_expires_at = found
    runtime.site_tokens.put(token_hash, caller, token_expires_at, caller_began)
    whose = caller.visitor_id or ""
    # Another token of the site read the same within the last second (the functions of one
    # deploy, each with a token of its own): its answer is this one's.
    answer = remembered_secrets(broker, caller, whose, now)
    if answer is None:
        named = caller.providers
        mine = [r for r in rows if r.id is not None and (named is None or r.provider in named)]
        answer = _encoded(broker, caller, whose, mine, answer_began)
    return caller, answer


def answer_key(caller: SiteCaller, whose: str) -> tuple[str, str, tuple[str, ...] | None]:
    """What a remembered secrets answer is kept under: what it is made of - the site, whose
    connections, and the providers the token names (all: None). Every token of the site that
    reads the same shares it; the token itself is checked before every hit
    (`Runtime.site_tokens`)."""
    return caller.site_id, whose, caller.providers


def remembered_secrets(
    broker: Broker, caller: SiteCaller, whose: str, now: datetime
) -> Answer | None:
    """The encoded answer of `secrets_answer` given within the last second, if nothing made
    it stale since (`read_caches.Answers`): no database, no blocking, so the server asks
    from its event loop."""
    return broker.runtime.answers.get(answer_key(caller, whose), now)


def secrets_answer(broker: Broker, caller: SiteCaller, whose: str) -> Answer:
    """`read_secrets` encoded as the body of `GET /api/v1/secrets` (SPEC §2), remembered for
    at most a second and never past a token's expiry or refresh time."""
    began = broker.runtime.answers.begin()
    params: dict[str, Any] = {"site_id": caller.site_id, "whose": whose}
    if caller.providers is not None:
        params["providers"] = list(caller.providers)
    with broker.engine.connect() as db:
        rows = db.execute(_SECRETS if caller.providers is None else _SOME_SECRETS, params).all()
    return _encoded(broker, caller, whose, rows, began)


def _encoded(
    broker: Broker, caller: SiteCaller, whose: str, rows: Sequence[Any], began: tuple[float, int]
) -> Answer:
    found, changes = _secrets_of(broker, rows)
    body = {name: view.to_json() for name, view in found.items()}
    answer = Answer(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), tuple(found)
    )
    broker.runtime.answers.put(answer_key(caller, whose), answer, changes, began)
    return answer


def _secret(broker: Broker, connection: _SecretSource, token: TokenSet | None) -> SecretView:
    now = broker.clock()
    usable = (
        token is not None
        and connection.status != NEEDS_REAUTH
        and (token.expires_at is None or token.expires_at > now)
    )
    fields = mode_of(token).to_secret(token) if usable and token else None
    return SecretView(
        provider=connection.provider,
        bearer_token=fields.bearer_token if fields else None,
        token_type=token.token_type if token else "bearer",
        granted_scopes=tuple(connection.granted_scopes),
        is_logged_in=usable,
        expires_at=token.expires_at if token else None,
        account_id=connection.account_id,
        account_login=connection.account_login,
        extra=dict(token.extra) if token else {},
        auth_mode=token.auth_mode if token else "oauth2",
        api_key=fields.api_key if fields else None,
        username=fields.username if fields else None,
        password=fields.password if fields else None,
    )
