"""Bulk members from CSV: a dry run that reports every row's problem before anything is
written, then an import in batches that are each all-or-nothing, and the CSV export.

The file has a header row with ``email`` and optionally ``name`` and ``role``. New addresses
become accounts without a password (they sign in through the organization's identity
provider, or set a password through an invitation or reset); existing accounts get a
membership. The same escalation rule as the pages holds: only roles the importing admin holds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.errors import TrellisError, ValidationError
from portal.models import (
    Membership,
    MembershipSource,
    MembershipStatus,
    Organization,
    RoleGrant,
    User,
    UserStatus,
)
from portal.services.members import Actor
from portal.services.roles import MANUAL
from portal.validation import normalize_email

COLUMNS = ("email", "name", "role")
BATCH = 1000
MAX_ROWS = 200_000


@dataclass
class RowError:
    line: int
    email: str
    message: str


@dataclass
class Report:
    rows: int = 0
    valid: int = 0
    created_users: int = 0
    added_members: int = 0
    errors: list[RowError] = field(default_factory=list)
    batches_done: int = 0
    batches_failed: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str
    role: str


def read_rows(data: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the header is checked first, then each line is yielded."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValidationError(f"The file is not UTF-8 text (byte {error.start} cannot be "
                              "read). Save it as CSV UTF-8 and try again.",
                              code="csv_encoding") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [cell.strip().lower() for cell in next(reader, [])]
    if "email" not in header or any(cell not in COLUMNS for cell in header) or \
            len(set(header)) != len(header):
        raise ValidationError(f"The first line must name the columns: email, and optionally "
                              f"name and role. Found: {', '.join(header) or 'nothing'}.",
                              code="csv_header")
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        yield number, dict(zip(header, (cell.strip() for cell in cells), strict=False))


def validate(session: Session, org: Organization, actor: Actor, known_roles: list[str],
             data: bytes) -> tuple[list[Row], Report]:
    """Check every row; nothing is written. Rows with problems are reported and left out."""
    report, rows, seen = Report(), [], set()
    members = set(session.scalars(sa.select(User.email).join(Membership).where(
        Membership.organization_id == org.id)))
    for line, cells in read_rows(data):
        report.rows += 1
        if report.rows > MAX_ROWS:
            raise ValidationError(f"At most {MAX_ROWS:,} rows per file.", code="csv_too_long")
        raw, role = cells.get("email", ""), cells.get("role") or "member"
        problem, email = None, raw
        try:
            email = normalize_email(raw)
        except TrellisError:
            problem = "not a valid email address"
        if problem is None and email in seen:
            problem = "appears twice in the file"
        elif problem is None and email in members:
            problem = "is already a member"
        elif problem is None and role not in known_roles:
            problem = f"this organization has no role {role!r}"
        elif problem is None and not actor.may_grant(role):
            problem = f"you can only give roles you hold yourself, not {role!r}"
        if problem:
            report.errors.append(RowError(line, raw[:320], problem))
            continue
        seen.add(email)
        rows.append(Row(line, email, cells.get("name", "")[:200], role))
    report.valid = len(rows)
    return rows, report


def run(db: Database, ctx: audit.Context, org_id: int, rows: list[Row], report: Report,
        progress: Callable[[int, int], None] | None = None) -> Report:
    """Import valid rows in batches of 1,000, each in its own transaction: a failing batch
    changes nothing and is reported, the others go in."""
    batches = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    for number, batch in enumerate(batches, start=1):
        try:
            with db.transaction() as session:
                created, added = _import_batch(session, ctx, org_id, batch)
        except TrellisError as error:
            report.batches_failed.append((number, error.message))
        except sa.exc.IntegrityError:
            report.batches_failed.append((number, "another change to the same people happened "
                                                  "at the same time; import the file again"))
        else:
            report.created_users += created
            report.added_members += added
            report.batches_done += 1
        if progress:
            progress(number, len(batches))
    if report.added_members >= ANALYZE_AFTER:
        refresh_statistics(db)
    return report


# After an import this large PostgreSQL's statistics still describe the tables before it, and
# its planner would scan every user for a search instead of using the trigram indexes until
# autovacuum next analyzes them; a few hundred milliseconds of ANALYZE now avoids that.
ANALYZE_AFTER = 5000


def refresh_statistics(db: Database) -> None:
    """ANALYZE the tables an import grows (PostgreSQL; SQLite plans without statistics)."""
    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect() as connection:
        connection.execute(sa.text("ANALYZE users, memberships, role_grants"))
        connection.commit()


USERS, MEMBERS, GRANTS = User.__table__, Membership.__table__, RoleGrant.__table__


def _import_batch(session: Session, ctx: audit.Context, org_id: int,
                  batch: list[Row]) -> tuple[int, int]:
    emails = [row.email for row in batch]
    existing = dict(session.execute(sa.select(USERS.c.email, USERS.c.id).where(
        USERS.c.email.in_(emails))).all())
    now = utcnow()
    new = [{"email": row.email, "display_name": row.name, "status": UserStatus.ACTIVE.value,
            "password_hash": None, "is_operator": False, "created_at": now,
            "last_login_at": None} for row in batch if row.email not in existing]
    if new:
        session.execute(sa.insert(USERS), new)
        existing.update(session.execute(sa.select(USERS.c.email, USERS.c.id).where(
            USERS.c.email.in_([item["email"] for item in new]))).all())
    session.execute(sa.insert(MEMBERS), [
        {"user_id": existing[row.email], "organization_id": org_id,
         "status": MembershipStatus.ACTIVE.value, "source": MembershipSource.MANUAL.value,
         "created_at": now, "updated_at": now, "version": 1} for row in batch])
    grants = [{"user_id": existing[row.email], "organization_id": org_id, "role": row.role,
               "source": MANUAL} for row in batch if row.role != "member"]
    if grants:
        session.execute(sa.insert(GRANTS), grants)
    audit.record_many(session, ctx, [
        {"action": "membership.add", "target": f"user:{row.email}", "organization_id": org_id,
         "details": {"source": "csv", "role": row.role, "line": row.line}} for row in batch])
    return len(new), len(batch)


def export_rows(session: Session, org: Organization) -> Iterable[str]:
    """The members as CSV lines (streamed, in pages, so 100,000 members never sit in
    memory at once)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("email", "name", "status", "roles", "added_by", "last_sign_in"))
    yield out.getvalue()
    after = ""
    while True:
        page = session.execute(
            sa.select(User.id, User.email, User.display_name, Membership.status,
                      Membership.source, User.last_login_at)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == org.id, User.email > after)
            .order_by(User.email).limit(2000)).all()
        if not page:
            return
        roles: dict[int, list[str]] = {}
        for user_id, role in session.execute(sa.select(RoleGrant.user_id, RoleGrant.role).where(
                RoleGrant.organization_id == org.id,
                RoleGrant.user_id.in_([r.id for r in page]))):
            roles.setdefault(user_id, []).append(role)
        out = io.StringIO()
        writer = csv.writer(out)
        for r in page:
            writer.writerow((r.email, _safe(r.display_name), r.status.value,
                             " ".join(sorted(set(roles.get(r.id, [])))), r.source.value,
                             r.last_login_at.isoformat() if r.last_login_at else ""))
        yield out.getvalue()
        after = page[-1].email


def _safe(text: str) -> str:
    """Cells that a spreadsheet would run as a formula are quoted as text."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
