"""How long personal data is kept: ``purge`` (run by ``trellis worker``) deletes ended
sessions and delivered mail past their retention, and strips the IP address and browser from
sign-in events past theirs.

Audit events are never deleted: the chain is the proof that nothing was. Past
``sign_in_days`` the sign-in events (``auth.*``) lose their IP address and browser through
the same pseudonymization as erasure (the chain still verifies); who signed in and when
stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.db import utcnow
from portal.models import AuditEvent, AuthSession, OutboxMessage, OutboxStatus

BATCH = 500


@dataclass
class Retention:
    sign_in_days: int
    session_days: int
    outbox_days: int


@dataclass
class Purged:
    sessions: int = 0
    emails: int = 0
    sign_in_events: int = 0

    @property
    def total(self) -> int:
        return self.sessions + self.emails + self.sign_in_events


def purge(session: Session, rules: Retention) -> Purged:
    """One pass, in the caller's transaction."""
    now, done = utcnow(), Purged()
    cutoff = now - timedelta(days=rules.session_days)
    # A session row is history once it ended (signed out, or expired).
    done.sessions = session.execute(sa.delete(AuthSession).where(sa.or_(
        AuthSession.revoked_at < cutoff, AuthSession.expires_at < cutoff))).rowcount or 0
    cutoff = now - timedelta(days=rules.outbox_days)
    done.emails = session.execute(sa.delete(OutboxMessage).where(
        OutboxMessage.status.in_([OutboxStatus.SENT, OutboxStatus.FAILED]),
        OutboxMessage.created_at < cutoff)).rowcount or 0
    done.sign_in_events = forget_sign_in_networks(
        session, now - timedelta(days=rules.sign_in_days))
    return done


def forget_sign_in_networks(session: Session, before) -> int:
    """Blank IP address and browser of sign-in events older than ``before`` and drop their
    salts (see portal/audit.py: the chain is unchanged)."""
    changed = 0
    while True:
        rows = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action.like("auth.%"),
                                        AuditEvent.occurred_at < before,
                                        sa.or_(AuditEvent.ip != "", AuditEvent.user_agent != ""))
            .order_by(AuditEvent.seq).limit(BATCH)).all()
        if not rows:
            return changed
        for event in rows:
            event.ip, event.user_agent = "", ""
            event.personal_salt = ""
            event.pseudonymized_at = event.pseudonymized_at or utcnow()
        session.flush()
        changed += len(rows)
