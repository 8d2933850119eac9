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
    return consume_all(db, [(kind, value, ttl_seconds)]) is None


def consume_all(db: Database, marks: list[tuple[str, str, int]]) -> str | None:
    """Record several one-time values in one transaction: all or none. Returns None when
    none was used before, else the kind of the first that was (nothing is recorded then)."""
    now = utcnow()
    rows = [{"key": _key(kind, value), "expires_at": now + timedelta(seconds=ttl)}
            for kind, value, ttl in marks]
    try:
        with db.engine.begin() as connection:  # Core: no ORM session needed for one insert
            connection.execute(INSERT, rows)
            if secrets.randbelow(PURGE_ONE_IN) == 0:  # until the job runner does it
                purge_expired(connection)
    except IntegrityError:
        with db.sessions() as session:
            seen = set(session.scalars(sa.select(ReplayCache.key).where(
                ReplayCache.key.in_([row["key"] for row in rows]))))
        return next((kind for (kind, _, _), row in zip(marks, rows, strict=True)
                     if row["key"] in seen), marks[0][0])
    return None


def _key(kind: str, value: str) -> str:
    return f"{kind}:{hashlib.sha256(value.encode()).hexdigest()}"[:128]


def purge_expired(session: Session | sa.Connection) -> int:
    result = session.execute(sa.delete(ReplayCache).where(ReplayCache.expires_at < utcnow()))
    return result.rowcount or 0
