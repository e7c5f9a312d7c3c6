"""First start: a one-time link that creates the owner account from the browser.

`apiauth serve` on a server without members issues a setup token and prints the link. Only
the token's hash is kept (in `server_state`, so any replica accepts the link); the link stops
working once a member exists, however that member was made.
"""

from __future__ import annotations

import hmac
import secrets

from sqlalchemy import delete

from apiauth.domain.broker import Broker
from apiauth.domain.members import (
    MIN_PASSWORD_LENGTH,
    MemberView,
    create_member,
    member_count,
    validate_email,
)
from apiauth.domain.token_format import hash_token
from apiauth.errors import InvalidInput, PermissionDenied
from apiauth.store.db import transaction
from apiauth.store.dialect import rows_matched
from apiauth.store.models import ServerState

SETUP_TOKEN_KEY = "setup_token_hash"  # noqa: S105 (a key name, not a secret)
MAX_TEAM_NAME_LENGTH = 100


def issue_setup_token(broker: Broker) -> str | None:
    """A new setup token when there is no member yet (replacing any earlier one), else None."""
    if member_count(broker):
        return None
    token = secrets.token_urlsafe(32)
    with transaction(broker.sessions) as db:
        db.execute(delete(ServerState).where(ServerState.key == SETUP_TOKEN_KEY))
        db.add(ServerState(key=SETUP_TOKEN_KEY, value=hash_token(token)))
    return token


def setup_token_valid(broker: Broker, token: str | None) -> bool:
    if not token or member_count(broker):
        return False
    with broker.sessions() as db:
        state = db.get(ServerState, SETUP_TOKEN_KEY)
    return state is not None and hmac.compare_digest(state.value, hash_token(token))


def create_owner(
    broker: Broker, token: str | None, email: str, password: str, team_name: str
) -> MemberView:
    """Spend the setup token on the owner account of a new team."""
    email = validate_email(email)
    team_name = team_name.strip()
    if not 1 <= len(team_name) <= MAX_TEAM_NAME_LENGTH:
        raise InvalidInput(f"a team name has 1 to {MAX_TEAM_NAME_LENGTH} characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if not setup_token_valid(broker, token):
        raise PermissionDenied(
            "this setup link is not valid any more: the owner account exists already, or the "
            "server was restarted and printed a new link"
        )
    with transaction(broker.sessions) as db:
        # Spend the token first, so that two browsers racing with one link make one owner.
        gone = db.execute(delete(ServerState).where(ServerState.key == SETUP_TOKEN_KEY))
        if rows_matched(gone) != 1:
            raise PermissionDenied("this setup link was used already")
    return create_member(broker, email, password, role="owner", team_name=team_name)
