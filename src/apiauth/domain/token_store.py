"""A connection's token set at rest: sealed to its row, with the times that say when it must
be refreshed (or, for tokens that never expire, checked)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.oauth.token_set import TokenSet
from apiauth.store.models import Connection
from apiauth.vault import record_aad

CONNECTED = "connected"
REFRESHING = "refreshing"
NEEDS_REAUTH = "needs_reauth"

MAX_JITTER = timedelta(seconds=60)


def _token_aad(connection_id: str) -> bytes:
    return record_aad("connections", connection_id, "token_enc")


def open_token(broker: Broker, connection: Connection) -> TokenSet | None:
    return open_sealed_token(broker, connection.id, connection.token_enc)


def open_sealed_token(
    broker: Broker, connection_id: str, blob: bytes | None, *, remember: bool = True
) -> TokenSet | None:
    """A connection's token set from its row id and `token_enc`, opened once per ciphertext.
    `remember=False` for a token about to be replaced (a refresh): the memory is the read
    path's, and a refresher process alone would fill it for nothing."""
    if blob is None:
        return None
    opened = broker.opened_tokens
    token = opened.get((connection_id, blob), broker.clock())
    if token is None:
        token = TokenSet.from_json(broker.vault.open_json(blob, _token_aad(connection_id)))
        if remember:
            opened.put((connection_id, blob), token, None, opened.begin())
    return token


def seal_token(broker: Broker, connection_id: str, token: TokenSet) -> bytes:
    """The `token_enc` of a connection row holding this token set."""
    return broker.vault.seal_json(token.to_json(), _token_aad(connection_id))


def put_token(broker: Broker, connection: Connection, token: TokenSet, now: datetime) -> None:
    """Seal the token set into the row and schedule its next refresh (or check)."""
    connection.token_enc = seal_token(broker, connection.id, token)
    connection.expires_at = token.expires_at
    connection.refresh_due_at = refresh_due_at(broker, token, now)


def refresh_due_at(broker: Broker, token: TokenSet, now: datetime) -> datetime | None:
    """`expires_at - margin`, a little earlier at random so that tokens issued together are
    not all refreshed in the same second. A refreshable token without an expiry (Salesforce
    gives none) is checked at the who-am-I endpoint on a schedule instead, so that it never
    silently dies; a token without a refresh token has nothing to schedule."""
    if not token.refresh_token:
        return None
    if token.expires_at is None:
        return now + timedelta(seconds=broker.settings.validate_interval_seconds)
    margin = timedelta(seconds=broker.settings.refresh_margin_seconds)
    lifetime = max(token.expires_at - now, timedelta(0))
    jitter = random.uniform(0, min(MAX_JITTER, lifetime / 10).total_seconds())  # noqa: S311
    return token.expires_at - margin - timedelta(seconds=jitter)


def lock_connection(db: Session, query: Any) -> Connection | None:
    """Read a connection row for update: a row lock on PostgreSQL; SQLite has one writer."""
    if db.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    result: Connection | None = db.scalar(query)
    return result
