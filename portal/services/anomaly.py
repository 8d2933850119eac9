"""Anomaly detection over sign-in events: for the platform and for each organization, the
number of sign-ins, failed sign-ins, lockouts and failed second-factor codes in each window
(``ANOMALY_WINDOW_MINUTES``) is compared with its recent baseline.

The baseline of each rate is an exponentially weighted moving average and variance (EWMA,
weight ``ALPHA`` for the newest window), kept in ``anomaly_baselines``. A window whose count
is at least ``ANOMALY_MIN_COUNT`` and lies more than ``ANOMALY_Z`` standard deviations above
the average, once the baseline has ``MIN_SAMPLES`` windows behind it, is an anomaly: an
audit event ``security.anomaly`` (so every SIEM stream that selects it receives it: the
organization's own streams for an organization's anomaly) and an email to the
organization's administrators (the platform operators for a platform-wide one).

The standard deviation used is never below the square root of the average (what a Poisson
count of that average would show), so a perfectly flat baseline does not turn one extra
sign-in into an alert. Only rises are reported: a drop in sign-ins is not an attack signal.
Anomalous windows still feed the baseline, so a lasting change of level is reported in its
first windows and then becomes the new normal.

The worker evaluates each complete window once (under a named lock; the windows since the
last evaluated one, at most ``CATCH_UP`` of them, so a stopped worker does not flood).
Events count for an organization through the account's active memberships (sign-in events
name the account, not the organization).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.models import (
    AnomalyBaseline,
    AuditEvent,
    Membership,
    MembershipStatus,
    Organization,
    RoleGrant,
    User,
    UserStatus,
)

ALPHA = 0.3
MIN_SAMPLES = 8
CATCH_UP = 96
PLATFORM = "platform"
# metric -> (audit action, outcome)
METRICS = {"sign_ins": ("auth.login", "success"), "failures": ("auth.login", "failure"),
           "lockouts": ("auth.lockout", "failure"), "mfa_failures": ("auth.mfa", "failure")}
LABELS = {"sign_ins": "sign-ins", "failures": "failed sign-ins", "lockouts": "lockouts",
          "mfa_failures": "failed second-factor codes"}


@dataclass(frozen=True)
class Settings:
    window: timedelta = timedelta(minutes=15)
    z: float = 3.0
    min_count: int = 10

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        return cls(window=timedelta(minutes=config["ANOMALY_WINDOW_MINUTES"]),
                   z=float(config["ANOMALY_Z"]), min_count=config["ANOMALY_MIN_COUNT"])


@dataclass
class Finding:
    scope: str
    organization_id: int | None
    metric: str
    count: int
    mean: float
    std: float
    z: float
    window_start: datetime
    window_end: datetime


@dataclass
class Report:
    windows: int = 0
    findings: list[Finding] = field(default_factory=list)
    mail_ids: list[int] = field(default_factory=list)


def scope_of(organization_id: int | None) -> str:
    return PLATFORM if organization_id is None else f"org:{organization_id}"


def floor_window(when: datetime, window: timedelta) -> datetime:
    """The start of the window ``when`` falls in (windows are aligned to the epoch)."""
    seconds = int(window.total_seconds())
    epoch = int(when.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=when.tzinfo)


def counts(session: Session, start: datetime, end: datetime
           ) -> dict[tuple[int | None, str], int]:
    """``(organization id or None for the platform, metric) -> count`` for events in
    ``[start, end)``: one pass for the platform, one joined through memberships."""
    cases = [sa.and_(AuditEvent.action == action, AuditEvent.outcome == outcome)
             for action, outcome in METRICS.values()]
    metric = sa.case(*[(case, name) for case, name in zip(cases, METRICS, strict=True)],
                     else_=None).label("metric")
    window = sa.and_(AuditEvent.occurred_at >= start, AuditEvent.occurred_at < end,
                     AuditEvent.action.in_({a for a, _ in METRICS.values()}))
    found: dict[tuple[int | None, str], int] = {}
    for name, n in session.execute(sa.select(metric, sa.func.count()).where(window)
                                   .group_by(metric)):
        if name:
            found[(None, name)] = n
    # The account an event is about: every sign-in event names it as "user:<email>"; the
    # email is cut out of the target so the lookup uses the unique index on users.email (IP
    # lockouts name no account).
    account = sa.and_(AuditEvent.target.startswith("user:"),
                      User.email == sa.func.substr(AuditEvent.target, 6))
    by_org = (sa.select(Membership.organization_id, metric,
                        sa.func.count(sa.distinct(AuditEvent.seq)))
              .select_from(AuditEvent).join(User, account)
              .join(Membership, sa.and_(Membership.user_id == User.id,
                                        Membership.status == MembershipStatus.ACTIVE))
              .where(window).group_by(Membership.organization_id, metric))
    for org_id, name, n in session.execute(by_org):
        if name:
            found[(org_id, name)] = n
    return found


def _update(row: AnomalyBaseline, value: int) -> None:
    """EWMA of the mean and variance (West's incremental form)."""
    if row.samples == 0:
        row.mean, row.variance = float(value), 0.0
    else:
        diff = value - row.mean
        increment = ALPHA * diff
        row.mean += increment
        row.variance = (1 - ALPHA) * (row.variance + diff * increment)
    row.samples += 1


def judge(row: AnomalyBaseline, value: int, settings: Settings) -> tuple[float, float] | None:
    """``(z, std)`` when ``value`` is an anomaly against the baseline in ``row`` (before it is
    updated with it), else None."""
    if row.samples < MIN_SAMPLES or value < settings.min_count:
        return None
    std = max(math.sqrt(max(row.variance, 0.0)), math.sqrt(max(row.mean, 1.0)))
    z = (value - row.mean) / std
    return (z, std) if z > settings.z else None


def observe(session: Session, window_start: datetime, window_end: datetime,
            found: dict[tuple[int | None, str], int], settings: Settings) -> list[Finding]:
    """Compare one window's counts with the baselines, then fold them in. Every existing
    baseline sees the window (a count of 0 when nothing happened); a baseline starts at an
    organization's first event."""
    rows = {(row.scope, row.metric): row for row in session.scalars(sa.select(AnomalyBaseline))}
    org_ids = {org_id for org_id, _ in found if org_id is not None}
    wanted = {(PLATFORM, metric, None) for metric in METRICS}
    wanted |= {(scope_of(org_id), metric, org_id) for org_id in org_ids for metric in METRICS}
    for scope, metric, org_id in wanted:
        if (scope, metric) not in rows:
            row = AnomalyBaseline(scope=scope, organization_id=org_id, metric=metric, mean=0.0,
                                  variance=0.0, samples=0, window_end=window_start)
            session.add(row)
            rows[(scope, metric)] = row
    findings = []
    for (scope, metric), row in rows.items():
        if row.window_end is not None and row.window_end >= window_end:
            continue  # this window was already folded in
        org_id = row.organization_id
        value = found.get((org_id, metric), 0)
        verdict = judge(row, value, settings)
        if verdict is not None:
            findings.append(Finding(scope, org_id, metric, value, row.mean, verdict[1],
                                    verdict[0], window_start, window_end))
        _update(row, value)
        row.window_end = window_end
    session.flush()
    return findings


def evaluate(db: Database, ctx: audit.Context, settings: Settings, *,
             now: datetime | None = None,
             link_for: Callable[[str | None], str] | None = None) -> Report:
    """The worker's pass: every complete window since the last evaluated one (or the last
    complete window on a first run) is counted, judged and folded into the baselines, each
    window in its own transaction with its anomalies' audit events and emails."""
    from portal.services import locks
    report = Report()
    now = now or utcnow()
    last_end = floor_window(now, settings.window)
    try:
        with locks.exclusive(db, "anomaly-detection", "Anomaly detection is running."):
            with db.sessions() as read:
                done = read.scalar(sa.select(sa.func.max(AnomalyBaseline.window_end))
                                   .where(AnomalyBaseline.scope == PLATFORM))
            start = done if done is not None else last_end - settings.window
            start = max(start, last_end - settings.window * CATCH_UP)
            while start + settings.window <= last_end:
                end = start + settings.window
                with db.transaction() as tx:
                    findings = observe(tx, start, end, counts(tx, start, end), settings)
                    for finding in findings:
                        report.mail_ids += alert(tx, ctx, finding, link_for)
                report.findings += findings
                report.windows += 1
                start = end
    except locks.Busy:
        pass  # another worker is on it
    return report


def alert(session: Session, ctx: audit.Context, finding: Finding,
          link_for: Callable[[str | None], str] | None = None) -> list[int]:
    """Audit the anomaly (SIEM streams pick it up from the trail) and mail whoever watches
    the scope (``link_for`` gives the organization's audit page, by slug); returns the
    message ids."""
    from portal.services import outbox
    from portal.services.mfa import ADMIN_ROLES
    details = {"scope": finding.scope, "metric": finding.metric, "count": finding.count,
               "baseline_mean": round(finding.mean, 2), "baseline_std": round(finding.std, 2),
               "z": round(finding.z, 2), "window_start": finding.window_start.isoformat(),
               "window_end": finding.window_end.isoformat()}
    audit.record(session, ctx, "security.anomaly", outcome="failure",
                 target=f"{finding.scope}:{finding.metric}",
                 organization_id=finding.organization_id, reason=f"{finding.metric}_spike",
                 details=details)
    org = session.get(Organization, finding.organization_id) \
        if finding.organization_id is not None else None
    if org is not None:
        recipients = session.scalars(
            sa.select(User.email).distinct().join(RoleGrant, RoleGrant.user_id == User.id)
            .join(Membership, sa.and_(Membership.user_id == User.id,
                                      Membership.organization_id == org.id))
            .where(RoleGrant.organization_id == org.id, RoleGrant.role.in_(ADMIN_ROLES),
                   Membership.status == MembershipStatus.ACTIVE,
                   User.status == UserStatus.ACTIVE)).all()
    else:
        recipients = session.scalars(sa.select(User.email).where(
            User.is_operator.is_(True), User.status == UserStatus.ACTIVE)).all()
    context = {"what": LABELS[finding.metric], "count": finding.count,
               "usual": round(finding.mean, 1), "z": round(finding.z, 1),
               "start": finding.window_start.strftime("%Y-%m-%d %H:%M"),
               "end": finding.window_end.strftime("%H:%M"),
               "scope": org.name if org is not None else "the whole platform",
               "link": link_for(org.slug if org is not None else None) if link_for else ""}
    ids = []
    for email in sorted(recipients):
        ids.append(outbox.enqueue(session, to=email, template="anomaly", org=org,
                                  context=context).id)
    return ids

