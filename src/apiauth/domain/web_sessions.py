"""Dashboard sign-ins: a session token in a cookie, its hash and a CSRF token in `sessions`.

The cookie holds the only copy of the session token; a stolen database gives no way in. The
CSRF token is not a secret from the signed-in person (every form carries it), so it is kept
as is and compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.token_format import TokenKind, generate_token, hash_token, token_kind
from apiauth.store.db import transaction
from apiauth.store.models import Member, Session, Team, new_id

SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True, repr=False)
class WebSession:
    """What a sign-in hands the browser: the cookie value, and the forms' CSRF token."""

    token: str
    csrf_token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"WebSession(expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class SignedIn:
    member: MemberView
    csrf_token: str
    expires_at: datetime

    def csrf_matches(self, posted: str) -> bool:
        return hmac.compare_digest(self.csrf_token.encode(), posted.encode())


def start_session(broker: Broker, member: MemberView) -> WebSession:
    now = broker.clock()
    token = generate_token(TokenKind.SESSION)
    csrf = secrets.token_urlsafe(32)
    expires_at = now + SESSION_LIFETIME
    with transaction(broker.sessions) as db:
        # Expired sessions are pruned by housekeeping, in bounded batches.
        db.add(
            Session(
                id=new_id("sess"),
                member_id=member.id,
                token_hash=hash_token(token),
                csrf_token=csrf,
                created_at=now,
                expires_at=expires_at,
            )
        )
    return WebSession(token, csrf, expires_at)


def signed_in(broker: Broker, token: str | None) -> SignedIn | None:
    """Who holds this session cookie, or None for a missing, unknown or expired one."""
    if not token or token_kind(token) is not TokenKind.SESSION:
        return None
    with broker.sessions() as db:
        row = db.execute(
            select(Session, Member, Team)
            .join(Member, Member.id == Session.member_id)
            .join(Team, Team.id == Member.team_id)
            .where(Session.token_hash == hash_token(token))
        ).first()
    if row is None:
        return None
    session, member, team = row
    if session.expires_at <= broker.clock():
        return None
    view = MemberView(member.id, member.email, member.role, team.id, team.name)
    return SignedIn(view, session.csrf_token, session.expires_at)


def end_session(broker: Broker, token: str | None) -> None:
    if not token:
        return
    with transaction(broker.sessions) as db:
        db.execute(delete(Session).where(Session.token_hash == hash_token(token)))
