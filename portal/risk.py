"""Risk signals of a sign-in: is the device new, is the network new, how many failures came
just before it (for the account and from the client's IP). Each sign-in gets a score and a
decision, recorded in the audit trail (``auth.risk``) with the signals that contributed.

Today the decision is recorded, not enforced: users with a second factor are asked for it
anyway, and nothing is denied on a score. A signal that cannot be read (no IP, no device
cookie store, a database hiccup) is listed as missing and scores nothing: the assessment
degrades, it never breaks a sign-in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.db import utcnow
from portal.models import AuditEvent, KnownSignal

log = logging.getLogger("trellis.risk")

VELOCITY_WINDOW = timedelta(minutes=15)
TOUCH_EVERY = timedelta(days=1)
# Weights: a sign-in from a new device and a new network after a burst of failures is the
# typical account takeover; each alone is ordinary (travel, a new laptop).
WEIGHTS = {"new_device": 30, "new_network": 20}
PER_ACCOUNT_FAILURE, MAX_ACCOUNT_FAILURES = 10, 40
PER_IP_FAILURE, MAX_IP_FAILURES = 2, 20
STEP_UP_AT, DENY_AT = 50, 80


@dataclass
class Assessment:
    score: int = 0
    decision: str = "allow"  # allow, step_up, deny
    signals: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    fresh: frozenset[str] = frozenset()  # kinds ("device", "network") seen within a day

    def as_details(self) -> dict[str, Any]:
        return {"score": self.score, "decision": self.decision, "signals": self.signals,
                "missing": self.missing}


def network_of(ip: str | None) -> str | None:
    """The client's network: its IPv4 /24 or IPv6 /48 (addresses inside one network change
    often; networks much less)."""
    try:
        address = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


_KNOWN = KnownSignal.__table__
_EVENTS = AuditEvent.__table__


def _last_seen(kind: str):
    return sa.select(_KNOWN.c.last_seen_at).where(
        _KNOWN.c.user_id == sa.bindparam("user_id"), _KNOWN.c.kind == kind,
        _KNOWN.c.value == sa.bindparam(kind)).scalar_subquery()


_SIGN_IN_STEP = sa.or_(_EVENTS.c.action == "auth.login", _EVENTS.c.action == "auth.mfa")
# Only the time and the literal outcome in WHERE, so the partial index over failures is the
# one index that fits (an action there would tempt the planner onto the action index and a
# scan of every recent sign-in).
_FAILURES = sa.select(
    sa.func.count().filter(_SIGN_IN_STEP, _EVENTS.c.target == sa.bindparam("target"))
    .label("account"),
    sa.func.count().filter(_SIGN_IN_STEP, _EVENTS.c.ip == sa.bindparam("ip"))
    .label("address"),
).where(sa.text("outcome = 'failure'"), _EVENTS.c.occurred_at >= sa.bindparam("since")
        ).subquery()
# When the device and the network were last seen for the user (NULL: never), and the failed
# sign-ins and codes in the window for the account and from the client's address: every
# sign-in reads all of it, so it is one statement, built once.
SIGNALS = sa.select(_last_seen("device"), _last_seen("network"), _FAILURES.c.account,
                    _FAILURES.c.address)


def _read(session: Session, name: str, read):
    """One read of a read-only session; a failure rolls that session back (nothing of it
    was written) and leaves the signal missing."""
    try:
        return read()
    except Exception:  # a signal must never break the sign-in
        log.warning("risk signals %s unavailable", name, exc_info=True)
        session.rollback()
        return None


def assess(session: Session, user_id: int, email: str, ip: str | None,
           device_id: str | None) -> Assessment:
    """Score one sign-in from one read on ``session`` (the request's read session, or the
    sign-in's own transaction). If the read fails every signal is missing."""
    result = Assessment()
    network = network_of(ip)
    row = _read(session, "signals", lambda: session.execute(SIGNALS, {
        "user_id": user_id, "device": _digest(device_id) if device_id else None,
        "network": _digest(network) if network else None, "target": f"user:{email}",
        "ip": ip, "since": utcnow() - VELOCITY_WINDOW}).one())
    seen = {}
    if row is None:
        result.missing += ["new_device", "new_network", "account_failures", "ip_failures"]
    else:
        device_seen, network_seen, account, address = row
        seen = {kind: at for kind, at, value in (("device", device_seen, device_id),
                                                 ("network", network_seen, network))
                if value and at is not None}
        for name, kind, value in (("new_device", "device", device_id),
                                  ("new_network", "network", network)):
            if value:
                result.signals[name] = kind not in seen
            else:
                result.missing.append(name)
        result.signals["account_failures"] = account or 0
        if ip:
            result.signals["ip_failures"] = address or 0
        else:
            result.missing.append("ip_failures")
    recently = utcnow() - TOUCH_EVERY
    result.fresh = frozenset(kind for kind, at in seen.items() if at >= recently)
    score = sum(WEIGHTS[name] for name in WEIGHTS if result.signals.get(name) is True)
    score += min(MAX_ACCOUNT_FAILURES,
                 PER_ACCOUNT_FAILURE * result.signals.get("account_failures", 0))
    score += min(MAX_IP_FAILURES, PER_IP_FAILURE * result.signals.get("ip_failures", 0))
    result.score = min(100, score)
    result.decision = ("deny" if result.score >= DENY_AT else
                       "step_up" if result.score >= STEP_UP_AT else "allow")
    return result


def _upsert(dialect: str):
    """INSERT ... ON CONFLICT DO UPDATE for the user's (kind, value): one statement whether
    the signal is new or known, and no race with a concurrent sign-in from the same place."""
    from sqlalchemy.dialects import postgresql, sqlite
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_KNOWN)
    return insert.on_conflict_do_update(index_elements=["user_id", "kind", "value"],
                                        set_={"last_seen_at": insert.excluded.last_seen_at})


_UPSERTS: dict[str, Any] = {}


def remember(session: Session, user_id: int, ip: str | None, device_id: str | None,
             fresh: frozenset[str] = frozenset()) -> None:
    """After a completed sign-in: this device and network are now known for the user.
    ``fresh`` (kinds the assessment found seen within a day) need no write."""
    now = utcnow()
    rows = [{"user_id": user_id, "kind": kind, "value": _digest(value), "first_seen_at": now,
             "last_seen_at": now}
            for kind, value in (("device", device_id), ("network", network_of(ip)))
            if value and kind not in fresh]
    if rows:
        dialect = session.get_bind().dialect.name
        if dialect not in _UPSERTS:
            _UPSERTS[dialect] = _upsert(dialect)
        session.execute(_UPSERTS[dialect], rows)
