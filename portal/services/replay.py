"""One-time values: a state, nonce or assertion id is accepted once, ever, until it expires."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.db import Database, utcnow
from portal.models import ReplayCache

INSERT = sa.insert(ReplayCache.__table__)
PURGE_ONE_IN = 256


def consume(db: Database, kind: str, value: str, ttl_seconds: int) -> bool:
    """Record the value as used, in a transaction of its own so the mark stays even when the
    sign-in fails later; False if it was used before (a replay). Values are random and
    short-lived, so a key is never reused after it expires: expired rows are only purged."""
    key = f"{kind}:{hashlib.sha256(value.encode()).hexdigest()}"[:128]
    try:
        with db.transaction() as session:
            session.execute(INSERT, {"key": key,
                                     "expires_at": utcnow() + timedelta(seconds=ttl_seconds)})
            if secrets.randbelow(PURGE_ONE_IN) == 0:  # until the job runner does it
                purge_expired(session)
    except IntegrityError:
        return False
    return True


def purge_expired(session: Session) -> int:
    result = session.execute(sa.delete(ReplayCache).where(ReplayCache.expires_at < utcnow()))
    return result.rowcount or 0
