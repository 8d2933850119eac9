"""Local password sign-in and server-side sessions."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from portal import audit, risk
from portal.db import Database, core, utcnow
from portal.errors import TrellisError
from portal.models import AuthSession, User, UserStatus
from portal.passwords import Passwords
from portal.throttle import LoginThrottle
from portal.validation import normalize_email

INVALID = "The email or password is not correct."


class InvalidCredentials(TrellisError):
    status = 401
    code = "invalid_credentials"
    message = INVALID


# Opens the session of a sign-in whose first factor passed, in that sign-in's transaction,
# and audits ``events`` (the sign-in's own, as ``audit.record_many`` items) with whatever it
# adds; returns the token, or None when the sign-in is refused after all (its risk).
SessionOpener = Callable[[Session, User, list], "str | None"]


def session_for(ctx: audit.Context, hours: int) -> SessionOpener:
    """The plain opener: a session row and the events, nothing else."""
    def open_session(tx: Session, user: User, events: list) -> str:
        audit.record_many(tx, ctx.acting_as(user.id, user.email), events)
        return start_session(tx, user, ctx, hours)
    return open_session


def sign_in(db: Database, ctx: audit.Context, passwords: Passwords, throttle: LoginThrottle,
            email: str, password: str, open_session: SessionOpener) -> tuple[User, str | None]:
    """Check a password sign-in and open a server-side session in the same transaction.

    Returns the user and the session token, or raises with the same message for every reason
    a guesser could learn from. Every outcome is audited."""
    try:
        email = normalize_email(email)
    except TrellisError:  # still throttled and audited, without characters a database refuses
        email = "".join(ch for ch in (email or "") if ch.isprintable()).strip().lower()[:320]
    try:
        throttle.check(email, ctx.ip)
    except TrellisError:
        risk.note_failed_account(db, ctx, throttle, email)  # throttled attempts count too
        raise
    with db.transaction() as session:
        user = session.scalar(USER_BY_EMAIL, {"email": email})
        # Always hash: unknown emails take as long as wrong passwords.
        password_ok = passwords.verify(user.password_hash if user else None, password)
        if user is not None and password_ok and user.status == UserStatus.ACTIVE:
            if passwords.needs_rehash(user.password_hash):
                user.password_hash = passwords.hasher.hash(password)
                session.flush()
            now = utcnow()
            session.execute(TOUCH_USER, {"user_id": user.id, "now": now})
            set_committed_value(user, "last_login_at", now)
            throttle.record_success(email, ctx.ip)
            return user, open_session(session, user, [{
                "action": "auth.login", "target": f"user:{email}",
                "details": {"method": "password"}}])
    reason = ("unknown_user" if user is None else "wrong_password" if not password_ok
              else f"user_{user.status.value}")
    _record_failure(db, ctx, throttle, email, reason, user)
    raise InvalidCredentials()


def _record_failure(db: Database, ctx: audit.Context, throttle: LoginThrottle, email: str,
                    reason: str, user: User | None) -> None:
    lockout = throttle.record_failure(email, ctx.ip)
    with db.transaction() as session:
        audit.record(session, ctx, "auth.login", outcome="failure", target=f"user:{email}",
                     reason=reason)
        if lockout is not None:
            audit.record(session, ctx, "auth.lockout", outcome="failure",
                         target=f"user:{email}" if lockout.scope == "account" else f"ip:{ctx.ip}",
                         reason=f"{lockout.scope}_locked",
                         details={"seconds": lockout.seconds,
                                  "user_exists": user is not None})
    risk.note_failed_account(db, ctx, throttle, email)


def start_session(session: Session, user: User, ctx: audit.Context, hours: int) -> str:
    """Create a server-side session and return the token to put in the cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    core(session).execute(INSERT_SESSION, {
        "token_hash": _digest(token), "user_id": user.id, "created_at": now,
        "expires_at": now + timedelta(hours=hours), "ip": ctx.ip[:45],
        "user_agent": ctx.user_agent[:400], "revoked_at": None})
    return token


INSERT_SESSION = sa.insert(AuthSession.__table__)
USER_BY_EMAIL = sa.select(User).where(User.email == sa.bindparam("email"))
TOUCH_USER = sa.update(User.__table__).where(User.__table__.c.id == sa.bindparam("user_id")
                                             ).values(last_login_at=sa.bindparam("now"))


def load_session_user(session: Session, token: str | None, user_id: str | None) -> User | None:
    if not token or not user_id:
        return None
    row = session.scalar(sa.select(AuthSession).where(AuthSession.token_hash == _digest(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    if str(row.user_id) != user_id:
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.status == UserStatus.ACTIVE else None


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(sa.update(AuthSession)
                        .where(AuthSession.token_hash == _digest(token),
                               AuthSession.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
