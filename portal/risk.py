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


def _known(session: Session, user_id: int, kind: str, value: str) -> bool:
    return session.scalar(sa.select(KnownSignal.id).where(
        KnownSignal.user_id == user_id, KnownSignal.kind == kind,
        KnownSignal.value == _digest(value))) is not None


def _failures(session: Session, since, **where: str) -> int:
    query = sa.select(sa.func.count(AuditEvent.id)).where(
        AuditEvent.action.in_(("auth.login", "auth.mfa")), AuditEvent.outcome == "failure",
        AuditEvent.occurred_at >= since)
    for column, value in where.items():
        query = query.where(getattr(AuditEvent, column) == value)
    return session.scalar(query) or 0


def assess(session: Session, user_id: int, email: str, ip: str | None,
           device_id: str | None) -> Assessment:
    """Score one sign-in. Every signal is read on its own; one that fails is missing."""
    result = Assessment()
    checks = {
        "new_device": lambda: None if not device_id else
        not _known(session, user_id, "device", device_id),
        "new_network": lambda: None if network_of(ip) is None else
        not _known(session, user_id, "network", network_of(ip)),
        "account_failures": lambda: _failures(session, utcnow() - VELOCITY_WINDOW,
                                              target=f"user:{email}"),
        "ip_failures": lambda: None if not ip else
        _failures(session, utcnow() - VELOCITY_WINDOW, ip=ip),
    }
    for name, read in checks.items():
        try:
            with session.begin_nested():  # a failed read leaves the transaction usable
                value = read()
        except Exception:  # a signal must never break the sign-in
            log.warning("risk signal %s unavailable", name, exc_info=True)
            value = None
        if value is None:
            result.missing.append(name)
            continue
        result.signals[name] = value
    score = sum(WEIGHTS[name] for name in WEIGHTS if result.signals.get(name) is True)
    score += min(MAX_ACCOUNT_FAILURES,
                 PER_ACCOUNT_FAILURE * result.signals.get("account_failures", 0))
    score += min(MAX_IP_FAILURES, PER_IP_FAILURE * result.signals.get("ip_failures", 0))
    result.score = min(100, score)
    result.decision = ("deny" if result.score >= DENY_AT else
                       "step_up" if result.score >= STEP_UP_AT else "allow")
    return result


def remember(session: Session, user_id: int, ip: str | None, device_id: str | None) -> None:
    """After a completed sign-in: this device and network are now known for the user."""
    now = utcnow()
    for kind, value in (("device", device_id), ("network", network_of(ip))):
        if not value:
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
