"""What a signed-in person sees and changes about their own account: profile, sessions,
sign-in history. Every function takes the user's own id and touches only their rows; another
user's session id is "not found", exactly like an unknown one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound, ValidationError
from portal.models import AuditEvent, AuthSession, Connection, FederatedIdentity, User
from portal.services.credentials import PasswordManagedElsewhere

HISTORY = 20


@dataclass(frozen=True)
class Profile:
    email: str
    display_name: str
    # Where the name and email come from when an identity provider manages them
    # (it sets them again at every sign-in), else None: the person edits them here.
    managed_by: str | None
    has_password: bool
    providers: tuple[str, ...]


def profile(session: Session, user_id: int) -> Profile:
    user = session.get(User, user_id)
    providers = tuple(session.scalars(
        sa.select(Connection.name).join(FederatedIdentity,
                                        FederatedIdentity.connection_id == Connection.id)
        .where(FederatedIdentity.user_id == user_id).order_by(Connection.name)))
    managed_by = providers[0] if providers and user.password_hash is None else None
    return Profile(user.email, user.display_name, managed_by, user.password_hash is not None,
                   providers)


def update_name(session: Session, ctx: audit.Context, user_id: int, name: str) -> User:
    """A person renames themselves, unless their identity provider sets the name."""
    current = profile(session, user_id)
    if current.managed_by:
        raise PasswordManagedElsewhere(
            f"Your name comes from {current.managed_by}; change it there.",
            code="field_managed_by_idp")
    name = (name or "").strip()
    if len(name) > 200 or any(not ch.isprintable() for ch in name):
        raise ValidationError("Your name must be at most 200 printable characters.",
                              code="invalid_name")
    user = session.get(User, user_id)
    if name != user.display_name:
        audit.record(session, ctx, "user.profile", target=f"user:{user.email}",
                     details={"display_name": [user.display_name, name]})
        user.display_name = name
    return user


@dataclass(frozen=True)
class SessionRow:
    id: int
    created_at: datetime
    expires_at: datetime
    ip: str
    user_agent: str
    current: bool


def sessions(session: Session, user_id: int, current_token: str) -> list[SessionRow]:
    """The user's sessions that still work, newest first; ``current`` marks this browser."""
    mine = _digest(current_token or "")
    rows = session.scalars(sa.select(AuthSession)
                           .where(AuthSession.user_id == user_id,
                                  AuthSession.revoked_at.is_(None),
                                  AuthSession.expires_at > utcnow())
                           .order_by(AuthSession.created_at.desc(), AuthSession.id.desc()))
    return [SessionRow(r.id, r.created_at, r.expires_at, r.ip, r.user_agent,
                       r.token_hash == mine) for r in rows]


def revoke_session(session: Session, ctx: audit.Context, user_id: int, session_id: int,
                   current_token: str) -> None:
    row = session.get(AuthSession, session_id)
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        raise NotFound("There is no such session of yours.", code="unknown_session")
    if row.token_hash == _digest(current_token or ""):
        raise ValidationError("This is the session you are using: sign out instead.",
                              code="current_session")
    row.revoked_at = utcnow()
    audit.record(session, ctx, "session.revoke", target=f"session:{row.id}",
                 details={"ip": row.ip, "user_agent": row.user_agent[:100]})


def revoke_others(session: Session, ctx: audit.Context, user_id: int,
                  current_token: str) -> int:
    ended = session.execute(sa.update(AuthSession)
                            .where(AuthSession.user_id == user_id,
                                   AuthSession.revoked_at.is_(None),
                                   AuthSession.token_hash != _digest(current_token or ""))
                            .values(revoked_at=utcnow())).rowcount or 0
    audit.record(session, ctx, "session.revoke_others", target=f"user:{ctx.actor}",
                 details={"sessions_ended": ended})
    return ended


@dataclass(frozen=True)
class SignIn:
    at: datetime
    outcome: str
    method: str
    ip: str
    user_agent: str
    reason: str


def sign_in_history(session: Session, email: str, limit: int = HISTORY) -> list[SignIn]:
    """The latest sign-ins to this account, failed ones included (from the audit trail)."""
    rows = session.scalars(sa.select(AuditEvent)
                           .where(AuditEvent.action == "auth.login",
                                  AuditEvent.target == f"user:{email}")
                           .order_by(AuditEvent.seq.desc()).limit(limit))
    return [SignIn(r.occurred_at, r.outcome, str((r.details or {}).get("method", "")),
                   r.ip, r.user_agent, r.reason) for r in rows]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
