"""Linking a refused first sign-in (``account_exists``) to the existing account, when the
person cannot enter the account's password: by a link mailed to the account's address, or
by an admin of the organization.

A first federated sign-in whose email already has an account is refused with
``account_exists`` and never linked silently (``federation.provisioning``). The member may
link by entering the account's password; a member who has none (invited, imported, or who
forgot it) needs someone else to vouch. The refusal's audit event is the request: it names
the connection and the IdP's subject, was written by Trellis itself, and belongs to one
organization, so an admin acts only on what their own organization's IdP asserted, for a
member of their own organization with exactly that email.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import Conflict, NotFound
from portal.models import (
    AuditEvent,
    Connection,
    FederatedIdentity,
    Organization,
    OutboxMessage,
    User,
    UserStatus,
    UserToken,
)
from portal.services import outbox
from portal.services.credentials import (
    InvalidToken,
    digest,
    home_organization,
    issue_token,
)
from portal.services.members import Actor, _target

EMAILED = "sso_link"
EMAIL_MINUTES = 15
REQUEST_DAYS = 14
SCAN_LIMIT = 500  # refused sign-ins of one organization looked at, newest first


@dataclass(frozen=True)
class LinkRequest:
    event_id: int
    connection_id: int
    connection_name: str
    subject: str
    at: datetime


def _subject_and_connection(target: str) -> tuple[str, int] | None:
    subject, sep, connection = target.rpartition("@connection:")
    if not sep or not subject.startswith("subject:") or not connection.isdigit():
        return None
    return subject.removeprefix("subject:"), int(connection)


def _refusals(session: Session, org_id: int):
    return sa.select(AuditEvent).where(
        AuditEvent.organization_id == org_id, AuditEvent.action == "auth.login",
        AuditEvent.outcome == "failure", AuditEvent.reason == "account_exists",
        AuditEvent.occurred_at >= utcnow() - timedelta(days=REQUEST_DAYS))


def _request(session: Session, org: Organization, email: str,
             event: AuditEvent) -> LinkRequest | None:
    """The event as a request this organization's admins may grant, or None."""
    parsed = _subject_and_connection(event.target)
    if parsed is None or ((event.details or {}).get("email") or "").lower() != email.lower():
        return None
    subject, connection_id = parsed
    connection = session.get(Connection, connection_id)
    if connection is None or connection.organization_id != org.id:
        return None
    linked = session.scalar(sa.select(FederatedIdentity.id).where(
        FederatedIdentity.connection_id == connection_id,
        FederatedIdentity.subject == subject))
    if linked is not None:
        return None
    return LinkRequest(event.id, connection_id, connection.name, subject, event.occurred_at)


def pending(session: Session, org: Organization, user_id: int, email: str
            ) -> list[LinkRequest]:
    """Recent sign-ins through this organization's connections refused because the
    member's account exists, and not linked since (one per identity, newest first)."""
    found: dict[tuple[int, str], LinkRequest] = {}
    events = session.scalars(_refusals(session, org.id).order_by(AuditEvent.seq.desc())
                             .limit(SCAN_LIMIT))
    for event in events:
        request = _request(session, org, email, event)
        if request is not None:
            found.setdefault((request.connection_id, request.subject), request)
    return list(found.values())


def link(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
         user_id: int, event_id: int) -> LinkRequest:
    """Link the identity named by the refused sign-in ``event_id`` to the member."""
    member = _target(session, org, actor, user_id, None)
    event = session.scalar(_refusals(session, org.id).where(AuditEvent.id == event_id))
    request = _request(session, org, member.user.email, event) if event else None
    if request is None:
        raise NotFound("There is no such sign-in waiting for a link.",
                       code="unknown_link_request")
    already = session.scalar(sa.select(FederatedIdentity.id).where(
        FederatedIdentity.connection_id == request.connection_id,
        FederatedIdentity.user_id == user_id))
    if already is not None:
        raise Conflict("This member is already linked to another identity of that "
                       "connection.", code="already_linked")
    session.add(FederatedIdentity(connection_id=request.connection_id,
                                  subject=request.subject, user_id=user_id))
    session.flush()
    audit.record(session, ctx, "federation.link",
                 target=f"subject:{request.subject}@connection:{request.connection_id}",
                 organization_id=org.id,
                 details={"email": member.user.email, "proof": "admin",
                          "request": request.event_id})
    return request


# -- proof by a link mailed to the account's address ------------------------------------------

def mail_link(session: Session, ctx: audit.Context, email: str,
              link_for: Callable[[str], str]) -> tuple[OutboxMessage | None, str]:
    """Mail a single-use link to the existing account's address. Returns the message and the
    token's digest (None and "" when one went out a moment ago), which the caller keeps with the
    browser's link offer: the link links only in the browser that asked for it, so mailing
    it to someone else's address gains the asker nothing."""
    user = session.scalar(sa.select(User).where(User.email == email))
    if user is None or user.status != UserStatus.ACTIVE:
        raise InvalidToken()
    if outbox.recently_written(session, email, ("sso_link",)):
        return None, ""  # the link sent a moment ago still works; no flood of mail
    token = issue_token(session, user.id, EMAILED, timedelta(minutes=EMAIL_MINUTES))
    audit.record(session, ctx, "federation.link_mail", target=f"user:{email}",
                 details={"minutes": EMAIL_MINUTES})
    message = outbox.enqueue(session, to=email, template="sso_link",
                             org=home_organization(session, user),
                             context={"link": link_for(token), "minutes": EMAIL_MINUTES})
    return message, digest(token)


def spend_mailed_link(session: Session, token: str) -> User:
    """The account whose address received ``token``; the token is spent. InvalidToken when it
    is unknown, used or expired."""
    row = session.scalar(sa.select(UserToken).where(UserToken.token_hash == digest(token),
                                                    UserToken.purpose == EMAILED))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise InvalidToken()
    spent = session.execute(sa.update(UserToken).where(
        UserToken.id == row.id, UserToken.used_at.is_(None)).values(used_at=utcnow())).rowcount
    user = session.get(User, row.user_id)
    if spent != 1 or user is None or user.status != UserStatus.ACTIVE:
        raise InvalidToken()
    return user
