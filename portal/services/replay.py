"""One-time values: a state, nonce or assertion id is accepted once, ever, until it expires."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.db import utcnow
from portal.models import ReplayCache


def consume(session: Session, kind: str, value: str, ttl_seconds: int) -> bool:
    """Record the value as used; False if it was used before (a replay)."""
    key = f"{kind}:{hashlib.sha256(value.encode()).hexdigest()}"[:128]
    now = utcnow()
    session.execute(sa.delete(ReplayCache).where(ReplayCache.key == key,
                                                 ReplayCache.expires_at < now))
    try:
        with session.begin_nested():
            session.add(ReplayCache(key=key, expires_at=now + timedelta(seconds=ttl_seconds)))
            session.flush()
    except IntegrityError:
        return False
    return True


def purge_expired(session: Session) -> int:
    result = session.execute(sa.delete(ReplayCache).where(ReplayCache.expires_at < utcnow()))
    return result.rowcount or 0
