"""Risk signals of a sign-in, its score and its decision (allow / step-up / deny).

Signals: is the device new, is the network new, how many failures came just before it (for
the account and from the client's IP), how many distinct accounts failed from that IP (a
credential-stuffing run), is the password on the list of common and breached passwords, is
the hour unusual for this user, and (with a GeoIP database configured) could the user have
travelled from the last sign-in's place in the time since. Each sign-in gets a score and a
decision, recorded in the audit trail (``auth.risk``) with the signals that contributed.

The decision acts for members of organizations with the ``risk`` MFA policy; elsewhere it is
recorded only. A signal that cannot be read (no IP, no device cookie, a database or Redis
hiccup, an unreadable GeoIP file) is listed as missing and scores nothing: the assessment
degrades, it never breaks a sign-in.

Cost: two reads per sign-in, each one round trip: one SQL query (``_READ``: the user's known
signals, the organization thresholds and the failure counts) and one throttle-store read
(the distinct accounts failing from the IP; Redis when configured). The GeoIP lookup is in
memory (the file is memory-mapped once per process).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.db import UTCDateTime, core, utcnow
from portal.models import KnownSignal

log = logging.getLogger("trellis.risk")

VELOCITY_WINDOW = timedelta(minutes=15)
TOUCH_EVERY = timedelta(days=1)
# Weights: a sign-in from a new device and a new network after a burst of failures is the
# typical account takeover; each alone is ordinary (travel, a new laptop). Each of the
# others alone stays below the step-up threshold too, except impossible travel.
WEIGHTS = {"new_device": 30, "new_network": 20, "ip_accounts": 40, "common_password": 25,
           "unusual_hour": 15, "impossible_travel": 50}
PER_ACCOUNT_FAILURE, MAX_ACCOUNT_FAILURES = 10, 40
PER_IP_FAILURE, MAX_IP_FAILURES = 2, 20
STEP_UP_AT, DENY_AT = 50, 80  # defaults; TRELLIS_RISK_STEP_UP_AT/_DENY_AT and per organization
# Credential stuffing: distinct accounts failing from one IP in a fixed 15-minute window
# (the current and the previous window are read, so a run never resets to zero at once).
STUFFING_WINDOW_SECONDS = 900
IP_ACCOUNTS = 20
# Unusual hour: only once the user signed in on this many days (a row per UTC hour counts
# the days it was used); an hour is unusual when neither it nor its neighbours ever were.
MIN_HOUR_HISTORY = 10
# Impossible travel: faster than an airliner, over a distance larger than city-level GeoIP
# error; the last place is refreshed at most once an hour when it does not change.
TRAVEL_KMH, TRAVEL_MIN_KM = 1000.0, 500.0
PLACE_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class Thresholds:
    step_up_at: int = STEP_UP_AT
    deny_at: int = DENY_AT

    def decide(self, score: int) -> str:
        return ("deny" if score >= self.deny_at else
                "step_up" if score >= self.step_up_at else "allow")


@dataclass
class Assessment:
    score: int = 0
    decision: str = "allow"  # allow, step_up, deny
    signals: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    fresh: frozenset[str] = frozenset()  # kinds ("device", "network", ...) needing no write
    place: str | None = None  # "lat,lon" of this sign-in, with a GeoIP database
    thresholds: Thresholds = field(default_factory=Thresholds)

    def as_details(self) -> dict[str, Any]:
        return {"score": self.score, "decision": self.decision, "signals": self.signals,
                "missing": self.missing,
                "thresholds": [self.thresholds.step_up_at, self.thresholds.deny_at]}


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


@dataclass
class _Known:
    seen: dict[str, datetime]  # device/network kind -> last seen
    hours: dict[int, tuple[int, datetime]]  # UTC hour -> (days seen, last seen)
    place: tuple[str, datetime] | None
    step_up_at: int | None  # the strictest among the user's organizations (None: none)
    deny_at: int | None
    account_failures: int = 0
    ip_failures: int = 0


# Everything the assessment reads from the database, in one statement and one round trip:
# the user's known device and network, hour histogram and last place (the unique index on
# user_id, kind, value), the strictest thresholds of their organizations, and the failed
# sign-ins and codes in the window for the account and for the IP (each a range scan of its
# own partial index over failures on audit_events: target or ip, then occurred_at; the
# literal ``outcome = 'failure'`` is what lets the planner pick them). Plain SQL that SQLite
# and PostgreSQL both run, prepared once: building and caching an expression of this size
# costs more than running it.
_READ = sa.text("""
SELECT kind, value, last_seen_at, hits FROM known_signals
 WHERE user_id = :user_id
   AND ((kind = 'device' AND value = :device) OR (kind = 'network' AND value = :network)
        OR kind IN ('hour', 'place'))
UNION ALL
SELECT 'thresholds', CAST(MIN(COALESCE(o.risk_deny_at, :deny_at)) AS VARCHAR(8)), NULL,
       MIN(COALESCE(o.risk_step_up_at, :step_up_at))
  FROM organizations o JOIN memberships m ON m.organization_id = o.id
 WHERE m.user_id = :user_id AND m.status = 'active'
UNION ALL
SELECT 'account_failures', NULL, NULL, COUNT(*) FROM audit_events
 WHERE target = :target AND outcome = 'failure' AND occurred_at >= :since
   AND action IN ('auth.login', 'auth.mfa')
UNION ALL
SELECT 'ip_failures', NULL, NULL, COUNT(*) FROM audit_events
 WHERE ip = :ip AND outcome = 'failure' AND occurred_at >= :since
   AND action IN ('auth.login', 'auth.mfa')
""").bindparams(sa.bindparam("since", type_=UTCDateTime)).columns(
    sa.column("kind", sa.String), sa.column("value", sa.String),
    sa.column("last_seen_at", UTCDateTime), sa.column("hits", sa.Integer))


def _known(session: Session, user_id: int, email: str, ip: str | None,
           wanted: dict[str, str], defaults: Thresholds, since: datetime) -> _Known:
    """The user's known signals, their organizations' thresholds (each one's own, or the
    platform's ``defaults``) and the recent failures: one query (``_READ``)."""
    digests = {kind: _digest(value) for kind, value in wanted.items()}
    result = _Known({}, {}, None, None, None)
    rows = core(session).execute(_READ, {
        "user_id": user_id, "device": digests.get("device"), "network": digests.get("network"),
        "deny_at": defaults.deny_at, "step_up_at": defaults.step_up_at,
        "target": f"user:{email}", "ip": ip or "", "since": since})
    for kind, value, seen, hits in rows:
        if kind == "thresholds":
            result.step_up_at, result.deny_at = hits, int(value) if value else None
        elif kind == "account_failures":
            result.account_failures = hits or 0
        elif kind == "ip_failures":
            result.ip_failures = hits or 0
        elif kind == "hour":
            result.hours[int(value)] = (hits, seen)
        elif kind == "place":
            result.place = (value, seen)
        elif digests.get(kind) == value:
            result.seen[kind] = seen
    return result


_KNOWN = KnownSignal.__table__


def _read(session: Session | None, name: str, read):
    """One read; a failure rolls the (read-only) session back (nothing of it was written)
    and leaves the signal missing."""
    try:
        return read()
    except Exception:  # a signal must never break the sign-in
        log.warning("risk signals %s unavailable", name, exc_info=True)
        if session is not None:
            session.rollback()
        return None


# ---- credential stuffing: distinct accounts failing from one IP


def _stuffing_keys(ip: str, now: float) -> list[str]:
    bucket = int(now // STUFFING_WINDOW_SECONDS)
    return [f"accts:{ip}:{bucket}", f"accts:{ip}:{bucket - 1}"]


def accounts_failing_from(throttle, ip: str, now: float | None = None) -> int:
    """Distinct accounts that failed to sign in from ``ip`` in this window or the last."""
    clock = getattr(throttle, "clock", time.time)
    return max(throttle.store.members(_stuffing_keys(ip, now or clock())))


def note_failed_account(db, ctx, throttle, account: str) -> bool:
    """Count ``account`` among those failing (or throttled) from the client's IP. When the
    count reaches the threshold (once per window), the IP is locked for the longest lockout
    and the run is audited as ``auth.credential_stuffing``. Returns whether that happened.
    Never raises: a throttle store that is down only loses the count."""
    ip = getattr(ctx, "ip", "") or ""
    if throttle is None or not ip:
        return False
    try:
        key = _stuffing_keys(ip, throttle.clock())[0]
        added, size = throttle.store.add_member(key, _digest(account)[:32],
                                                2 * STUFFING_WINDOW_SECONDS)
        limit = getattr(throttle, "ip_accounts", IP_ACCOUNTS)
        if not (added and size == limit):
            return False
        seconds = throttle.max_seconds
        throttle.store.lock(throttle.ip_key(ip), throttle.clock() + seconds,
                            STUFFING_WINDOW_SECONDS + seconds)
        from portal import audit
        with db.transaction() as tx:
            audit.record(tx, ctx, "auth.credential_stuffing", outcome="failure",
                         target=f"ip:{ip}", reason="many_accounts",
                         details={"accounts": size, "window_seconds": STUFFING_WINDOW_SECONDS,
                                  "locked_seconds": seconds})
        return True
    except Exception:
        log.warning("credential stuffing count unavailable", exc_info=True)
        return False


# ---- common (breached) passwords


def common_password(password: str | None) -> bool | None:
    """Whether the password just used is on the list of common passwords from breach
    corpora that registration refuses (``passwords.is_common``). Only this answer is kept,
    never the password. None when there was no password (a federated sign-in)."""
    if not password:
        return None
    from portal.passwords import is_common
    return is_common(password)


# ---- impossible travel


@lru_cache(maxsize=4)
def _geoip(path: str):
    import maxminddb
    return maxminddb.open_database(path)


def locate(path: str, ip: str | None) -> tuple[float, float] | None:
    """Latitude and longitude of ``ip`` in the MaxMind-format database at ``path`` (None
    when the address is not in it). Raises when the file or the library is missing."""
    if not ip:
        return None
    record = _geoip(path).get(ip.strip())
    location = (record or {}).get("location") if isinstance(record, dict) else None
    if not location or location.get("latitude") is None:
        return None
    return float(location["latitude"]), float(location["longitude"])


def place_of(path: str, ip: str | None) -> str | None:
    """The rounded place of ``ip`` to remember, or None (not located, no database)."""
    try:
        here = locate(path, ip) if path else None
    except Exception:
        log.warning("GeoIP lookup failed", exc_info=True)
        return None
    return _place(here) if here else None


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def _place(point: tuple[float, float]) -> str:
    return f"{point[0]:.2f},{point[1]:.2f}"


def _travel(known: _Known, here: tuple[float, float], now: datetime) -> bool | None:
    if known.place is None:
        return None  # the first located sign-in: nothing to compare with
    lat, _, lon = known.place[0].partition(",")
    km = distance_km((float(lat), float(lon)), here)
    hours = max((now - known.place[1]).total_seconds() / 3600, 1 / 60)
    return km >= TRAVEL_MIN_KM and km / hours > TRAVEL_KMH


# ---- the assessment


def assess(session: Session, user_id: int, email: str, ip: str | None,
           device_id: str | None, *, throttle=None, password_common: bool | None = None,
           geoip: str = "", defaults: Thresholds | None = None,
           now: datetime | None = None) -> Assessment:
    """Score one sign-in from two reads (``_READ`` on ``session``; the accounts failing
    from the IP in the throttle store): ``session`` is a read-only
    session such as the request's, and ``throttle``'s store. A read that fails leaves its
    signals missing. ``password_common`` comes from ``common_password`` (None: no password
    in this sign-in); ``geoip`` is the GeoIP database path (empty: no travel signal)."""
    result = Assessment()
    now = now or utcnow()
    defaults = defaults or Thresholds()
    wanted = {kind: value for kind, value in (("device", device_id),
                                              ("network", network_of(ip))) if value}
    known = _read(session, "known", lambda: _known(session, user_id, email, ip, wanted,
                                                   defaults, now - VELOCITY_WINDOW))
    for name, kind in (("new_device", "device"), ("new_network", "network")):
        if kind in wanted and known is not None:
            result.signals[name] = kind not in known.seen
        else:
            result.missing.append(name)
    for name in ("account_failures", "ip_failures"):
        if known is None or (name == "ip_failures" and not ip):
            result.missing.append(name)
        else:
            result.signals[name] = getattr(known, name)
    accounts = _read(None, "ip_accounts", lambda: accounts_failing_from(throttle, ip)) \
        if throttle is not None and ip else None
    if accounts is None:
        result.missing.append("ip_accounts")
    else:
        result.signals["ip_accounts"] = accounts
    if password_common is not None:
        result.signals["common_password"] = password_common
    hour = now.hour
    if known is None:
        result.missing.append("unusual_hour")
    elif sum(hits for hits, _ in known.hours.values()) >= MIN_HOUR_HISTORY:
        result.signals["unusual_hour"] = not any(
            (h % 24) in known.hours for h in (hour - 1, hour, hour + 1))
    if geoip:
        here = _read(None, "geoip", lambda: locate(geoip, ip))
        if here is None or known is None:
            result.missing.append("impossible_travel")
        else:
            result.place = _place(here)
            travel = _travel(known, here, now)
            if travel is not None:
                result.signals["impossible_travel"] = travel
    recently = now - TOUCH_EVERY
    fresh = {kind for kind, seen in (known.seen.items() if known else ()) if seen >= recently}
    if known is not None and hour in known.hours and known.hours[hour][1] >= recently:
        fresh.add("hour")
    if known is not None and known.place is not None and result.place == known.place[0] \
            and known.place[1] >= now - PLACE_EVERY:
        fresh.add("place")
    result.fresh = frozenset(fresh)
    result.thresholds = Thresholds(
        (known.step_up_at if known and known.step_up_at else defaults.step_up_at),
        (known.deny_at if known and known.deny_at else defaults.deny_at))
    score = sum(WEIGHTS[name] for name in WEIGHTS if result.signals.get(name) is True)
    score += min(MAX_ACCOUNT_FAILURES,
                 PER_ACCOUNT_FAILURE * result.signals.get("account_failures", 0))
    score += min(MAX_IP_FAILURES, PER_IP_FAILURE * result.signals.get("ip_failures", 0))
    if result.signals.get("ip_accounts", 0) >= getattr(throttle, "ip_accounts", IP_ACCOUNTS):
        score += WEIGHTS["ip_accounts"]
    result.score = min(100, score)
    result.decision = result.thresholds.decide(result.score)
    return result


def _upsert(dialect: str):
    """INSERT ... ON CONFLICT DO UPDATE for the user's (kind, value): one statement whether
    the signal is new or known, and no race with a concurrent sign-in from the same place.
    ``hits`` counts the days a signal was seen (rows are touched at most once a day): the
    hour histogram reads it."""
    from sqlalchemy.dialects import postgresql, sqlite
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_KNOWN)
    return insert.on_conflict_do_update(
        index_elements=["user_id", "kind", "value"],
        set_={"last_seen_at": insert.excluded.last_seen_at, "hits": _KNOWN.c.hits + 1})


_UPSERTS: dict[str, Any] = {}


def remember(session: Session, user_id: int, ip: str | None, device_id: str | None,
             fresh: frozenset[str] = frozenset(), place: str | None = None,
             now: datetime | None = None) -> None:
    """After a completed sign-in: this device and network are now known for the user, the
    hour counts one more day, and ``place`` (with GeoIP) is the last place. ``fresh``
    (kinds the assessment found seen recently) need no write: a user signing in again
    from the same browser and network within a day writes nothing here."""
    now = now or utcnow()
    wanted = [(kind, _digest(value)) for kind, value in (("device", device_id),
                                                          ("network", network_of(ip)))
              if value]
    wanted.append(("hour", str(now.hour)))
    rows = [{"user_id": user_id, "kind": kind, "value": value, "first_seen_at": now,
             "last_seen_at": now, "hits": 1} for kind, value in wanted if kind not in fresh]
    dialect = session.get_bind().dialect.name
    if rows:
        if dialect not in _UPSERTS:
            _UPSERTS[dialect] = _upsert(dialect)
        core(session).execute(_UPSERTS[dialect], rows)
    if place and "place" not in fresh:
        moved = session.execute(_MOVE_PLACE, {"b_user": user_id, "b_place": place,
                                              "b_now": now}).rowcount
        if not moved:
            if dialect not in _UPSERTS:
                _UPSERTS[dialect] = _upsert(dialect)
            session.execute(_UPSERTS[dialect], [{
                "user_id": user_id, "kind": "place", "value": place, "first_seen_at": now,
                "last_seen_at": now, "hits": 1}])


# The user's one "place" row follows them (with a GeoIP database configured).
_MOVE_PLACE = sa.update(_KNOWN).where(
    _KNOWN.c.user_id == sa.bindparam("b_user"), _KNOWN.c.kind == "place").values(
    value=sa.bindparam("b_place"), last_seen_at=sa.bindparam("b_now"))
