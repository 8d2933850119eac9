"""What the sign-in throttles hold now, and lifting one lock: the operator's *Sign-in
protection* page and ``trellis throttle status`` / ``trellis throttle unlock`` share these.

The throttle store keys accounts by a digest of the sign-in name (it never holds emails), so
the names shown come from the ``auth.lockout`` events that recorded each lock: the lock's
key is recomputed from the event's target and matched. A lock whose event is gone (erased,
or its audit write failed) is still listed and can be lifted, by its key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound
from portal.models import AuditEvent, User
from portal.throttle import Episode, Lock, LoginThrottle
from portal.validation import normalize_email

# The most locks a page or a command lists (an attack can lock many more).
LIST_LIMIT = 500


@dataclass(frozen=True)
class NamedLock:
    lock: Lock
    name: str  # an email, "email (second factor)", an IP, or "" when unknown

    @property
    def key(self) -> str:
        return self.lock.key

    @property
    def label(self) -> str:
        return self.name or self.lock.ip or f"unknown account ({self.lock.key[5:17]}…)"

    @property
    def ends_at(self) -> datetime:
        return datetime.fromtimestamp(self.lock.until, UTC)


@dataclass(frozen=True)
class Protection:
    """The global throttle and the per-account and per-IP locks, as of ``now``."""

    global_limit: int  # failures per window that engage it; 0: the global throttle is off
    global_window: int
    episode: Episode
    now: float
    accounts: list[NamedLock] = field(default_factory=list)
    ips: list[NamedLock] = field(default_factory=list)
    truncated: bool = False

    def seconds_left(self, lock: NamedLock) -> int:
        return max(1, int(lock.lock.until - self.now) + 1)


def utc_text(ts: float) -> str:
    """A time as the page and the command line show it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status(session: Session, throttle: LoginThrottle, limit: int = LIST_LIMIT) -> Protection:
    """Read the throttle state (reading the episode also records the end of one that ran
    out, audited once) and name the locked accounts from the audit trail."""
    episode = throttle.episode()
    locks = throttle.locks(limit + 1)
    names = _names(session, throttle, [lock for lock in locks if lock.scope == "account"])
    named = [NamedLock(lock, names.get(lock.key, lock.ip)) for lock in locks[:limit]]
    return Protection(global_limit=throttle.global_failures,
                      global_window=throttle.global_window, episode=episode,
                      now=throttle.clock(),
                      accounts=[n for n in named if n.lock.scope == "account"],
                      ips=[n for n in named if n.lock.scope == "ip"],
                      truncated=len(locks) > limit)


def _names(session: Session, throttle: LoginThrottle, locks: list[Lock]) -> dict[str, str]:
    """Account key -> the name its ``auth.lockout`` event gave. Only events recent enough to
    have started a lock still running are read (one query)."""
    if not locks:
        return {}
    since = utcnow() - timedelta(seconds=throttle.max_seconds + 60)  # events are in real time
    rows = session.execute(
        sa.select(AuditEvent.target, AuditEvent.reason)
        .where(AuditEvent.action == "auth.lockout", AuditEvent.occurred_at >= since,
               AuditEvent.target.like("user:%"))
        .order_by(AuditEvent.seq.desc()).limit(5000)).all()
    wanted = {lock.key for lock in locks}
    names: dict[str, str] = {}
    mfa_emails: set[str] = set()
    for target, reason in rows:
        name = target[len("user:"):]
        key = throttle.account_key(name)
        if key in wanted:
            names.setdefault(key, name)
        if reason.startswith("mfa_"):
            mfa_emails.add(name)
    if mfa_emails and len(names) < len(wanted):  # second-factor locks are keyed by user id
        for user_id, email in session.execute(
                sa.select(User.id, User.email).where(User.email.in_(sorted(mfa_emails)))):
            key = throttle.account_key(f"mfa:{user_id}")
            if key in wanted:
                names.setdefault(key, f"{email} (second factor)")
    return names


def key_of(throttle: LoginThrottle, who: str) -> tuple[str, str]:
    """The store key, and the name to show, for what an operator typed: a store key as
    listed (no name), an IP address, or an email (its password sign-in lock)."""
    who = (who or "").strip()
    if who.startswith(("acct:", "ip:")):
        return who, ""
    try:
        address = str(ipaddress.ip_address(who))
        return throttle.ip_key(address), address
    except ValueError:
        email = normalize_email(who)
        return throttle.account_key(email), email


def unlock(session: Session, ctx: audit.Context, throttle: LoginThrottle, key: str,
           name: str = "") -> NamedLock:
    """Lift the lock on one account or IP key now (its failures are forgotten too) and
    audit it as ``throttle.unlock`` (the event is written first), naming the account as
    the page does (``name``, an email the operator typed, when the audit trail has none).
    Raises ``NotFound`` when the key is not locked (any more): the lock ran out meanwhile,
    or another operator lifted it."""
    lock = throttle.lock_of(key)
    if lock is None:
        raise NotFound("That account or address is not locked (any more).",
                       code="not_locked")
    if lock.scope == "account":
        name = _names(session, throttle, [lock]).get(lock.key, name)
    if lock.scope == "ip":
        target, name = f"ip:{lock.ip}", lock.ip
    else:
        target = f"user:{name.removesuffix(' (second factor)')}" if name else lock.key
    audit.record(session, ctx, "throttle.unlock", target=target,
                 reason=f"{lock.scope}_unlocked",
                 details={"key": lock.key, "failures": lock.failures,
                          "locked_until": datetime.fromtimestamp(lock.until, UTC).isoformat(),
                          **({"second_factor": True} if name.endswith("(second factor)")
                             else {})})
    throttle.unlock(key)  # after the event is written: no lift goes unrecorded
    return NamedLock(lock, name)
