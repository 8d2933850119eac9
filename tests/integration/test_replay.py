"""One-time values are accepted once, and expired ones are purged."""

from datetime import timedelta

import sqlalchemy as sa

from portal.db import utcnow
from portal.models import ReplayCache
from portal.services import replay
from tests.conftest import services_of


def test_a_value_is_accepted_once(app):
    db = services_of(app).db
    assert replay.consume(db, "oidc-state", "abc", 60)
    assert not replay.consume(db, "oidc-state", "abc", 60)
    assert replay.consume(db, "saml-id", "abc", 60)  # kinds do not collide


def test_expired_values_are_purged(app, monkeypatch):
    db = services_of(app).db
    with db.transaction() as session:
        session.add(ReplayCache(key="old", expires_at=utcnow() - timedelta(seconds=1)))
    monkeypatch.setattr(replay, "PURGE_ONE_IN", 1)
    replay.consume(db, "oidc-state", "new", 60)
    with db.transaction() as session:
        keys = set(session.scalars(sa.select(ReplayCache.key)))
    assert "old" not in keys and len(keys) == 1
