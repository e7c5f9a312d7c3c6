"""Connections stored without running the OAuth flow: the token set is sealed by the real vault
through the domain's own storage functions (`token_store.put_token`), exactly as a completed
flow stores it. For tests about who may read what, where the flow itself is beside the point
and would only make them slow."""

from __future__ import annotations

from collections.abc import Sequence

from apiauth.domain.broker import Broker
from apiauth.domain.token_store import CONNECTED, put_token
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode
from apiauth.store.db import transaction
from apiauth.store.models import Connection, new_id


def store_connection(
    broker: Broker,
    site_id: str,
    provider: str,
    access_token: str,
    *,
    refresh_token: str | None = None,
    scopes: Sequence[str] = ("read",),
    visitor_id: str = "",
    auth_mode: AuthMode = "oauth2",
) -> str:
    """A connected `provider` for the site (or one of its visitors) whose token never
    expires; returns the row id. A key-based `auth_mode` stores `access_token` as the key
    (basic: the password, with the username `user-<provider>`)."""
    now = broker.clock()
    token = TokenSet(
        access_token=access_token,
        refresh_token=refresh_token,
        token_type="bearer" if auth_mode == "oauth2" else auth_mode,
        expires_at=None,
        granted_scopes=tuple(scopes),
        auth_mode=auth_mode,
        username=f"user-{provider}" if auth_mode == "basic" else None,
    )
    with transaction(broker.sessions) as db:
        connection = Connection(
            id=new_id("con"),
            site_id=site_id,
            visitor_id=visitor_id,
            provider=provider,
            auth_mode=auth_mode,
            status=CONNECTED,
            requested_scopes=list(scopes),
            granted_scopes=list(scopes),
            account_id=f"acct-{provider}",
            account_login=f"login-{provider}",
            version=1,
            created_at=now,
        )
        db.add(connection)
        put_token(broker, connection, token, now)
        return connection.id
