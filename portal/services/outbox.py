"""Email through an outbox: written with the change that causes it, delivered after.

``enqueue`` adds a rendered message to the caller's session, so the email exists exactly when
the change that caused it (a reset token, a registration, an invitation) was committed. The
web layer then asks for an immediate attempt; anything the mail server did not take is tried
again by ``trellis mail deliver`` or ``trellis worker`` with a doubling wait, until
``MAIL_MAX_ATTEMPTS`` is reached and the message is marked failed for an operator to look at.

Delivery claims each row with a conditional UPDATE on its attempt counter (and ``SKIP
LOCKED`` on PostgreSQL), so two workers never send the same message at once. A worker that
dies after claiming leaves the row to be retried when its lease ends: delivery is at least
once, never silently lost.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.config import ROOT
from portal.db import Database, utcnow
from portal.errors import NotFound
from portal.models import Organization, OutboxMessage, OutboxStatus

log = logging.getLogger("trellis.mail")

# Messages carrying a single-use link: once the mail server has taken one, its body is
# removed from the outbox, so a copy of the database does not hold working links.
SECRET_TEMPLATES = frozenset({"password_reset", "verify_email", "email_confirm",
                              "invitation", "sso_link", "new_device", "password_changed",
                              "mfa_changed", "email_changed"})
REMOVED = "(Removed after delivery: this message carried a single-use link.)"
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=6)
SUBJECTS = {
    "password_reset": "Reset your {site} password",
    "password_changed": "Your {site} password was changed",
    "password_managed": "About your {site} password",
    "verify_email": "Confirm your email address for {site}",
    "already_registered": "You already have a {site} account",
    "invitation": "You are invited to join {site}",
    "test": "Test message from {site}",
    "email_confirm": "Confirm your new email address for {site}",
    "email_taken": "About your {site} account",
    "email_changed": "Your {site} email address was changed",
    "sso_link": "Link your company sign-in to your {site} account",
    "mfa_changed": "The sign-in protection of your {site} account changed",
    "new_device": "New sign-in to your {site} account",
    "anomaly": "Unusual sign-in activity at {site}",
}


@dataclass(frozen=True)
class MailConfig:
    """How to reach the mail server, from the ``SMTP_*`` and ``MAIL_*`` settings."""

    host: str = ""
    port: int = 587
    security: str = "starttls"
    user: str = ""
    password: str = ""
    ca_file: str = ""
    timeout: int = 10
    sender: str = "Trellis <no-reply@localhost>"
    max_attempts: int = 10
    keep_locally: bool = True  # no host outside production: the development sink

    @classmethod
    def from_settings(cls, config: Mapping[str, Any]) -> MailConfig:
        return cls(host=config["SMTP_HOST"], port=config["SMTP_PORT"],
                   security=config["SMTP_SECURITY"], user=config["SMTP_USER"],
                   password=config["SMTP_PASSWORD"], ca_file=config["SMTP_CA_FILE"],
                   timeout=config["SMTP_TIMEOUT"],
                   sender=config["MAIL_FROM"], max_attempts=config["MAIL_MAX_ATTEMPTS"],
                   keep_locally=config["ENV"] != "production")


@dataclass
class Report:
    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    not_configured: bool = False


# -- writing -----------------------------------------------------------------------------

def brand_of(org: Organization | None) -> dict[str, str]:
    """What an email shows of the organization: only validated branding values."""
    branding = dict(org.branding or {}) if org is not None else {}
    return {"name": org.name if org is not None else "Trellis",
            "primary_color": branding.get("primary_color", "#1a56db"),
            "logo_url": branding.get("logo_url", "") if str(
                branding.get("logo_url", "")).startswith("https://") else "",
            "footer_text": branding.get("footer_text", "")}


def enqueue(session: Session, *, to: str, template: str, org: Organization | None,
            context: Mapping[str, Any]) -> OutboxMessage:
    """Render ``template`` (text and HTML, branded for ``org``) and add it to the outbox in
    the caller's transaction. Returns the row; its id is known after the flush."""
    brand = brand_of(org)
    values = {**context, "brand": brand, "to": to}
    env = _templates()
    message = OutboxMessage(
        to_address=to, subject=SUBJECTS[template].format(site=brand["name"]),
        text_body=env.get_template(f"{template}.txt").render(values),
        html_body=env.get_template(f"{template}.html").render(values), template=template,
        organization_id=org.id if org is not None else None, status=OutboxStatus.PENDING,
        attempts=0, next_attempt_at=utcnow(), last_error="")
    session.add(message)
    session.flush()
    return message


def recently_written(session: Session, to: str, templates: tuple[str, ...],
                     within: timedelta = timedelta(minutes=1)) -> bool:
    """Whether such a message to this address was written lately: pages anyone can submit
    (reset, registration) send one per address per window, so they cannot be used to flood
    someone's mailbox. The page answers the same either way."""
    since = utcnow() - within
    return session.scalar(sa.select(OutboxMessage.id).where(
        OutboxMessage.to_address == to, OutboxMessage.template.in_(templates),
        OutboxMessage.created_at > since).limit(1)) is not None


@lru_cache(maxsize=1)
def _templates():
    import jinja2
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT / "templates" / "mail")),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True)


# -- delivering --------------------------------------------------------------------------

def deliver(db: Database, mail: MailConfig, ids: list[int] | None = None, *,
            now: datetime | None = None, limit: int = 100) -> Report:
    """Try every due message (or only ``ids``, when given) once. Never raises for a mail
    server problem: the error is stored on the message and its next attempt scheduled."""
    report = Report()
    if not mail.host and not mail.keep_locally:
        report.not_configured = True
        return report
    for message in _claim(db, mail, ids, now or utcnow(), limit):
        try:
            if mail.host:
                send(mail, message)
            else:
                log.info("mail kept for /dev/mail (no TRELLIS_SMTP_HOST): %r to %s",
                         message.subject, message.to_address)
            error = ""
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("mail %s to %s not delivered: %s", message.id, message.to_address,
                        error)
        _settle(db, mail, message, error, report)
    return report


def _claim(db: Database, mail: MailConfig, ids: list[int] | None, now: datetime,
           limit: int) -> list[OutboxMessage]:
    lease = now + timedelta(seconds=mail.timeout * 3 + 60)
    claimed = []
    with db.transaction() as session:
        query = (sa.select(OutboxMessage)
                 .where(OutboxMessage.status == OutboxStatus.PENDING,
                        OutboxMessage.next_attempt_at <= now)
                 .order_by(OutboxMessage.id).limit(limit))
        if ids is not None:
            query = query.where(OutboxMessage.id.in_(ids))
        if session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        for message in session.scalars(query).all():
            won = session.execute(
                sa.update(OutboxMessage)
                .where(OutboxMessage.id == message.id,
                       OutboxMessage.attempts == message.attempts,
                       OutboxMessage.status == OutboxStatus.PENDING)
                .values(attempts=message.attempts + 1, next_attempt_at=lease)
                .execution_options(synchronize_session=False)).rowcount
            if won == 1:
                session.refresh(message)
                claimed.append(message)
    return claimed


def _settle(db: Database, mail: MailConfig, message: OutboxMessage, error: str,
            report: Report) -> None:
    with db.transaction() as session:
        row = session.get(OutboxMessage, message.id)
        if row is None:
            return
        row.last_error = error
        if not error:
            row.status, row.sent_at = OutboxStatus.SENT, utcnow()
            if mail.host and row.template in SECRET_TEMPLATES:  # kept by the dev sink only
                row.text_body = row.html_body = REMOVED
            report.sent.append(row.id)
        elif row.attempts >= mail.max_attempts:
            row.status = OutboxStatus.FAILED
            report.failed.append(row.id)
        else:
            row.next_attempt_at = utcnow() + backoff(row.attempts)
            report.retrying.append(row.id)


def backoff(attempts: int) -> timedelta:
    """One minute after the first failure, doubling, at most six hours."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)


def send(mail: MailConfig, message: OutboxMessage) -> None:
    """One SMTP transaction. The certificate is checked for both TLS modes."""
    email = to_email(mail, message)
    context = ssl.create_default_context(cafile=mail.ca_file or None)
    if mail.security == "tls":
        client: smtplib.SMTP = smtplib.SMTP_SSL(mail.host, mail.port, timeout=mail.timeout,
                                                context=context)
    else:
        client = smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout)
    with client:
        if mail.security == "starttls":
            client.starttls(context=context)
        if mail.user:
            client.login(mail.user, mail.password)
        client.send_message(email)


def to_email(mail: MailConfig, message: OutboxMessage) -> EmailMessage:
    email = EmailMessage()
    email["From"] = mail.sender
    email["To"] = message.to_address
    email["Subject"] = message.subject
    email["Date"] = formatdate(localtime=False)
    domain = parseaddr(mail.sender)[1].rpartition("@")[2] or "localhost"
    email["Message-ID"] = make_msgid(idstring=f"trellis.{message.id}", domain=domain)
    email.set_content(message.text_body)
    email.add_alternative(message.html_body, subtype="html")
    return email


# -- operators ---------------------------------------------------------------------------

def listing(session: Session, status: str = "", limit: int = 200) -> list[OutboxMessage]:
    """Newest first; ``status`` filters (pending, sent, failed)."""
    query = sa.select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
    if status in {s.value for s in OutboxStatus}:
        query = query.where(OutboxMessage.status == OutboxStatus(status))
    return list(session.scalars(query))


def counts(session: Session) -> dict[str, int]:
    rows = session.execute(sa.select(OutboxMessage.status, sa.func.count())
                           .group_by(OutboxMessage.status)).all()
    found = {status.value: n for status, n in rows}
    return {s.value: found.get(s.value, 0) for s in OutboxStatus}


def retry(session: Session, ctx: audit.Context, message_id: int) -> OutboxMessage:
    """Put a failed (or waiting) message back in line for an attempt now."""
    message = session.get(OutboxMessage, message_id)
    if message is None or message.status == OutboxStatus.SENT:
        raise NotFound("There is no unsent message with that id.", code="unknown_message")
    message.status, message.next_attempt_at = OutboxStatus.PENDING, utcnow()
    message.attempts = 0
    audit.record(session, ctx, "mail.retry", target=f"mail:{message.id}",
                 organization_id=message.organization_id,
                 details={"to": message.to_address, "template": message.template,
                          "last_error": message.last_error})
    return message
