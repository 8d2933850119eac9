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
from sqlalchemy.exc import IntegrityError
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


def _known(session: Session, user_id: int, wanted: dict[str, str]) -> dict[str, Any]:
    """Of the kinds in ``wanted`` (kind -> value), those known for the user, with when they
    were last seen: one query."""
    digests = {kind: _digest(value) for kind, value in wanted.items()}
    rows = session.execute(sa.select(KnownSignal.kind, KnownSignal.value,
                                     KnownSignal.last_seen_at).where(
        KnownSignal.user_id == user_id, KnownSignal.kind.in_(list(digests)),
        KnownSignal.value.in_(list(digests.values()))))
    return {kind: seen for kind, value, seen in rows if digests.get(kind) == value}


def _failures(session: Session, since, email: str, ip: str | None) -> tuple[int, int | None]:
    """Failed sign-ins and codes since ``since``, for the account and (with an IP) from the
    client's address: both counted in one pass over the window."""
    failed = sa.and_(AuditEvent.action.in_(("auth.login", "auth.mfa")),
                     AuditEvent.outcome == "failure", AuditEvent.occurred_at >= since)
    by_account = sa.func.count().filter(AuditEvent.target == f"user:{email}")
    by_ip = sa.func.count().filter(AuditEvent.ip == ip) if ip else sa.literal(None)
    account, address = session.execute(sa.select(by_account, by_ip).where(failed)).one()
    return account or 0, (address or 0) if ip else None


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
    """Score one sign-in from two reads (known device and network; recent failures) on
    ``session``, a read-only session such as the request's. A read that fails leaves its
    signals missing."""
    result = Assessment()
    wanted = {kind: value for kind, value in (("device", device_id),
                                              ("network", network_of(ip))) if value}
    known = _read(session, "known", lambda: _known(session, user_id, wanted)) \
        if wanted else {}
    for name, kind in (("new_device", "device"), ("new_network", "network")):
        if kind in wanted and known is not None:
            result.signals[name] = kind not in known
        else:
            result.missing.append(name)
    counts = _read(session, "failures",
                   lambda: _failures(session, utcnow() - VELOCITY_WINDOW, email, ip))
    account, address = counts if counts is not None else (None, None)
    for name, value in (("account_failures", account), ("ip_failures", address)):
        if value is None:
            result.missing.append(name)
        else:
            result.signals[name] = value
    recently = utcnow() - TOUCH_EVERY
    result.fresh = frozenset(kind for kind, seen in (known or {}).items()
                             if seen >= recently)
    score = sum(WEIGHTS[name] for name in WEIGHTS if result.signals.get(name) is True)
    score += min(MAX_ACCOUNT_FAILURES,
                 PER_ACCOUNT_FAILURE * result.signals.get("account_failures", 0))
    score += min(MAX_IP_FAILURES, PER_IP_FAILURE * result.signals.get("ip_failures", 0))
    result.score = min(100, score)
    result.decision = ("deny" if result.score >= DENY_AT else
                       "step_up" if result.score >= STEP_UP_AT else "allow")
    return result


def remember(session: Session, user_id: int, ip: str | None, device_id: str | None,
             fresh: frozenset[str] = frozenset()) -> None:
    """After a completed sign-in: this device and network are now known for the user.
    ``fresh`` (kinds the assessment found seen within a day) need no write."""
    now = utcnow()
    for kind, value in (("device", device_id), ("network", network_of(ip))):
        if not value or kind in fresh:
            continue
        digest = _digest(value)
        updated = session.execute(
            sa.update(KnownSignal)
            .where(KnownSignal.user_id == user_id, KnownSignal.kind == kind,
                   KnownSignal.value == digest)
            .values(last_seen_at=now).execution_options(synchronize_session=False)).rowcount
        if not updated:
            try:
                with session.begin_nested():
                    session.add(KnownSignal(user_id=user_id, kind=kind, value=digest,
                                            first_seen_at=now, last_seen_at=now))
            except IntegrityError:
                pass  # a concurrent sign-in from the same place got there first
