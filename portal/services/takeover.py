"""Account-takeover defences: notices of sensitive changes, each with a "this wasn't me" link.

A sign-in from a device the account has not used before, a password change, a change of the
second factors and a change of the email address each send the owner an email through the
outbox (in the transaction of the change). The notice carries a single-use link (issued by
``credentials.issue_token``, valid for a week) that locks the account when its owner says
the change was not theirs: the account is suspended, every session ends, every token apps
hold and every other mailed link stops working, and the lock is audited. An operator
unlocks it (``trellis user unlock``) once the owner is known to be back in control.

Each kind of notice has its own token purpose, so a later notice of another kind does not
spend the link of an earlier one; a later notice of the same kind does (its link is the
one that works).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import TrellisError
from portal.models import KnownSignal, OAuthToken, User, UserStatus, UserToken
from portal.services import credentials, outbox, users

LIFETIME = timedelta(days=7)
PURPOSES = {"new_device": "not_me_device", "password": "not_me_password",
            "mfa": "not_me_mfa", "email": "not_me_email"}
LinkFor = Callable[[str], str]


def not_me_link(session: Session, user_id: int, kind: str, link_for: LinkFor | None) -> str:
    """A fresh "this wasn't me" link for a notice of ``kind``; "" when the caller has no
    way to build links (a command-line change), so the notice goes out without one."""
    if link_for is None:
        return ""
    return link_for(credentials.issue_token(session, user_id, PURPOSES[kind], LIFETIME))


def device_is_new(session: Session, user_id: int, device_id: str) -> bool:
    """Whether a completed sign-in comes from a device new to an account that has signed
    in from some other device before (the very first sign-in is not news). Reads the
    devices ``risk.remember`` keeps, before this sign-in's is added."""
    if not device_id:
        return False
    digest = hashlib.sha256(device_id.encode()).hexdigest()  # as risk.remember stores it
    mine = sa.func.count().filter(KnownSignal.value == digest)
    known, this = session.execute(sa.select(sa.func.count(), mine).where(
        KnownSignal.user_id == user_id, KnownSignal.kind == "device")).one()
    return bool(known) and not this


def notify_new_device(session: Session, user: User, *, ip: str, browser: str,
                      link_for: LinkFor | None) -> int:
    """Tell the owner about a sign-in from a new device; returns the message id."""
    message = outbox.enqueue(
        session, to=user.email, template="new_device",
        org=credentials.home_organization(session, user),
        context={"when": utcnow().strftime("%Y-%m-%d %H:%M"), "ip": ip or "unknown",
                 "browser": browser or "an unknown browser",
                 "not_me": not_me_link(session, user.id, "new_device", link_for)})
    return message.id


class LockLinkInvalid(TrellisError):
    status = 400
    code = "invalid_token"
    message = ("This link has expired or was already used. If you still think someone else "
               "is using your account, contact your administrator.")


def open_link(session: Session, token: str) -> tuple[UserToken, User]:
    """The unspent, unexpired "this wasn't me" token and its account, or LockLinkInvalid."""
    row = session.scalar(sa.select(UserToken).where(
        UserToken.token_hash == credentials.digest(token or ""),
        UserToken.purpose.in_(list(PURPOSES.values()))))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise LockLinkInvalid()
    user = session.get(User, row.user_id)
    if user is None or user.status == UserStatus.DELETED:
        raise LockLinkInvalid()
    return row, user


def lock(session: Session, ctx: audit.Context, token: str) -> User:
    """The owner says it was not them: spend the token, suspend the account, end every
    session, revoke every token apps hold, spend every other mailed link, and audit it, all
    in the caller's transaction. Locking an account already suspended still ends whatever
    might remain."""
    row, user = open_link(session, token)
    now = utcnow()
    if session.execute(sa.update(UserToken).where(UserToken.id == row.id,
                                                  UserToken.used_at.is_(None))
                       .values(used_at=now)).rowcount != 1:
        raise LockLinkInvalid()  # a concurrent click used it first
    was = user.status
    user.status = UserStatus.SUSPENDED
    sessions_ended = users.revoke_sessions(session, user.id)
    tokens_revoked = session.execute(
        sa.update(OAuthToken).where(OAuthToken.user_id == user.id,
                                    OAuthToken.revoked_at.is_(None))
        .values(revoked_at=now)).rowcount or 0
    links_spent = session.execute(
        sa.update(UserToken).where(UserToken.user_id == user.id, UserToken.used_at.is_(None))
        .values(used_at=now)).rowcount or 0
    kind = next(k for k, purpose in PURPOSES.items() if purpose == row.purpose)
    org = credentials.home_organization(session, user)
    audit.record(session, ctx.acting_as(user.id, user.email), "user.lock",
                 target=f"user:{user.email}", reason="not_me",
                 organization_id=org.id if org is not None else None,
                 details={"notice": kind, "was": was.value, "sessions_ended": sessions_ended,
                          "tokens_revoked": tokens_revoked, "links_spent": links_spent})
    return user


def unlock(session: Session, ctx: audit.Context, email: str, reason: str = "") -> User:
    """An operator gives a locked (suspended) account back once its owner is known to be in
    control; the owner then sets a new password through a reset link."""
    user = users.get_by_email(session, email)
    if user.status != UserStatus.SUSPENDED:
        raise TrellisError(f"{user.email} is not locked.", code="not_locked", status=409)
    user.status = UserStatus.ACTIVE
    audit.record(session, ctx, "user.unlock", target=f"user:{user.email}", reason=reason)
    return user
