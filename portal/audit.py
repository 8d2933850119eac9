"""The append-only, hash-chained audit trail.

``record`` adds an event to the caller's session, so it commits or rolls back together with
the change it describes. Each event's hash covers its canonical JSON and the previous event's
hash; ``verify`` walks the chain and names the first event that was altered, inserted or
removed. Appenders are serialized by updating the single ``audit_head`` row first.

Personal data and the chain (format 2, since migration 0016): the fields that can name a
person (``PERSONAL_FIELDS``) are not hashed into the chain directly. Each event gets a random
salt and the chain covers ``personal_digest`` = SHA-256(salt + those fields). While the salt
is there, ``verify`` recomputes the digest, so an edit of any field is still caught. Erasure
(``pseudonymize``) replaces the person's email by a keyed hash, blanks their IP address and
browser, and deletes the salt: the digest then stays in the chain as it was (so the chain and
every later hash are unchanged) but can no longer be tested against guessed emails.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.db import core, utcnow
from portal.models import AuditEvent, AuditHead

GENESIS = "0" * 64
# The chain covers these directly, and the personal fields through ``personal_digest``.
HASHED_FIELDS = ("seq", "occurred_at", "actor_id", "organization_id", "action", "outcome",
                 "request_id", "personal_digest")
PERSONAL_FIELDS = ("actor", "target", "reason", "ip", "user_agent", "details")
EXPORT_FIELDS = ("seq", "occurred_at", "actor_id", "actor", "organization_id", "action",
                 "target", "outcome", "reason", "ip", "user_agent", "request_id", "details",
                 "prev_hash", "hash")


@dataclass
class Context:
    """Who is acting and from where; built by the web layer or the CLI."""

    actor_id: int | None = None
    actor: str = ""
    ip: str = ""
    user_agent: str = ""
    request_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def acting_as(self, actor_id: int, actor: str) -> Context:
        """The same request, attributed to the user who just signed in."""
        return Context(actor_id=actor_id, actor=actor, ip=self.ip, user_agent=self.user_agent,
                       request_id=self.request_id)


def record(session: Session, context: Context, action: str, *, outcome: str = "success",
           target: str = "", organization_id: int | None = None, reason: str = "",
           details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one event in the caller's transaction and return its stored values."""
    last_seq, last_hash = _lock_head(session)
    event = {"seq": last_seq + 1, "occurred_at": utcnow(), "actor_id": context.actor_id,
             "actor": context.actor[:320], "organization_id": organization_id,
             "action": action, "target": target[:400], "outcome": outcome,
             "reason": reason[:400], "ip": context.ip[:45],
             "user_agent": context.user_agent[:400], "request_id": context.request_id[:64],
             "details": details or {}, "prev_hash": last_hash}
    _seal_personal(event)
    event["hash"] = _chain(last_hash, event)
    # Prebuilt Core statements: this runs on every sign-in.
    core(session).execute(INSERT_EVENT, event)
    _moved(session, event["seq"], event["hash"])
    return event


def record_many(session: Session, context: Context,
                events: list[dict[str, Any]]) -> None:
    """Append several events with one head update: bulk changes (a directory sync) audit
    every change without paying a round trip per event for the chain head. Each item has
    ``action`` and optionally ``target``, ``organization_id``, ``outcome``, ``reason`` and
    ``details``."""
    if not events:
        return
    last_seq, last_hash = _lock_head(session)
    now, rows = utcnow(), []
    for item in events:
        event = {"seq": last_seq + 1, "occurred_at": now, "actor_id": context.actor_id,
                 "actor": context.actor[:320], "organization_id": item.get("organization_id"),
                 "action": item["action"], "target": item.get("target", "")[:400],
                 "outcome": item.get("outcome", "success"),
                 "reason": item.get("reason", "")[:400], "ip": context.ip[:45],
                 "user_agent": context.user_agent[:400],
                 "request_id": context.request_id[:64], "details": item.get("details") or {},
                 "prev_hash": last_hash}
        _seal_personal(event)
        event["hash"] = _chain(last_hash, event)
        rows.append(event)
        last_seq, last_hash = event["seq"], event["hash"]
    core(session).execute(INSERT_EVENT, rows)
    _moved(session, last_seq, last_hash)


HEAD = AuditHead.__table__
EVENTS = AuditEvent.__table__
INSERT_EVENT = sa.insert(EVENTS)
LOCK_HEAD = (sa.update(HEAD).where(HEAD.c.id == 1).values(last_seq=HEAD.c.last_seq)
             .returning(HEAD.c.last_seq, HEAD.c.last_hash))
MOVE_HEAD = sa.update(HEAD).where(HEAD.c.id == 1).values(
    last_seq=sa.bindparam("new_seq"), last_hash=sa.bindparam("new_hash"))


def _lock_head(session: Session) -> tuple[int, str]:
    # The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) before we read the
    # head, so two concurrent appenders can never chain onto the same previous event. The
    # lock lasts until the transaction ends, so later events of the same (sub)transaction
    # chain onto the head this one moved (``_moved``) without locking again; a savepoint
    # begun or rolled back in between is another (sub)transaction and locks afresh.
    cached = session.info.get("audit_head")
    if cached is not None and cached[0] is _current(session):
        return cached[1], cached[2]
    row = core(session).execute(LOCK_HEAD).first()
    if row is None:  # a database created without the initial migration's head row
        session.execute(sa.insert(HEAD).values(id=1, last_seq=0, last_hash=GENESIS))
        return 0, GENESIS
    return row.last_seq, row.last_hash


def _seal_personal(event: dict[str, Any]) -> None:
    event["personal_salt"] = os.urandom(16).hex()
    event["personal_digest"] = personal_digest(event["personal_salt"], event)
    event["pseudonymized_at"] = None


def personal_digest(salt: str, fields: dict[str, Any]) -> str:
    """What the chain knows of an event's personal fields: salted, so that once the salt is
    deleted nobody can confirm a guess ("was it alice@example.com?") against it."""
    data = {name: fields[name] for name in PERSONAL_FIELDS}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256((salt + text).encode()).hexdigest()


def _current(session: Session):
    return session.get_nested_transaction() or session.get_transaction()


def _moved(session: Session, seq: int, hash_: str) -> None:
    core(session).execute(MOVE_HEAD, {"new_seq": seq, "new_hash": hash_})
    session.info["audit_head"] = (_current(session), seq, hash_)


def canonical(fields: dict[str, Any]) -> str:
    data = {name: fields[name] for name in HASHED_FIELDS}
    data["occurred_at"] = _timestamp(fields["occurred_at"])
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _chain(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(fields)).encode()).hexdigest()


def event_hash(event: AuditEvent, prev_hash: str) -> str:
    """The hash a stored event should have, given its predecessor's."""
    return _chain(prev_hash, {name: getattr(event, name) for name in HASHED_FIELDS})


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    problem: str = ""
    seq: int | None = None


def verify(session: Session, batch: int = 1000) -> VerifyResult:
    """Walk the chain in order; stop at the first event that does not fit."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for event in _iterate(session, batch):
        if event.seq != expected_seq:
            missing = event.seq > expected_seq
            return VerifyResult(False, checked, (
                f"event {expected_seq} is missing (removed): the chain jumps to {event.seq}"
                if missing else f"event {event.seq} appears twice or out of order (inserted)"),
                expected_seq)
        if event.prev_hash != prev_hash:
            return VerifyResult(False, checked, f"event {event.seq} does not follow event "
                                f"{event.seq - 1} (inserted or reordered)", event.seq)
        if event.personal_salt:
            fields = {name: getattr(event, name) for name in PERSONAL_FIELDS}
            personal_ok = personal_digest(event.personal_salt, fields) == event.personal_digest
        else:  # pseudonymized: its personal fields are no longer part of the proof
            personal_ok = event.pseudonymized_at is not None
        if not personal_ok or event_hash(event, prev_hash) != event.hash:
            return VerifyResult(False, checked, f"event {event.seq} was altered "
                                f"(id {event.id}, action {event.action})", event.seq)
        prev_hash, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
    head = session.get(AuditHead, 1)
    last_seq = head.last_seq if head else 0
    if last_seq != checked or (head and head.last_hash != prev_hash):
        return VerifyResult(False, checked, f"events after {checked} were removed: the chain "
                            f"head says the last event is {last_seq}", checked + 1)
    return VerifyResult(True, checked)


def _iterate(session: Session, batch: int, since: datetime | None = None
             ) -> Iterator[AuditEvent]:
    last = 0
    while True:
        query = sa.select(AuditEvent).where(AuditEvent.seq > last)
        if since is not None:
            query = query.where(AuditEvent.occurred_at >= since)
        rows = session.execute(query.order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()


PSEUDONYM_PREFIX = "erased:"


def pseudonym(key: str, email: str) -> str:
    """The keyed hash that stands for an erased person's email in the trail: the same person
    always gets the same pseudonym (their events can still be grouped, and an operator who
    holds the key can answer "was this address involved?"), but it cannot be reversed."""
    digest = hmac.new(key.encode(), email.encode(), hashlib.sha256).hexdigest()[:32]
    return PSEUDONYM_PREFIX + digest


def _replace(value: Any, email: str, alias: str) -> Any:
    if isinstance(value, str):
        return value.replace(email, alias) if email in value else value
    if isinstance(value, dict):
        return {_replace(k, email, alias): _replace(v, email, alias) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, email, alias) for v in value]
    return value


def pseudonymize(session: Session, key: str, user_id: int | None, emails: list[str],
                 *, before_seq: int | None = None, drop_network: bool = True) -> int:
    """Replace the person's email addresses by their pseudonym in every event that names them
    or that they caused, blank the IP address and browser of the events they caused
    (``drop_network``), and delete those events' salts. The chain still verifies. Returns how
    many events were changed. ``before_seq`` limits the pass to older events."""
    emails = sorted({e for e in emails if e}, key=len, reverse=True)
    conditions = [AuditEvent.actor.in_(emails)] + [
        AuditEvent.target.contains(e, autoescape=True) for e in emails]
    if user_id is not None:
        conditions.append(AuditEvent.actor_id == user_id)
    now = utcnow()
    changed = sum(_pseudonymize_event(event, key, user_id, emails, now, drop_network)
                  for event in _matching(session, sa.or_(*conditions), before_seq))
    # Events that only mention the address in ``details`` or ``reason`` (JSON is not
    # searchable the same way on both databases).
    changed += _pseudonymize_mentions(session, key, emails, now, before_seq)
    return changed


def _matching(session: Session, condition, before_seq: int | None) -> Iterator[AuditEvent]:
    """The events matching ``condition`` (older than ``before_seq``), in order, read 500 at
    a time so a long trail never sits in memory at once."""
    last = 0
    while True:
        query = sa.select(AuditEvent).where(AuditEvent.seq > last, condition)
        if before_seq is not None:
            query = query.where(AuditEvent.seq < before_seq)
        rows = session.scalars(query.order_by(AuditEvent.seq).limit(500)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def _pseudonymize_event(event: AuditEvent, key: str, user_id: int | None, emails: list[str],
                        now: datetime, drop_network: bool) -> int:
    before = {name: getattr(event, name) for name in PERSONAL_FIELDS}
    values = dict(before)
    for email in emails:
        alias = pseudonym(key, email)
        for name in PERSONAL_FIELDS:
            values[name] = _replace(values[name], email, alias)
    if drop_network and user_id is not None and event.actor_id == user_id:
        values["ip"], values["user_agent"] = "", ""
    if values == before:
        return 0
    for name, value in values.items():
        setattr(event, name, value)
    event.personal_salt = ""
    event.pseudonymized_at = event.pseudonymized_at or now
    return 1


def _pseudonymize_mentions(session: Session, key: str, emails: list[str], now: datetime,
                           before_seq: int | None) -> int:
    """Events that name the person only inside ``reason`` or ``details`` (an invitation
    sent to them, a member added by an admin)."""
    pattern = [sa.cast(AuditEvent.details, sa.Text).contains(e, autoescape=True)
               for e in emails] + [AuditEvent.reason.contains(e, autoescape=True)
                                   for e in emails]
    return sum(_pseudonymize_event(event, key, None, emails, now, False)
               for event in _matching(session, sa.or_(*pattern), before_seq))


def export_rows(session: Session, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    for event in _iterate(session, 1000, since):
        row = {name: getattr(event, name) for name in EXPORT_FIELDS}
        row["occurred_at"] = _timestamp(event.occurred_at)
        yield row


def export(session: Session, fmt: str, since: datetime | None = None) -> Iterator[str]:
    """Stream events as JSON lines or CSV (with a header row)."""
    rows = export_rows(session, since)
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(row, ensure_ascii=False, default=str) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["details"] = json.dumps(row["details"], sort_keys=True)
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell() or buffer.getvalue():
        yield buffer.getvalue()
