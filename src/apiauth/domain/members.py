"""Teams, their members and members' personal access tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.domain.token_format import TokenKind, generate_token, hash_token, token_kind
from apiauth.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from apiauth.store.db import transaction
from apiauth.store.models import Member, PersonalToken, Team, new_id

ROLES = ("owner", "member")
DEFAULT_TEAM = "default"
MIN_PASSWORD_LENGTH = 10
_EMAIL = re.compile(r"\A[^@\s]{1,64}@[^@\s]{1,253}\Z")


@dataclass(frozen=True)
class MemberView:
    id: str
    email: str
    role: str
    team_id: str
    team_name: str


def _view(member: Member, team: Team) -> MemberView:
    return MemberView(member.id, member.email, member.role, team.id, team.name)


MAX_EMAIL_LENGTH = 254
MAX_TEAM_NAME_LENGTH = 100


def validate_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:  # (RFC 5321's path limit; `members.email`)
        raise InvalidInput(f"an email address has at most {MAX_EMAIL_LENGTH} characters")
    if not _EMAIL.match(email):
        raise InvalidInput(f"{email!r} is not an email address")
    return email


def create_member(
    broker: Broker,
    email: str,
    password: str | None,
    *,
    role: str | None = None,
    team_name: str | None = None,
) -> MemberView:
    """Add a member. The first member of an empty server owns a new team (`default` unless
    named); later members join the named team, or the only team there is."""
    email = validate_email(email)
    if team_name is not None and not 1 <= len(team_name.strip()) <= MAX_TEAM_NAME_LENGTH:
        raise InvalidInput(f"a team name has 1 to {MAX_TEAM_NAME_LENGTH} characters")
    if role is not None and role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    with transaction(broker.sessions) as db:
        if db.scalar(select(Member.id).where(Member.email == email)):
            raise Conflict(f"a member with the email {email} exists already")
        team = _team_for_new_member(db, team_name)
        first_of_team = not db.scalar(
            select(func.count(Member.id)).where(Member.team_id == team.id)
        )
        member = Member(
            id=new_id("mem"),
            team_id=team.id,
            email=email,
            password_hash=broker.password_hasher.hash(password) if password is not None else None,
            role=role or ("owner" if first_of_team else "member"),
        )
        db.add(member)
        return _view(member, team)


def _team_for_new_member(db: Session, team_name: str | None) -> Team:
    teams = list(db.scalars(select(Team).order_by(Team.created_at)))
    if team_name is not None:
        for team in teams:
            if team.name == team_name:
                return team
        team = Team(id=new_id("team"), name=team_name)
        db.add(team)
        db.flush()
        return team
    if not teams:
        team = Team(id=new_id("team"), name=DEFAULT_TEAM)
        db.add(team)
        db.flush()
        return team
    if len(teams) > 1:
        names = ", ".join(t.name for t in teams)
        raise InvalidInput(f"there are several teams ({names}); say which one with --team")
    return teams[0]


def get_member(broker: Broker, email: str | None = None) -> MemberView:
    """A member by email, or without one the owner of the only team (what the CLI acts as)."""
    with broker.sessions() as db:
        if email is not None:
            row = db.execute(
                select(Member, Team)
                .join(Team, Team.id == Member.team_id)
                .where(Member.email == validate_email(email))
            ).first()
            if row is None:
                raise NotFound(f"no member with the email {email}")
            return _view(row[0], row[1])
        rows = db.execute(
            select(Member, Team)
            .join(Team, Team.id == Member.team_id)
            .where(Member.role == "owner")
            .order_by(Member.created_at)
        ).all()
        if not rows:
            raise NotFound(
                "there is no member yet: create the owner first with "
                "`apiauth users create EMAIL --password-stdin`"
            )
        if len({row[1].id for row in rows}) > 1:
            raise InvalidInput("there are several teams: say which member acts with --member")
        return _view(rows[0][0], rows[0][1])


def verify_password(broker: Broker, email: str, password: str) -> MemberView:
    with broker.sessions() as db:
        row = db.execute(
            select(Member, Team)
            .join(Team, Team.id == Member.team_id)
            .where(Member.email == email.strip().lower())
        ).first()
    failure = AuthenticationFailed("wrong email or password")
    if row is None or row[0].password_hash is None:
        broker.password_hasher.hash(password)  # same work whether or not the member exists
        raise failure
    try:
        broker.password_hasher.verify(row[0].password_hash, password)
    except (VerificationError, InvalidHashError):
        raise failure from None
    return _view(row[0], row[1])


def create_personal_token(broker: Broker, member: MemberView, name: str) -> str:
    """A new personal access token for the REST API; the caller shows it once."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("a token name has 1 to 100 characters")
    token = generate_token(TokenKind.PERSONAL)
    with transaction(broker.sessions) as db:
        db.add(
            PersonalToken(
                id=new_id("pat"), member_id=member.id, name=name, token_hash=hash_token(token)
            )
        )
    return token


def authenticate_personal_token(broker: Broker, token: str) -> MemberView:
    if token_kind(token) is not TokenKind.PERSONAL:
        raise AuthenticationFailed("a valid personal access token is required")
    with broker.sessions() as db:
        row = db.execute(
            select(Member, Team)
            .join(PersonalToken, PersonalToken.member_id == Member.id)
            .join(Team, Team.id == Member.team_id)
            .where(PersonalToken.token_hash == hash_token(token))
            .where(PersonalToken.revoked_at.is_(None))
        ).first()
    if row is None:
        raise AuthenticationFailed("a valid personal access token is required")
    return _view(row[0], row[1])


def member_count(broker: Broker) -> int:
    with broker.sessions() as db:
        return db.scalar(select(func.count(Member.id))) or 0


def require_owner(member: MemberView, action: str) -> None:
    """Owners manage the team (OAuth apps, members); `action` completes "Only team owners can"."""
    if member.role != "owner":
        raise PermissionDenied(f"Only team owners can {action}; ask an owner of {member.team_name}")


def list_members(broker: Broker, member: MemberView) -> list[MemberView]:
    """The members of the caller's team, oldest first."""
    with broker.sessions() as db:
        team = db.get(Team, member.team_id)
        if team is None:
            raise NotFound("the team no longer exists")
        rows = db.scalars(
            select(Member).where(Member.team_id == team.id).order_by(Member.created_at)
        )
        return [_view(row, team) for row in rows]


def add_member(
    broker: Broker, owner: MemberView, email: str, password: str, role: str = "member"
) -> MemberView:
    """An owner adds someone to their own team, with a first password to pass on."""
    require_owner(owner, "add members")
    return create_member(broker, email, password, role=role, team_name=owner.team_name)


def _team_member(db: Session, owner: MemberView, member_id: str) -> Member:
    row = db.scalar(select(Member).where(Member.id == member_id, Member.team_id == owner.team_id))
    if row is None:
        raise NotFound("no such member in this team")
    return row


def _other_owners(db: Session, team_id: str, member_id: str) -> int:
    return (
        db.scalar(
            select(func.count(Member.id)).where(
                Member.team_id == team_id, Member.role == "owner", Member.id != member_id
            )
        )
        or 0
    )


def set_role(broker: Broker, owner: MemberView, member_id: str, role: str) -> None:
    """Change a member's role; a team always keeps at least one owner."""
    require_owner(owner, "change roles")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    with transaction(broker.sessions) as db:
        row = _team_member(db, owner, member_id)
        if row.role == "owner" and role != "owner" and not _other_owners(db, row.team_id, row.id):
            raise Conflict("a team needs at least one owner: make someone else owner first")
        row.role = role


def remove_member(broker: Broker, owner: MemberView, member_id: str) -> None:
    """Remove a member (their sessions and tokens go with them); never the last owner."""
    require_owner(owner, "remove members")
    with transaction(broker.sessions) as db:
        row = _team_member(db, owner, member_id)
        if row.role == "owner" and not _other_owners(db, row.team_id, row.id):
            raise Conflict("a team needs at least one owner: make someone else owner first")
        db.delete(row)
