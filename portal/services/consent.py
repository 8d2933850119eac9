"""The consent ledger's first use: what a person accepted, which version, when and how.

Rows are only ever inserted (``record``); the state of a purpose is its newest row. The
client's IP and user agent are stored as keyed hashes (HMAC-SHA256), so a record can be
matched against a claim ("it was me, from this address") without keeping either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.models import ConsentRecord

TERMS = "terms"
PRIVACY = "privacy"
DOCUMENTS = (TERMS, PRIVACY)


@dataclass(frozen=True)
class Document:
    """A published, versioned text people accept (terms) or acknowledge (privacy notice);
    the ledger records which version, so a new version can be asked for at sign-in."""

    key: str
    version: str
    url: str
    label: str


def documents(config) -> tuple[Document, ...]:
    return (Document(TERMS, config["TERMS_VERSION"], config["TERMS_URL"], "terms of use"),
            Document(PRIVACY, config["PRIVACY_VERSION"], config["PRIVACY_URL"],
                     "privacy notice"))


def outdated(session: Session, user_id: int, docs: tuple[Document, ...]) -> list[Document]:
    """The documents this person accepted in an older version than the current one. People
    who never accepted a document (accounts made by an admin or a company sign-in) are not
    asked: their organization's agreement covers them."""
    latest = current(session, user_id)
    found = []
    for doc in docs:
        row = latest.get(doc.key)
        if row is not None and not (row.granted and row.document_version == doc.version):
            found.append(doc)
    return found


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


@dataclass(frozen=True)
class Purpose:
    key: str
    version: str
    label: str
    description: str


KEY = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


def load_purposes(path: str | Path) -> tuple[Purpose, ...]:
    """Read the purposes file; a malformed one raises ValueError naming the problem (the
    app refuses to start rather than show people a wrong list)."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    found: list[Purpose] = []
    for index, item in enumerate(data.get("purposes") or []):
        if not isinstance(item, dict):
            raise ValueError(f"purpose {index + 1} is not a mapping")
        key = str(item.get("key", ""))
        if not KEY.match(key) or key in DOCUMENTS or key in {p.key for p in found}:
            raise ValueError(f"purpose {index + 1}: key {key!r} must be unique, lowercase "
                             f"letters, digits or _, and not {TERMS!r} or {PRIVACY!r}")
        label, version = str(item.get("label", "")).strip(), str(item.get("version", ""))
        if not label or not version or len(version) > 32:
            raise ValueError(f"purpose {key}: needs a label and a version (up to 32 "
                             "characters)")
        found.append(Purpose(key, version, label, str(item.get("description", "")).strip()))
    return tuple(found)


def change(session: Session, ctx: audit.Context, user_id: int, purposes: tuple[Purpose, ...],
           wanted: set[str], *, method: str, key: str) -> dict[str, bool]:
    """Record a grant or a withdrawal for every purpose whose state differs from what the
    person now wants; purposes not in the list are ignored. Returns what changed."""
    now = current(session, user_id)
    changed: dict[str, bool] = {}
    for purpose in purposes:
        granted = purpose.key in wanted
        before = now.get(purpose.key)
        if (before.granted if before else False) == granted and (
                not granted or before.document_version == purpose.version):
            continue
        record(session, user_id=user_id, purpose=purpose.key, version=purpose.version,
               granted=granted, method=method, ip=ctx.ip, user_agent=ctx.user_agent, key=key)
        changed[purpose.key] = granted
    if changed:
        audit.record(session, ctx, "consent.change", target=f"user:{ctx.actor}",
                     details=changed)
    return changed


# -- for apps (a CRM keeping its opt-ins in step) --------------------------------------------

FEED_PAGE = 500


def _visible_users(org_slugs: frozenset[str]):
    """Users with a membership in one of the caller's organizations."""
    from portal.models import Membership, Organization
    return (sa.select(Membership.user_id).join(Organization,
                                               Organization.id == Membership.organization_id)
            .where(Organization.slug.in_(sorted(org_slugs))))


def record_dict(row: ConsentRecord) -> dict:
    return {"id": row.id, "user_id": row.user_id, "purpose": row.purpose,
            "version": row.document_version,
            "status": "granted" if row.granted else "withdrawn", "method": row.method,
            "recorded_at": row.recorded_at.isoformat().replace("+00:00", "Z")}


def for_user(session: Session, user_id: int, org_slugs: frozenset[str],
             purposes: tuple[Purpose, ...]) -> dict | None:
    """The current state of every purpose for a user the caller may see, else None (the
    same answer as for a user who does not exist)."""
    from portal.models import Membership
    if session.scalar(_visible_users(org_slugs).where(Membership.user_id == user_id)
                      .limit(1)) is None:
        return None
    latest = current(session, user_id)
    keys = [*DOCUMENTS, *[p.key for p in purposes]]
    keys += sorted(k for k in latest if k not in keys)  # purposes since removed from the file
    consents = []
    for key in keys:
        row = latest.get(key)
        consents.append(record_dict(row) if row else
                        {"purpose": key, "status": "never", "version": None,
                         "recorded_at": None})
    return {"user_id": user_id, "consents": consents}


def changes_since(session: Session, org_slugs: frozenset[str], since: int,
                  limit: int = FEED_PAGE) -> list[ConsentRecord]:
    """Records after the cursor ``since`` (a record id; ids only grow) about users the
    caller may see, oldest first."""
    return list(session.scalars(
        sa.select(ConsentRecord)
        .where(ConsentRecord.id > since, ConsentRecord.user_id.in_(_visible_users(org_slugs)))
        .order_by(ConsentRecord.id).limit(limit)))


def statistics(session: Session, purposes: tuple[Purpose, ...]) -> list[dict]:
    """Per purpose: how many people have it granted and withdrawn now (their latest record),
    and how many records were written in all."""
    latest = (sa.select(sa.func.max(ConsentRecord.id).label("id"))
              .group_by(ConsentRecord.user_id, ConsentRecord.purpose).subquery())
    now = dict(((purpose, granted), n) for purpose, granted, n in session.execute(
        sa.select(ConsentRecord.purpose, ConsentRecord.granted, sa.func.count())
        .join(latest, latest.c.id == ConsentRecord.id)
        .group_by(ConsentRecord.purpose, ConsentRecord.granted)))
    records = dict(session.execute(sa.select(ConsentRecord.purpose, sa.func.count())
                                   .group_by(ConsentRecord.purpose)).all())
    keys = [*DOCUMENTS, *[p.key for p in purposes]]
    keys += sorted(k for k in records if k not in keys)
    labels = {p.key: p.label for p in purposes} | {TERMS: "Terms of use",
                                                    PRIVACY: "Privacy notice"}
    return [{"purpose": key, "label": labels.get(key, key),
             "granted": now.get((key, True), 0), "withdrawn": now.get((key, False), 0),
             "records": records.get(key, 0)} for key in keys]
