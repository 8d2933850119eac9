"""What a signed-in person sees and changes about their own account: profile, sessions,
sign-in history. Every function takes the user's own id and touches only their rows; another
user's session id is "not found", exactly like an unknown one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import Forbidden, NotFound, ValidationError
from portal.models import (
    AuditEvent,
    AuthSession,
    Connection,
    FederatedIdentity,
    User,
    UserToken,
)
from portal.services.credentials import PasswordManagedElsewhere, digest, issue_token

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
    mine = digest(current_token or "")
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
    if row.token_hash == digest(current_token or ""):
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
                                   AuthSession.token_hash != digest(current_token or ""))
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


# -- changing the email address ------------------------------------------------------------

EMAIL_CHANGE = "email_change"


def request_email_change(session: Session, ctx: audit.Context, passwords, user_id: int,
                         new_email: str, password: str, *, hours: int,
                         confirm_link) -> int:
    """Mail a confirmation link to the new address; nothing changes until it is used. The
    current password is required. An address that belongs to another account gets a notice
    instead of a link, and the page answers the same. Returns the message id."""
    from portal.services import outbox
    from portal.services.credentials import home_organization
    from portal.validation import normalize_email
    user = session.get(User, user_id)
    current = profile(session, user_id)
    if current.managed_by:
        raise PasswordManagedElsewhere(
            f"Your email comes from {current.managed_by}; change it there.",
            code="field_managed_by_idp")
    if not passwords.verify(user.password_hash, password or ""):
        raise ValidationError("Your current password is not correct.", code="wrong_password")
    address = normalize_email(new_email)
    if address == user.email:
        raise ValidationError("That is already your email address.", code="same_email")
    from federation import discovery
    if discovery.connections_for_email(session, address):
        raise Forbidden("That address belongs to an organization whose members sign in "
                         "through its identity provider.", code="email_sso")
    org = home_organization(session, user)
    taken = session.scalar(sa.select(User.id).where(User.email == address)) is not None
    audit.record(session, ctx, "user.email_change_request",
                 outcome="failure" if taken else "success", target=f"user:{user.email}",
                 reason="address_taken" if taken else "", details={"new_email": address})
    if taken:
        return outbox.enqueue(session, to=address, template="email_taken", org=org,
                              context={"account": user.email}).id
    token = issue_token(session, user.id, EMAIL_CHANGE, timedelta(hours=hours),
                        email=address)
    return outbox.enqueue(session, to=address, template="email_confirm", org=org,
                          context={"link": confirm_link(token), "hours": hours,
                                   "account": user.email}).id


def open_email_change(session: Session, token: str) -> UserToken:
    from portal.services.credentials import InvalidToken
    row = session.scalar(sa.select(UserToken).where(UserToken.token_hash == digest(token or ""),
                                                    UserToken.purpose == EMAIL_CHANGE))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise InvalidToken()
    return row


def confirm_email_change(session: Session, ctx: audit.Context, token: str,
                         not_me=None) -> tuple[User, int]:
    """Use the link: the account's address becomes the new one, and the old address is told
    (so a hijacked session cannot move an account away silently). Returns the user and the
    notice's message id."""
    from portal.errors import Conflict
    from portal.services import outbox, takeover
    from portal.services.credentials import InvalidToken, home_organization
    row = open_email_change(session, token)
    if session.execute(sa.update(UserToken).where(UserToken.id == row.id,
                                                  UserToken.used_at.is_(None))
                       .values(used_at=utcnow())).rowcount != 1:
        raise InvalidToken()
    user = session.get(User, row.user_id)
    if session.scalar(sa.select(User.id).where(User.email == row.email)) is not None:
        raise Conflict("That address now belongs to another account.", code="duplicate_email")
    old = user.email
    user.email = row.email
    session.flush()
    audit.record(session, ctx.acting_as(user.id, old), "user.email_change",
                 target=f"user:{row.email}", details={"from": old, "to": row.email})
    notice = outbox.enqueue(session, to=old, template="email_changed",
                            org=home_organization(session, user),
                            context={"new_email": row.email,
                                     "when": utcnow().strftime("%Y-%m-%d %H:%M"),
                                     "not_me": takeover.not_me_link(session, user.id, "email",
                                                                    not_me)})
    return user, notice.id
