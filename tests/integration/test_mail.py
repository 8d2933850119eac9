"""Email delivery through the outbox, to a real SMTP server on loopback (aiosmtpd)."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from portal.cli import main
from portal.db import utcnow
from portal.models import OutboxMessage, OutboxStatus
from portal.services import outbox
from tests.conftest import CLI_CTX, audit_events, services_of, sign_in
from tests.peers.smtp import html_of, text_of


@pytest.fixture
def mail_settings(settings, smtp_server):
    settings.update(smtp_server.settings())
    return settings


def _config(app) -> outbox.MailConfig:
    return outbox.MailConfig.from_settings(app.config)


def _enqueue(app, tx, org=None, to="bob@example.test"):
    with tx() as session:
        from portal.models import Organization
        found = session.get(Organization, org.id) if org is not None else None
        return outbox.enqueue(session, to=to, template="test", org=found,
                              context={"sender": "cli:test"}).id


def _row(app, message_id):
    with services_of(app).db.sessions() as session:
        return session.get(OutboxMessage, message_id)


@pytest.fixture
def trellis(mail_settings, monkeypatch):
    env = {"DATABASE_URL": mail_settings["DATABASE_URL"], "TRELLIS_ENV": "test",
           "TRELLIS_INSTANCE_PATH": mail_settings["INSTANCE_PATH"],
           "SECRET_KEY": mail_settings["SECRET_KEY"], "TRELLIS_LOG_LEVEL": "WARNING",
           "TRELLIS_SMTP_HOST": "127.0.0.1", "TRELLIS_SMTP_PORT": str(mail_settings["SMTP_PORT"]),
           "TRELLIS_SMTP_SECURITY": "none", "TRELLIS_MAIL_FROM": "Trellis <no-reply@trellis.test>"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args, expect=0):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output + result.stderr
        return result
    return run


def test_a_message_reaches_the_mail_server_with_text_html_and_the_org_branding(
        mail_settings, smtp_server, app, tx, make_org):
    org = make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f",
                                                      "footer_text": "Acme & Co"})
    message_id = _enqueue(app, tx, org)
    report = outbox.deliver(services_of(app).db, _config(app), [message_id])
    assert report.sent == [message_id]
    [mail] = smtp_server.wait_for("bob@example.test")
    assert mail["Subject"] == "Test message from Acme Supplies"
    assert mail["From"] == "Trellis <no-reply@trellis.test>"
    assert "Mail delivery works." in text_of(mail) and "Acme & Co" in text_of(mail)
    html = html_of(mail)
    assert "#0b6e4f" in html and "Acme &amp; Co" in html
    row = _row(app, message_id)
    assert row.status == OutboxStatus.SENT and row.attempts == 1 and row.sent_at is not None


def test_smtp_down_the_message_waits_in_the_outbox_then_goes_out(
        mail_settings, smtp_server, app, tx, make_user, client, trellis):
    smtp_server.stop()
    message_id = _enqueue(app, tx)
    report = outbox.deliver(services_of(app).db, _config(app), [message_id])
    assert report.retrying == [message_id] and report.sent == []
    row = _row(app, message_id)
    assert row.status == OutboxStatus.PENDING and row.attempts == 1
    assert "ConnectionRefusedError" in row.last_error
    wait = row.next_attempt_at - utcnow()
    assert timedelta(seconds=50) < wait <= timedelta(minutes=1)

    # The operators see it waiting, with the error.
    make_user("ops@trellis.test", operator=True)
    sign_in(client, "ops@trellis.test")
    page = client.get("/admin/outbox?status=pending").get_data(as_text=True)
    assert "bob@example.test" in page and "ConnectionRefusedError" in page

    # Not due yet: a worker pass leaves it alone, even with the server back.
    smtp_server.start()
    assert "sent 0" in trellis("mail", "deliver").output
    assert smtp_server.to("bob@example.test") == []
    # When it is due, the next pass delivers it.
    later = utcnow() + timedelta(minutes=2)
    report = outbox.deliver(services_of(app).db, _config(app), now=later)
    assert report.sent == [message_id]
    assert len(smtp_server.wait_for("bob@example.test")) == 1
    assert _row(app, message_id).status == OutboxStatus.SENT
    assert "sent 0" in trellis("mail", "deliver").output  # never twice


def test_back_off_doubles_then_the_message_is_failed_and_an_operator_retries_it(
        mail_settings, smtp_server, app, tx, make_user, client):
    smtp_server.stop()
    message_id = _enqueue(app, tx)
    config = outbox.MailConfig(**{**_config(app).__dict__, "max_attempts": 3})
    now = utcnow()
    waits = []
    for _ in range(3):
        outbox.deliver(services_of(app).db, config, now=now)
        row = _row(app, message_id)
        waits.append(row.next_attempt_at)
        now = row.next_attempt_at + timedelta(seconds=1)
    row = _row(app, message_id)
    assert row.status == OutboxStatus.FAILED and row.attempts == 3
    assert outbox.backoff(1) == timedelta(minutes=1)
    assert outbox.backoff(2) == timedelta(minutes=2)
    assert outbox.backoff(30) == timedelta(hours=6)

    make_user("ops@trellis.test", operator=True)
    sign_in(client, "ops@trellis.test")
    page = client.get("/admin/outbox?status=failed").get_data(as_text=True)
    assert "bob@example.test" in page and "failed (1)" in page
    smtp_server.start()
    page = client.get("/admin/outbox")
    from tests.conftest import csrf_token
    token = csrf_token(client, "/admin/outbox")
    response = client.post(f"/admin/outbox/{message_id}/retry", data={"csrf_token": token},
                           follow_redirects=True)
    assert "Sent." in response.get_data(as_text=True)
    assert len(smtp_server.wait_for("bob@example.test")) == 1
    [event] = audit_events(app, "mail.retry")
    assert event.details["to"] == "bob@example.test" and event.actor == "ops@trellis.test"


def test_two_workers_never_send_one_message_twice(mail_settings, smtp_server, app, tx):
    ids = [_enqueue(app, tx, to=f"user{i}@example.test") for i in range(5)]
    db = services_of(app).db
    first = outbox._claim(db, _config(app), None, utcnow(), 100)
    second = outbox._claim(db, _config(app), None, utcnow(), 100)
    assert sorted(m.id for m in first) == ids and second == []


def test_members_cannot_see_the_outbox(app, make_user, make_org, client):
    make_org("acme")
    make_user("alice@acme.test", org="acme")
    sign_in(client, "alice@acme.test")
    assert client.get("/admin/outbox").status_code == 403


def test_without_a_mail_server_development_keeps_mail_on_a_local_page(app, tx, client):
    assert app.config["SMTP_HOST"] == ""
    message_id = _enqueue(app, tx)
    report = outbox.deliver(services_of(app).db, _config(app), [message_id])
    assert report.sent == [message_id]
    page = client.get("/dev/mail/").get_data(as_text=True)
    assert "Test message from Trellis" in page and "bob@example.test" in page
    html = client.get(f"/dev/mail/{message_id}/html")
    assert "sandbox" in html.headers["Content-Security-Policy"]
    assert "Mail delivery works." in html.get_data(as_text=True)


def test_production_has_no_mail_page_and_keeps_mail_until_a_server_is_set(settings, tx):
    from cryptography.fernet import Fernet

    from portal import create_app
    prod = create_app({**settings, "ENV": "production", "TESTING": False,
                       "ENCRYPTION_KEYS": (Fernet.generate_key().decode(),)})
    try:
        assert prod.test_client().get("/dev/mail/").status_code == 404
        db = services_of(prod).db
        with db.transaction() as session:
            message_id = outbox.enqueue(session, to="x@example.test", template="test",
                                        org=None, context={"sender": "t"}).id
        report = outbox.deliver(db, outbox.MailConfig.from_settings(prod.config))
        assert report.not_configured and report.sent == []
        with db.sessions() as session:
            assert session.get(OutboxMessage, message_id).status == OutboxStatus.PENDING
    finally:
        db.dispose()


def test_mail_test_command_sends_and_reports_an_outage(trellis, smtp_server, app):
    assert "sent to ops@example.test" in trellis("mail", "test", "OPS@example.test").output
    assert len(smtp_server.wait_for("ops@example.test")) == 1
    smtp_server.stop()
    failed = trellis("mail", "test", "ops@example.test", expect=1)
    assert "ConnectionRefusedError" in failed.stderr and "stays in the outbox" in failed.stderr
    with services_of(app).db.sessions() as session:
        statuses = session.scalars(sa.select(OutboxMessage.status)
                                   .order_by(OutboxMessage.id)).all()
    assert statuses == [OutboxStatus.SENT, OutboxStatus.PENDING]
    assert CLI_CTX  # the CLI audits as cli:<user>
    assert trellis("worker", "--once").exit_code == 0


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_mail_goes_over_starttls_or_implicit_tls_with_authentication(settings, tmp_path,
                                                                      security):
    from portal import create_app
    from tests.peers.smtp import SmtpServer
    server = SmtpServer(security, tmp_path, credentials=("trellis", "s3cret")).start()
    app = create_app({**settings, **server.settings()})
    try:
        db = services_of(app).db
        with db.transaction() as session:
            message_id = outbox.enqueue(session, to="tls@example.test", template="test",
                                        org=None, context={"sender": "t"}).id
        assert outbox.deliver(db, _config(app), [message_id]).sent == [message_id]
        assert len(server.wait_for("tls@example.test")) == 1
        with db.transaction() as session:
            second = outbox.enqueue(session, to="tls2@example.test", template="test",
                                    org=None, context={"sender": "t"}).id
        # Wrong credentials: refused by the server, the message waits.
        wrong = outbox.MailConfig(**{**_config(app).__dict__, "password": "nope"})
        assert outbox.deliver(db, wrong, [second]).retrying == [second]
        assert "SMTPAuthenticationError" in _row(app, second).last_error
        # A certificate the configured CA did not sign is refused, and the message waits.
        untrusted = outbox.MailConfig(**{**_config(app).__dict__, "ca_file": ""})
        outbox.deliver(db, untrusted, now=utcnow() + timedelta(minutes=5))
        assert "CERTIFICATE_VERIFY_FAILED" in _row(app, second).last_error
        assert server.to("tls2@example.test") == []
    finally:
        server.stop()
        services_of(app).db.dispose()


def test_single_use_links_leave_the_database_once_delivered(mail_settings, smtp_server,
                                                            app, tx):
    with tx() as session:
        message_id = outbox.enqueue(session, to="r@example.test", template="password_reset",
                                    org=None, context={"link": "https://x.test/p/SECRET",
                                                       "minutes": 30}).id
    assert "SECRET" in _row(app, message_id).text_body  # waiting: kept for the retries
    outbox.deliver(services_of(app).db, _config(app), [message_id])
    assert "SECRET" in text_of(smtp_server.wait_for("r@example.test")[0])
    row = _row(app, message_id)
    assert "SECRET" not in row.text_body + row.html_body and "Removed" in row.text_body
