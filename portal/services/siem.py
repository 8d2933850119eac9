"""Audit events streamed to SIEMs: syslog (RFC 5424 over TCP, optionally TLS), signed
webhooks and rotating JSON-lines files.

The audit trail is the outbox. ``audit.record`` writes each event in the caller's
transaction, and every stream keeps a cursor: the ``seq`` of the last event it delivered.
Delivery reads the events after the cursor that the stream selects, sends them as one batch
and moves the cursor only once the receiver took them; a receiver that is down holds its
stream's cursor (nothing is lost, order is kept), the batch is retried with a doubling wait,
and after ``SIEM_MAX_ATTEMPTS`` the batch's range is written to ``siem_dead_letters`` and the
stream moves on. ``replay`` moves a cursor back. Appenders serialize on the audit head row, so
events become visible in ``seq`` order and a cursor never skips a late commit.

A stream is claimed by a conditional UPDATE of its ``next_attempt_at`` (a lease), so two
workers never send the same batch at once; a worker that dies leaves the batch to be sent
again when the lease ends: delivery is at least once, and each event carries its ``seq`` for
receivers that deduplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets as pysecrets
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.crypto import SecretBox
from portal.db import Database, utcnow
from portal.errors import Conflict, NotFound, ValidationError
from portal.models import AuditEvent, AuditHead, Organization, SiemDeadLetter, SiemStream
from portal.services import siem_formats

log = logging.getLogger("trellis.siem")

KINDS = ("syslog", "webhook", "file")
FIRST_RETRY = timedelta(seconds=5)
LONGEST_RETRY = timedelta(minutes=10)
LEASE = timedelta(seconds=90)
TIMEOUT = 10
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
ACTION_PREFIX = re.compile(r"^[a-z_]+(\.[a-z_]*)?$")


@dataclass(frozen=True)
class SiemConfig:
    max_attempts: int = 8
    batch_size: int = 500

    @classmethod
    def from_settings(cls, config: Mapping[str, Any]) -> SiemConfig:
        return cls(max_attempts=config["SIEM_MAX_ATTEMPTS"],
                   batch_size=config["SIEM_BATCH_SIZE"])


@dataclass
class Report:
    delivered: int = 0
    batches: int = 0
    retrying: list[int] = field(default_factory=list)
    dead_lettered: list[int] = field(default_factory=list)


class DeliveryError(Exception):
    """The receiver did not take the batch; the message is stored on the stream."""


# -- configuring ---------------------------------------------------------------------------

def create(session: Session, ctx: audit.Context, box: SecretBox, *, name: str, kind: str,
           target: str, fmt: str = "json", org: Organization | None = None,
           actions: list[str] | None = None, secret: str = "", tls: bool = False,
           ca_file: str = "", max_bytes: int = 10_000_000, keep: int = 5,
           start: str = "now") -> tuple[SiemStream, str]:
    """Add a stream; returns it and the webhook signing secret (generated when not given,
    shown once, stored sealed). Organization streams select that organization's events only
    and may only be HTTPS webhooks: a file or syslog target on the server's network is the
    operators' decision. ``start`` is ``now`` (events from here on) or ``all`` (the trail
    from the beginning)."""
    name, kind, fmt, target = name.strip(), kind.strip(), fmt.strip(), target.strip()
    if not NAME.match(name):
        raise ValidationError("A stream name is 1-80 letters, digits, '.', '_' or '-'.",
                              code="invalid_stream_name")
    if kind not in KINDS:
        raise ValidationError(f"The kind must be one of {', '.join(KINDS)}.",
                              code="invalid_stream_kind")
    if fmt not in siem_formats.FORMATS:
        raise ValidationError(f"The format must be one of {', '.join(siem_formats.FORMATS)}.",
                              code="invalid_stream_format")
    options: dict[str, Any] = {}
    if kind == "syslog":
        _host_port(target)
        options = {"tls": bool(tls), "ca_file": ca_file}
    elif kind == "webhook":
        _check_url(target, https_only=org is not None)
        secret = secret or pysecrets.token_urlsafe(32)
    else:
        if not target.startswith("/"):
            raise ValidationError("A file stream needs an absolute path.",
                                  code="invalid_stream_target")
        options = {"max_bytes": max(1024, int(max_bytes)), "keep": max(1, min(int(keep), 100))}
    if org is not None and kind != "webhook":
        raise ValidationError("An organization's stream is an HTTPS webhook.",
                              code="invalid_stream_kind")
    prefixes = sorted({a.strip() for a in (actions or []) if a.strip()})
    bad = [a for a in prefixes if not ACTION_PREFIX.match(a)]
    if bad:
        raise ValidationError(f"Not an event name or prefix: {', '.join(bad)[:200]} "
                              "(e.g. auth. or auth.login).", code="invalid_stream_actions")
    org_id = org.id if org is not None else None
    clash = session.scalar(sa.select(SiemStream.id).where(
        SiemStream.name == name, SiemStream.organization_id.is_(None) if org_id is None
        else SiemStream.organization_id == org_id))
    if clash is not None:
        raise Conflict(f"There is already a stream named {name}.", code="stream_exists")
    if start not in ("now", "all"):
        raise ValidationError("Start is 'now' or 'all'.", code="invalid_stream_start")
    cursor = 0 if start == "all" else _head(session)
    stream = SiemStream(name=name, organization_id=org_id, kind=kind, format=fmt,
                        target=target[:500], options=options, actions=prefixes,
                        secret_sealed=box.seal({"secret": secret}) if secret else None,
                        enabled=True, cursor_seq=cursor, attempts=0, next_attempt_at=utcnow(),
                        last_error="", delivered=0)
    session.add(stream)
    session.flush()
    audit.record(session, ctx, "siem.stream_create", target=f"siem_stream:{stream.id}",
                 organization_id=org_id,
                 details={"name": name, "kind": kind, "format": fmt, "target": _shown(stream),
                          "actions": prefixes, "start": start})
    return stream, secret if kind == "webhook" else ""


def _head(session: Session) -> int:
    return session.scalar(sa.select(AuditHead.last_seq).where(AuditHead.id == 1)) or 0


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError("A syslog target is host:port (e.g. siem.example.com:6514).",
                              code="invalid_stream_target")
    return host.strip("[]"), int(port)


def _check_url(url: str, *, https_only: bool) -> None:
    parts = urlsplit(url)
    allowed = ("https",) if https_only else ("https", "http")
    if parts.scheme not in allowed or not parts.hostname or parts.username:
        raise ValidationError("The webhook address must be an https:// URL"
                              + ("" if https_only else " (http:// for a local receiver)")
                              + ".", code="invalid_stream_target")
    if https_only:
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            address = None
        if (address is not None and not address.is_global) or parts.hostname == "localhost":
            raise ValidationError("The webhook address must be a public host.",
                                  code="invalid_stream_target")


def _shown(stream: SiemStream) -> str:
    """The target without any query string (it may carry a receiver's token)."""
    if stream.kind == "webhook":
        parts = urlsplit(stream.target)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"
    return stream.target


def shown_target(stream: SiemStream) -> str:
    return _shown(stream)


def listing(session: Session, org: Organization | None = None,
            everything: bool = False) -> list[SiemStream]:
    """Operators' streams (``org`` None), one organization's, or all (``everything``)."""
    query = sa.select(SiemStream).order_by(SiemStream.id)
    if not everything:
        query = query.where(SiemStream.organization_id.is_(None) if org is None
                            else SiemStream.organization_id == org.id)
    return list(session.scalars(query))


def get(session: Session, stream_id: int, org: Organization | None = None,
        any_org: bool = False) -> SiemStream:
    """A stream by id, scoped to ``org`` (another organization's id answers NotFound)."""
    stream = session.get(SiemStream, stream_id)
    if stream is None or (not any_org and stream.organization_id != (
            org.id if org is not None else None)):
        raise NotFound("There is no such event stream.", code="unknown_stream")
    return stream


def find(session: Session, ref: str) -> SiemStream:
    """For the command line: a stream id, or an operator stream's name."""
    if ref.isdigit():
        return get(session, int(ref), any_org=True)
    stream = session.scalar(sa.select(SiemStream).where(
        SiemStream.name == ref, SiemStream.organization_id.is_(None)))
    if stream is None:
        raise NotFound(f"There is no operator stream named {ref}.", code="unknown_stream")
    return stream


def remove(session: Session, ctx: audit.Context, stream: SiemStream) -> None:
    audit.record(session, ctx, "siem.stream_remove", target=f"siem_stream:{stream.id}",
                 organization_id=stream.organization_id,
                 details={"name": stream.name, "kind": stream.kind,
                          "target": _shown(stream), "cursor_seq": stream.cursor_seq})
    session.delete(stream)


def set_enabled(session: Session, ctx: audit.Context, stream: SiemStream, enabled: bool
                ) -> bool:
    """Pause or resume a stream (the command line and the stream pages both call this). A
    paused stream keeps its cursor, so on resuming it sends everything recorded meanwhile,
    in order. Returns False, recording nothing, when the stream already was in that state:
    a second click on a stale page must not move "paused since"."""
    if stream.enabled == enabled:
        return False
    stream.enabled = enabled
    if enabled:
        stream.next_attempt_at, stream.attempts = utcnow(), 0
    audit.record(session, ctx, "siem.stream_resume" if enabled else "siem.stream_pause",
                 target=f"siem_stream:{stream.id}", organization_id=stream.organization_id,
                 details={"name": stream.name, "state": "enabled" if enabled else "paused",
                          "cursor_seq": stream.cursor_seq})
    return True


def paused_since(session: Session, stream: SiemStream) -> datetime | None:
    """When a paused stream was paused: the time of its last ``siem.stream_pause`` event (the
    audit trail already holds it, so the stream row needs no column of its own). None for a
    stream that is sending."""
    if stream.enabled:
        return None
    return session.scalar(sa.select(AuditEvent.occurred_at).where(
        AuditEvent.action == "siem.stream_pause",
        AuditEvent.target == f"siem_stream:{stream.id}")
        .order_by(AuditEvent.seq.desc()).limit(1))


def replay(session: Session, ctx: audit.Context, stream: SiemStream, since: int) -> None:
    """Send again every selected event from ``seq`` ``since`` on (dead-lettered ranges
    included), in order, from the next delivery pass."""
    if since < 1:
        raise ValidationError("Replay starts at an event number of 1 or more.",
                              code="invalid_replay")
    previous = stream.cursor_seq
    stream.cursor_seq, stream.attempts = since - 1, 0
    stream.next_attempt_at, stream.last_error = utcnow(), ""
    audit.record(session, ctx, "siem.replay", target=f"siem_stream:{stream.id}",
                 organization_id=stream.organization_id,
                 details={"name": stream.name, "since": since, "previous_cursor": previous})


def dead_letters(session: Session, stream: SiemStream) -> list[SiemDeadLetter]:
    return list(session.scalars(sa.select(SiemDeadLetter)
                                .where(SiemDeadLetter.stream_id == stream.id)
                                .order_by(SiemDeadLetter.id.desc()).limit(100)))


def backlog(session: Session, stream: SiemStream) -> int:
    """How many of the stream's events wait after its cursor (counting only what it selects,
    so an organization's page says nothing about other organizations' activity)."""
    query = sa.select(sa.func.count()).select_from(AuditEvent).where(
        AuditEvent.seq > stream.cursor_seq)
    return session.scalar(_selected(query, stream)) or 0


def _selected(query: sa.Select, stream: SiemStream) -> sa.Select:
    if stream.organization_id is not None:
        query = query.where(AuditEvent.organization_id == stream.organization_id)
    if stream.actions:
        query = query.where(sa.or_(*[
            AuditEvent.action.startswith(a) if a.endswith(".") else AuditEvent.action == a
            for a in stream.actions]))
    return query


# -- delivering ----------------------------------------------------------------------------

def deliver(db: Database, box: SecretBox, config: SiemConfig, *, now: datetime | None = None,
            stream_ids: list[int] | None = None, max_batches: int = 1000) -> Report:
    """Drain every due stream: batch after batch until it is caught up, its receiver fails,
    or ``max_batches`` in all were sent. Never raises for a receiver's problem."""
    report, now = Report(), now or utcnow()
    with db.sessions() as session:
        query = sa.select(SiemStream.id).where(SiemStream.enabled.is_(True),
                                               SiemStream.next_attempt_at <= now)
        if stream_ids is not None:
            query = query.where(SiemStream.id.in_(stream_ids))
        ids = list(session.scalars(query.order_by(SiemStream.id)))
    for stream_id in ids:
        while report.batches < max_batches:
            if not _deliver_batch(db, box, config, stream_id, report, now):
                break
    return report


def _deliver_batch(db: Database, box: SecretBox, config: SiemConfig, stream_id: int,
                   report: Report, now: datetime) -> bool:
    """One claimed batch; True when the stream may have more to send right away."""
    claim = _claim(db, stream_id, config, now)
    if claim is None:
        return False
    stream, rows, new_cursor = claim
    if not rows:
        _settle(db, config, stream, new_cursor, 0, "", report)
        return False
    try:
        send(stream, box, rows)
        error = ""
    except (OSError, ssl.SSLError, requests.RequestException, DeliveryError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("siem stream %s (%s): batch %s-%s not delivered: %s", stream.id,
                    stream.name, rows[0]["seq"], rows[-1]["seq"], error)
    _settle(db, config, stream, new_cursor, len(rows), error, report, rows)
    return not error and len(rows) >= config.batch_size


def _claim(db: Database, stream_id: int, config: SiemConfig, now: datetime
           ) -> tuple[SiemStream, list[dict[str, Any]], int] | None:
    now = max(now, utcnow())  # a pass given a later clock (tests, catch-up) keeps it
    with db.transaction() as session:
        won = session.execute(
            sa.update(SiemStream)
            .where(SiemStream.id == stream_id, SiemStream.enabled.is_(True),
                   SiemStream.next_attempt_at <= now)
            .values(next_attempt_at=now + LEASE)
            .execution_options(synchronize_session=False)).rowcount
        if won != 1:
            return None
        stream = session.get(SiemStream, stream_id)
        session.refresh(stream)
        head = _head(session)
        query = (sa.select(AuditEvent)
                 .where(AuditEvent.seq > stream.cursor_seq, AuditEvent.seq <= head)
                 .order_by(AuditEvent.seq).limit(config.batch_size))
        events = list(session.scalars(_selected(query, stream)))
        rows = [_row(event) for event in events]
        new_cursor = rows[-1]["seq"] if len(rows) >= config.batch_size else head
        session.expunge(stream)
    return stream, rows, new_cursor


def _row(event: AuditEvent) -> dict[str, Any]:
    row = {name: getattr(event, name) for name in audit.EXPORT_FIELDS}
    row["occurred_at"] = event.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return row


def _settle(db: Database, config: SiemConfig, stream: SiemStream, new_cursor: int, count: int,
            error: str, report: Report, rows: list[dict[str, Any]] | None = None) -> None:
    with db.transaction() as session:
        # Only if nobody moved the cursor meanwhile (a replay wins over this batch).
        where = (SiemStream.id == stream.id, SiemStream.cursor_seq == stream.cursor_seq)
        if not error:
            values: dict[str, Any] = {"cursor_seq": new_cursor, "attempts": 0,
                                      "next_attempt_at": utcnow(), "last_error": ""}
            if count:
                values |= {"delivered": SiemStream.delivered + count,
                           "last_delivered_at": utcnow()}
                report.delivered += count
                report.batches += 1
        elif stream.attempts + 1 >= config.max_attempts:
            values = {"cursor_seq": new_cursor, "attempts": 0, "next_attempt_at": utcnow(),
                      "last_error": f"dead-lettered: {error}"[:500]}
            session.add(SiemDeadLetter(stream_id=stream.id, first_seq=rows[0]["seq"],
                                       last_seq=rows[-1]["seq"], events=count, error=error))
            report.dead_lettered.append(stream.id)
            audit.record(session, audit.Context(actor="trellis siem"), "siem.dead_letter",
                         outcome="failure", target=f"siem_stream:{stream.id}",
                         organization_id=stream.organization_id, reason=error[:400],
                         details={"name": stream.name, "first_seq": rows[0]["seq"],
                                  "last_seq": rows[-1]["seq"], "events": count})
        else:
            values = {"attempts": stream.attempts + 1, "last_error": error,
                      "next_attempt_at": utcnow() + backoff(stream.attempts + 1)}
            report.retrying.append(stream.id)
        session.execute(sa.update(SiemStream).where(*where).values(**values)
                        .execution_options(synchronize_session=False))


def backoff(attempts: int) -> timedelta:
    """Five seconds after the first failure, doubling, at most ten minutes."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)


# -- outputs -------------------------------------------------------------------------------

def send(stream: SiemStream, box: SecretBox, rows: list[dict[str, Any]]) -> None:
    """Hand one batch to the stream's receiver; raises when it did not take all of it."""
    if stream.kind == "syslog":
        send_syslog(stream, rows)
    elif stream.kind == "webhook":
        send_webhook(stream, box.open(stream.secret_sealed).get("secret", ""), rows)
    else:
        write_file(stream, rows)


def send_syslog(stream: SiemStream, rows: list[dict[str, Any]]) -> None:
    """One TCP (or TLS) connection per batch, messages octet-counted. The connection is shut
    down for writing (TLS: close_notify) and read to its end, so the batch counts as sent
    only once the daemon closed its side after reading everything."""
    host, port = _host_port(stream.target)
    hostname = socket.gethostname()
    payload = b"".join(siem_formats.syslog_frame(row, stream.format, hostname) for row in rows)
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        conn: socket.socket = raw
        if stream.options.get("tls"):
            context = ssl.create_default_context(cafile=stream.options.get("ca_file") or None)
            conn = context.wrap_socket(raw, server_hostname=host)
        conn.sendall(payload)
        if isinstance(conn, ssl.SSLSocket):
            # Our close_notify follows the last record, so a daemon that answers it (or
            # closes the connection on it, as rsyslog's GnuTLS driver does) has read them all.
            with contextlib.suppress(ssl.SSLEOFError):
                conn.unwrap()
            return
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass
    finally:
        raw.close()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature: HMAC-SHA256 over ``timestamp + "." + body``, hex."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                    hashlib.sha256).hexdigest()


def webhook_body(stream: SiemStream, rows: list[dict[str, Any]]) -> tuple[bytes, str]:
    if stream.format == "cef":
        return ("\n".join(siem_formats.cef(row) for row in rows) + "\n").encode(), \
            "text/plain; charset=utf-8"
    events = [siem_formats.render(row, stream.format) for row in rows]
    return json.dumps(events, ensure_ascii=False, default=str,
                      separators=(",", ":")).encode(), "application/json"


def send_webhook(stream: SiemStream, secret: str, rows: list[dict[str, Any]]) -> None:
    body, content_type = webhook_body(stream, rows)
    timestamp = str(int(time.time()))
    response = requests.post(stream.target, data=body, timeout=TIMEOUT, allow_redirects=False,
                             headers={"Content-Type": content_type,
                                      "X-Trellis-Timestamp": timestamp,
                                      "X-Trellis-Signature": "v1=" + sign(secret, timestamp,
                                                                          body),
                                      "X-Trellis-Stream": str(stream.id),
                                      "X-Trellis-Seq-Range": f"{rows[0]['seq']}-"
                                                             f"{rows[-1]['seq']}"})
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"the receiver answered HTTP {response.status_code}")


def write_file(stream: SiemStream, rows: list[dict[str, Any]]) -> None:
    """Append one line per event, synced to disk; rotate to ``.1`` … ``.keep`` when the
    file would pass ``max_bytes``."""
    path = Path(stream.target)
    data = "".join(siem_formats.line(row, stream.format) + "\n" for row in rows).encode()
    max_bytes = int(stream.options.get("max_bytes", 10_000_000))
    keep = int(stream.options.get("keep", 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size and path.stat().st_size + len(data) > max_bytes:
        for index in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
