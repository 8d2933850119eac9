"""Password reset (by email) and change (signed in).

Reset links carry a random token whose SHA-256 alone is stored. A token works once (one
conditional UPDATE of ``used_at``), only until it expires, and asking for a new link spends
the older ones. Asking for a link answers the same whatever the address: the difference is
only in the mailbox (a link, a note that the password is managed by the person's identity
provider, or nothing at all). Setting a password through a link ends every session of the
account; changing it while signed in ends every other session.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.errors import TrellisError, ValidationError
from portal.models import (
    AuthSession,
    Connection,
    FederatedIdentity,
    OutboxMessage,
    User,
    UserStatus,
    UserToken,
)
from portal.passwords import Passwords, check_new_password
from portal.services import outbox, users
from portal.throttle import LoginThrottle
from portal.validation import normalize_email

RESET = "password_reset"


class InvalidToken(TrellisError):
    status = 400
    code = "invalid_token"
    message = ("This link has expired or was already used. Ask for a new one; it works "
               "once, for a short time.")


class PasswordManagedElsewhere(TrellisError):
    status = 409
    code = "password_managed_by_idp"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user_id: int, purpose: str, lifetime: timedelta,
                email: str = "") -> str:
    """A new single-use token for a mailed link; older unused ones of the same purpose stop
    working (one working link at a time). Only its SHA-256 is stored."""
    now = utcnow()
    session.execute(sa.update(UserToken).where(
        UserToken.user_id == user_id, UserToken.purpose == purpose,
        UserToken.used_at.is_(None)).values(used_at=now))
    token = secrets.token_urlsafe(32)
    session.add(UserToken(user_id=user_id, purpose=purpose, email=email,
                          token_hash=digest(token), created_at=now,
                          expires_at=now + lifetime))
    return token


def request_reset(session: Session, ctx: audit.Context, email: str, *, minutes: int,
                  reset_link: Callable[[str], str], sign_in_link: str) -> OutboxMessage | None:
    """Mail a reset link to an active local account; the note that the password is managed
    elsewhere to an account without a local password; nothing to anyone else. The caller
    answers the same in every case."""
    email = normalize_email(email)
    user = session.scalar(sa.select(User).where(User.email == email))
    if user is None or user.status != UserStatus.ACTIVE:
        audit.record(session, ctx, "password.reset_request", outcome="failure",
                     target=f"user:{email}",
                     reason="unknown_user" if user is None else f"user_{user.status.value}")
        return None
    if outbox.recently_written(session, email, ("password_reset", "password_managed")):
        audit.record(session, ctx, "password.reset_request", outcome="failure",
                     target=f"user:{email}", reason="recently_sent")
        return None  # the link sent a moment ago still works
    org = home_organization(session, user)
    if user.password_hash is None:
        provider = managing_provider(session, user.id)
        audit.record(session, ctx, "password.reset_request", outcome="failure",
                     target=f"user:{email}", reason="password_managed_by_idp",
                     details={"provider": provider})
        return outbox.enqueue(session, to=email, template="password_managed", org=org,
                              context={"provider": provider, "link": sign_in_link})
    token = issue_token(session, user.id, RESET, timedelta(minutes=minutes))
    audit.record(session, ctx, "password.reset_request", target=f"user:{email}",
                 details={"minutes": minutes})
    return outbox.enqueue(session, to=email, template="password_reset", org=org,
                          context={"link": reset_link(token), "minutes": minutes})


def open_reset(session: Session, token: str) -> User:
    """The account a reset link is for, or InvalidToken (unknown, forged, used, expired)."""
    row = session.scalar(sa.select(UserToken).where(UserToken.token_hash == digest(token or ""),
                                                    UserToken.purpose == RESET))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise InvalidToken()
    user = session.get(User, row.user_id)
    if user is None or user.status != UserStatus.ACTIVE or user.password_hash is None:
        raise InvalidToken()
    return user


def reset(session: Session, ctx: audit.Context, passwords: Passwords, token: str,
          password: str, confirm: str, *, sign_in_link: str, reset_page: str,
          not_me: Callable[[str], str] | None = None) -> User:
    """Set a new password through a link: the token is spent in the same transaction, and
    every session of the account ends (whoever held one, they no longer do)."""
    user = open_reset(session, token)
    _check_new(password, confirm, user)
    spent = session.execute(sa.update(UserToken)
                            .where(UserToken.token_hash == digest(token),
                                   UserToken.used_at.is_(None))
                            .values(used_at=utcnow())).rowcount
    if spent != 1:  # a concurrent request used it first
        raise InvalidToken()
    user.password_hash = passwords.hash(password)
    ended = users.revoke_sessions(session, user.id)
    audit.record(session, ctx.acting_as(user.id, user.email), "password.reset",
                 target=f"user:{user.email}", details={"sessions_ended": ended})
    _notify_changed(session, user, "reset", reset_page, not_me)
    return user


def change(db: Database, ctx: audit.Context, passwords: Passwords, throttle: LoginThrottle,
           user_id: int, current: str, password: str, confirm: str, *, session_token: str,
           reset_page: str, recent_sign_in: bool = False,
           not_me: Callable[[str], str] | None = None) -> int:
    """Change a password while signed in: the current one is required (wrong guesses count
    toward the same lockout as sign-in) unless the person signed in within the last minutes
    (``recent_sign_in``, decided by the caller from the session), and every other session
    ends. Returns how many."""
    with db.sessions() as session:
        user = session.get(User, user_id)
        email = user.email
        if user.password_hash is None:
            raise PasswordManagedElsewhere(
                f"Your password is managed by {managing_provider(session, user_id)}. Change "
                "it there.")
    throttle.check(email, ctx.ip)
    with db.transaction() as session:
        user = session.get(User, user_id)
        if (recent_sign_in and not current) or passwords.verify(user.password_hash, current):
            _check_new(password, confirm, user)
            if not recent_sign_in or current:
                throttle.record_success(email, ctx.ip)
            user.password_hash = passwords.hash(password)
            ended = session.execute(
                sa.update(AuthSession)
                .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None),
                       AuthSession.token_hash != digest(session_token or ""))
                .values(revoked_at=utcnow())).rowcount or 0
            audit.record(session, ctx, "password.change", target=f"user:{email}",
                         details={"other_sessions_ended": ended,
                                  "confirmed_by": "password" if current else "recent_sign_in"})
            _notify_changed(session, user, "change", reset_page, not_me)
            return ended
    throttle.record_failure(email, ctx.ip)
    with db.transaction() as session:
        audit.record(session, ctx, "password.change", outcome="failure",
                     target=f"user:{email}", reason="wrong_password")
    raise ValidationError("Your current password is not correct.", code="wrong_password")


def _check_new(password: str, confirm: str, user: User) -> None:
    if password != confirm:
        raise ValidationError("The two new passwords do not match.", code="password_mismatch")
    check_new_password(password, user.email, user.display_name)


def _notify_changed(session: Session, user: User, how: str, reset_page: str,
                    not_me: Callable[[str], str] | None) -> None:
    """The owner hears of every password change, with a link that locks the account if it
    was not them (``not_me`` builds it from a token; see ``services.takeover``)."""
    from portal.services import takeover
    outbox.enqueue(session, to=user.email, template="password_changed",
                   org=home_organization(session, user),
                   context={"how": how, "when": utcnow().strftime("%Y-%m-%d %H:%M"),
                            "link": reset_page,
                            "not_me": takeover.not_me_link(session, user.id, "password",
                                                           not_me)})


def home_organization(session: Session, user: User):
    """The organization whose branding the user's email wears: their only (or first) one."""
    found = users.active_memberships(session, user.id)
    return found[0].organization if found else None


def managing_provider(session: Session, user_id: int) -> str:
    """The name of the identity provider a user without a local password signs in with."""
    name = session.scalar(sa.select(Connection.name)
                          .join(FederatedIdentity, FederatedIdentity.connection_id ==
                                Connection.id)
                          .where(FederatedIdentity.user_id == user_id)
                          .order_by(FederatedIdentity.last_login_at.desc().nulls_last())
                          .limit(1))
    return name or "your organization's identity provider"


def purge_expired(session: Session, before=None) -> int:
    """Drop reset tokens that can no longer be used (expired, whether spent or not)."""
    result = session.execute(sa.delete(UserToken)
                             .where(UserToken.expires_at < (before or utcnow())))
    return result.rowcount or 0
