"""The consent ledger's first use: what a person accepted, which version, when and how.

Rows are only ever inserted (``record``); the state of a purpose is its newest row. The
client's IP and user agent are stored as keyed hashes (HMAC-SHA256), so a record can be
matched against a claim ("it was me, from this address") without keeping either.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.db import utcnow
from portal.models import ConsentRecord

TERMS = "terms"


def keyed_hash(key: str, value: str) -> str:
    if not value:
        return ""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def record(session: Session, *, user_id: int, purpose: str, version: str, granted: bool,
           method: str, ip: str, user_agent: str, key: str,
           when: datetime | None = None) -> ConsentRecord:
    row = ConsentRecord(user_id=user_id, purpose=purpose, document_version=version,
                        granted=granted, method=method, recorded_at=when or utcnow(),
                        ip_hash=keyed_hash(key, ip), user_agent_hash=keyed_hash(key, user_agent))
    session.add(row)
    session.flush()
    return row


def current(session: Session, user_id: int) -> dict[str, ConsentRecord]:
    """The newest record of each purpose for this user."""
    rows = session.scalars(sa.select(ConsentRecord).where(ConsentRecord.user_id == user_id)
                           .order_by(ConsentRecord.recorded_at, ConsentRecord.id))
    return {row.purpose: row for row in rows}
