"""Retention: the worker deletes ended sessions and sent mail past their retention, and
strips IP addresses and browsers from old sign-in events without breaking the audit chain."""

from datetime import timedelta

import sqlalchemy as sa

from portal import audit
from portal.db import utcnow
from portal.models import AuditEvent, AuthSession, OutboxMessage, OutboxStatus
from portal.services import outbox
from tests.conftest import services_of, sign_in


def _apply(app):
    from portal.cli_mail import apply_retention
    with app.app_context():
        return apply_retention()


def test_old_rows_go_and_recent_ones_stay(app, client, make_user, tx):
    make_user("alice@acme.test")
    sign_in(app.test_client(), "alice@acme.test")  # an old session, ended long ago
    sign_in(client, "alice@acme.test")  # the current one
    sign_in(app.test_client(), "alice@acme.test", "wrong password")
    long_ago = utcnow() - timedelta(days=400)
    with tx() as session:
        first = session.scalar(sa.select(AuthSession).order_by(AuthSession.id))
        first.created_at, first.expires_at = long_ago, long_ago + timedelta(hours=8)
        old = outbox.enqueue(session, to="alice@acme.test", template="test", org=None,
                             context={"sender": "cli:test"})
        old.status, old.created_at, old.sent_at = OutboxStatus.SENT, long_ago, long_ago
        outbox.enqueue(session, to="alice@acme.test", template="test", org=None,
                       context={"sender": "cli:test"}).created_at = long_ago  # pending
        outbox.enqueue(session, to="alice@acme.test", template="test", org=None,
                       context={"sender": "cli:test"}).status = OutboxStatus.SENT  # recent
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq <= 2)
                        .values(occurred_at=long_ago))
    # Moving an event's date is itself an edit the chain catches; re-seal them as if
    # they had been written then, so the test starts from a valid chain.
    _reseal(tx)
    done = _apply(app)
    assert (done.sessions, done.emails) == (1, 1)
    assert done.sign_in_events >= 1
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuthSession)) == 1
        kept = sa.select(sa.func.count()).where(OutboxMessage.template == "test")
        assert session.scalar(kept) == 2  # (the second browser's new-device notice aside)
        events = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        old_logins = [e for e in events if e.occurred_at < utcnow() - timedelta(days=300)
                      and e.action == "auth.login"]
        assert old_logins and all(e.ip == "" and e.user_agent == "" for e in old_logins)
        assert all(e.target == "user:alice@acme.test" for e in old_logins)  # who stays
        recent = [e for e in events if e not in old_logins and e.action == "auth.login"]
        assert recent and all(e.ip for e in recent)
        assert audit.verify(session).ok
    assert client.get("/account/").status_code == 200  # the current session is untouched
    assert _apply(app).total == 0  # nothing left to do


def _reseal(tx):
    with tx() as session:
        prev = audit.GENESIS
        for event in session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)):
            event.prev_hash, event.hash = prev, audit.event_hash(event, prev)
            prev = event.hash
        session.execute(sa.text("UPDATE audit_head SET last_hash = :h"), {"h": prev})
