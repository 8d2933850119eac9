"""An organization's own audit trail, as its admins see it: filtered by actor, action and
time, paged newest first, and exported as CSV or JSON lines.

Every query is pinned to ``organization_id == org.id``: events of other organizations, and
platform events that belong to no organization, never appear, whatever the filters say.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.errors import ValidationError
from portal.models import AuditEvent, Organization
from portal.services.member_import import _safe

PAGE_SIZE = 50
FIELDS = ("seq", "occurred_at", "actor", "action", "target", "outcome", "reason", "ip",
          "details")


@dataclass(frozen=True)
class Filters:
    actor: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None  # exclusive

    def as_args(self) -> dict[str, str]:
        """The query string that reproduces these filters (for links and exports)."""
        args = {"actor": self.actor, "action": self.action,
                "from": self.since.strftime("%Y-%m-%d") if self.since else "",
                "to": (self.until - timedelta(days=1)).strftime("%Y-%m-%d")
                if self.until else ""}
        return {k: v for k, v in args.items() if v}


def _day(raw: str, name: str) -> datetime | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return datetime.strptime(raw[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError(f"The {name} date must look like 2026-01-31.",
                              code="invalid_date") from None


def parse_filters(args: Mapping[str, str]) -> Filters:
    """``actor`` (part of the email), ``action`` (``domain`` matches every ``domain.*``
    action), ``from`` and ``to`` (days, UTC, both included)."""
    since, until = _day(args.get("from", ""), "from"), _day(args.get("to", ""), "to")
    if until is not None:
        until += timedelta(days=1)
    if since and until and since >= until:
        raise ValidationError("The from date must not be after the to date.",
                              code="invalid_date")
    def text(key: str) -> str:  # NUL is never stored, and PostgreSQL refuses it
        return (args.get(key) or "").replace("\x00", "").strip()
    return Filters(actor=text("actor")[:200], action=text("action").lower()[:64],
                   since=since, until=until)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _query(org: Organization, filters: Filters) -> sa.Select:
    query = sa.select(AuditEvent).where(AuditEvent.organization_id == org.id)
    if filters.actor:
        pattern = f"%{_escape_like(filters.actor.lower())}%"
        query = query.where(sa.func.lower(AuditEvent.actor).like(pattern, escape="\\"))
    if filters.action:
        action = filters.action.rstrip(".*")
        query = query.where(sa.or_(
            AuditEvent.action == action,
            AuditEvent.action.like(f"{_escape_like(action)}.%", escape="\\")))
    if filters.since is not None:
        query = query.where(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.occurred_at < filters.until)
    return query


@dataclass(frozen=True)
class Page:
    events: list[AuditEvent]
    next_before: int | None  # keyset: pass as ``before`` for the next (older) page


def page(session: Session, org: Organization, filters: Filters, before: int | None = None,
         limit: int = PAGE_SIZE) -> Page:
    """Newest first; keyset pagination on the chain's sequence number."""
    query = _query(org, filters)
    if before is not None:
        query = query.where(AuditEvent.seq < before)
    rows = list(session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].seq if more and rows else None)


def as_dict(event: AuditEvent) -> dict[str, Any]:
    return {"seq": event.seq,
            "occurred_at": event.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": event.actor, "action": event.action, "target": event.target,
            "outcome": event.outcome, "reason": event.reason, "ip": event.ip,
            "details": event.details or {}}


def _events(session: Session, org: Organization, filters: Filters,
            batch: int = 1000) -> Iterator[AuditEvent]:
    """Oldest first, in batches, so an export of a long trail holds little in memory."""
    last = 0
    base = _query(org, filters)
    while True:
        rows = list(session.scalars(base.where(AuditEvent.seq > last)
                                    .order_by(AuditEvent.seq).limit(batch)))
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()


def export(session: Session, org: Organization, filters: Filters, fmt: str) -> Iterator[str]:
    """Stream the filtered events as JSON lines or CSV (header row; cells a spreadsheet
    would run as formulas are written as text)."""
    if fmt == "jsonl":
        for event in _events(session, org, filters):
            yield json.dumps(as_dict(event), ensure_ascii=False, sort_keys=True) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for event in _events(session, org, filters):
        row = as_dict(event)
        row["details"] = json.dumps(row["details"], sort_keys=True, ensure_ascii=False)
        writer.writerow([row["seq"], *(_safe(str(row[name])) for name in FIELDS[1:])])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()
