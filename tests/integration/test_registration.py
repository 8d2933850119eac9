"""Self-registration with email verification, read from a real SMTP server."""

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.db import utcnow
from portal.models import (
    ConsentRecord,
    Membership,
    OutboxMessage,
    OutboxStatus,
    Registration,
    User,
)
from portal.services import registration
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of, sign_in
from tests.integration.test_password_reset import age_outbox
from tests.peers.smtp import html_of, links_in, text_of

GOOD = "tangerine lighthouse okapi"


pytestmark = pytest.mark.mail


@pytest.fixture
def open_org(make_org, tx):
    org = make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "open")
    return org


def _register(client, path="/o/acme/register", email="new@example.test", password=GOOD,
              confirm=None, terms=True, name="Nora New"):
    token = csrf_token(client, "/login")
    data = {"email": email, "password": password, "confirm": confirm or password,
            "display_name": name, "csrf_token": token}
    if terms:
        data["accept_terms"] = "y"
    return client.post(path, data=data)


def _link(smtp_server, email, count=1):
    mail = smtp_server.wait_for(email, count)[count - 1]
    [link] = [u for u in links_in(mail) if "/register/verify/" in u]
    return link.replace("http://localhost", "")


def _confirm(client, path):
    token = csrf_token(client, "/login")
    return client.post(path, data={"csrf_token": token})


def _count(app, model) -> int:
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def _strip(response) -> str:
    return re.sub(r'name="csrf_token"[^>]*', "", response.get_data(as_text=True))


def test_sign_up_verify_then_sign_in(app, client, open_org, smtp_server):
    page = _register(client)
    assert page.status_code == 200 and "Confirm your email" in page.get_data(as_text=True)
    [mail] = smtp_server.wait_for("new@example.test")
    assert mail["Subject"] == "Confirm your email address for Acme Supplies"
    assert "#0b6e4f" in html_of(mail) and "Nora New" in text_of(mail)
    # No account before the address is confirmed.
    assert sign_in(app.test_client(), "new@example.test", GOOD).status_code == 401
    path = _link(smtp_server, "new@example.test")
    shown = client.get(path)  # a mail scanner opening the link creates nothing
    assert "Confirm and create my account" in shown.get_data(as_text=True)
    assert _count(app, User) == 0
    done = _confirm(client, path)
    assert done.status_code == 302 and done.headers["Location"] == "/o/acme/login"
    assert sign_in(app.test_client(), "new@example.test", GOOD).status_code == 302

    with services_of(app).db.sessions() as session:
        user = session.scalar(sa.select(User))
        assert user.display_name == "Nora New"
        [membership] = session.scalars(sa.select(Membership)).all()
        assert membership.organization_id == open_org.id
        record, privacy = session.scalars(sa.select(ConsentRecord)
                                          .order_by(ConsentRecord.id)).all()
    assert (record.purpose, record.document_version, record.granted, record.method) == \
        ("terms", "1", True, "registration")
    # The privacy notice linked from the form is recorded with its version too.
    assert (privacy.purpose, privacy.document_version, privacy.method) == \
        ("privacy", "1", "registration")
    assert len(record.ip_hash) == 64 and record.ip_hash != "127.0.0.1"
    [event] = audit_events(app, "registration.verify")
    assert event.details["member"] is True and event.details["terms_version"] == "1"
    # The link worked once.
    again = _confirm(client, path)
    assert again.status_code == 400 and "expired or was already used" in \
        again.get_data(as_text=True)


def test_an_existing_address_looks_the_same_and_its_owner_gets_an_email(
        app, client, open_org, make_user, smtp_server, tx):
    make_user("alice@acme.test")
    new = _register(client, email="new@example.test")
    known = _register(client, email="alice@acme.test", password="another good passphrase")
    assert known.status_code == new.status_code == 200
    assert _strip(known).replace("alice@acme.test", "X") == \
        _strip(new).replace("new@example.test", "X")
    [mail] = smtp_server.wait_for("alice@acme.test")
    assert "already have" in mail["Subject"] and "/register/verify/" not in text_of(mail)
    assert "/password/forgot" in text_of(mail)
    assert sign_in(app.test_client(), "alice@acme.test").status_code == 302  # unchanged
    [failure] = [e for e in audit_events(app, "registration.start") if e.outcome == "failure"]
    assert failure.reason == "existing_account"
    # The same owner, typed with Unicode look-alikes, is the same address (a minute later:
    # one email per address per minute).
    again = _register(client, email="alice@acme.test", password="another good passphrase")
    assert _strip(again) == _strip(known)
    assert [e.reason for e in audit_events(app, "registration.start")][-1] == "recently_sent"
    age_outbox(tx)
    look_alike = _register(client, email="\uff41\uff4c\uff49\uff43\uff45@\uff21CME.test")
    assert look_alike.status_code == 200
    assert len(smtp_server.wait_for("alice@acme.test", 2)) == 2
    with services_of(app).db.sessions() as session:
        assert session.scalars(sa.select(Registration.email)).all() == ["new@example.test"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"password": "password1234"}, "commonly used passwords"),
    ({"password": "short"}, "at least 12 characters"),
    ({"confirm": GOOD + "x"}, "do not match"),
    ({"terms": False}, "Accept the terms of use"),
    ({"email": "not an email"}, "valid email address"),
    ({"email": "new@exa mple.test"}, "valid email address"),
    ({"password": "new@example.test is mine"}, "email address"),
])
def test_bad_sign_ups_are_refused_and_nothing_is_written(app, client, open_org, fields,
                                                         message, smtp_server):
    response = _register(client, **fields)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert _count(app, Registration) == 0 and _count(app, OutboxMessage) == 0


def test_who_may_sign_up_follows_each_setting(app, client, make_org, tx, smtp_server,
                                              make_user):
    org = make_org("acme", "Acme Supplies")  # invitation only by default
    refused = _register(client, email="x@example.test")
    assert refused.status_code == 403 and "by invitation only" in \
        refused.get_data(as_text=True)
    # Invited: allowed; the account is created, and the invitation link then joins it.
    from portal.services import members
    admin = make_user("owner@acme.test", org="acme")
    with tx() as session:
        from portal.models import Organization
        members.invite(session, CLI_CTX, session.get(Organization, org.id),
                       members.Actor(admin.id, frozenset({"org_owner", "member"})),
                       "x@example.test", "member", ["member"])
    assert _register(client, email="x@example.test").status_code == 200
    _confirm(client, _link(smtp_server, "x@example.test"))
    with services_of(app).db.sessions() as session:
        user = session.scalar(sa.select(User).where(User.email == "x@example.test"))
        assert user is not None and session.scalar(
            sa.select(Membership).where(Membership.user_id == user.id)) is None
        assert (user.identity_level, user.identity_method) == (1, "email")  # link used
    # Verified domains only.
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "domains")
        from portal.services import organizations
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    outside = _register(client, email="y@example.test")
    assert outside.status_code == 403 and "its own email domains" in \
        outside.get_data(as_text=True)
    assert _register(client, email="y@acme.test").status_code == 200
    # The platform's own page is closed unless TRELLIS_REGISTRATION=open.
    closed = client.get("/register")
    assert closed.status_code == 404 and "by invitation" in closed.get_data(as_text=True)
    assert [e.details for e in audit_events(app, "org.registration")][-1] == \
        {"from": "invite", "to": "domains"}


def test_open_platform_registration_makes_an_account_without_organization(
        mail_settings, smtp_server):
    from portal import create_app
    app = create_app({**mail_settings, "REGISTRATION": "open"})
    try:
        client = app.test_client()
        assert "Create an account" in client.get("/login").get_data(as_text=True)
        assert _register(client, "/register").status_code == 200
        done = _confirm(client, _link(smtp_server, "new@example.test"))
        assert done.headers["Location"] == "/login"
        assert _count(app, Membership) == 0 and _count(app, User) == 1
    finally:
        services_of(app).db.dispose()


def test_an_address_of_an_sso_organization_is_sent_to_its_identity_provider(
        app, client, open_org, tx, smtp_server):
    from portal.models import Connection, Protocol
    from portal.services import organizations
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        session.add(Connection(organization_id=open_org.id, protocol=Protocol.OIDC,
                               name="Acme Okta", settings={}, enabled=True))
    response = _register(client, email="bob@acme.test")
    assert response.status_code == 403 and "identity provider" in \
        response.get_data(as_text=True)


def test_expired_and_forged_links_are_refused(app, client, open_org, tx, smtp_server):
    _register(client)
    path = _link(smtp_server, "new@example.test")
    with tx() as session:
        session.execute(sa.update(Registration)
                        .values(expires_at=utcnow() - timedelta(minutes=1)))
    assert client.get(path).status_code == 400
    assert _confirm(client, path).status_code == 400
    assert client.get("/register/verify/" + "B" * 43).status_code == 400
    assert _count(app, User) == 0
    assert {e.reason for e in audit_events(app, "registration.verify")} == {"invalid_token"}
    with tx() as session:
        assert registration.purge_expired(session) == 1


def test_smtp_down_the_verification_waits_in_the_outbox(app, client, open_org, smtp_server):
    smtp_server.stop()
    page = _register(client).get_data(as_text=True)
    assert "we will send it shortly" in page
    with services_of(app).db.sessions() as session:
        [row] = session.scalars(sa.select(OutboxMessage)).all()
    assert row.status == OutboxStatus.PENDING and "Connection" in row.last_error


def test_the_worker_purges_expired_sign_ups_and_reset_links(app, client, open_org, tx,
                                                            smtp_server, make_user,
                                                            monkeypatch):
    from click.testing import CliRunner

    from portal.cli import main
    from portal.models import UserToken
    make_user("alice@acme.test")
    _register(client)
    client.post("/password/forgot", data={"email": "alice@acme.test",
                                          "csrf_token": csrf_token(client, "/login")})
    with tx() as session:
        session.execute(sa.update(Registration)
                        .values(expires_at=utcnow() - timedelta(minutes=1)))
        session.execute(sa.update(UserToken).values(expires_at=utcnow() - timedelta(minutes=1)))
    for name, value in {"DATABASE_URL": app.config["DATABASE_URL"], "TRELLIS_ENV": "test",
                        "TRELLIS_INSTANCE_PATH": app.config["INSTANCE_PATH"],
                        "SECRET_KEY": app.config["SECRET_KEY"]}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["worker", "--once"], catch_exceptions=False)
    assert "purged 2 expired sign-up and reset links" in result.output
    assert _count(app, Registration) == 0 and _count(app, UserToken) == 0


def test_new_terms_are_asked_for_at_the_next_sign_in(mail_settings, smtp_server, tx,
                                                     make_org):
    from portal import create_app
    app = create_app({**mail_settings, "REGISTRATION": "open"})
    try:
        client = app.test_client()
        _register(client, "/register")
        _confirm(client, _link(smtp_server, "new@example.test"))
        assert sign_in(client, "new@example.test", GOOD).status_code == 302
        assert client.get("/").status_code == 200  # version 1 accepted: nothing asked
    finally:
        services_of(app).db.dispose()
    app = create_app({**mail_settings, "REGISTRATION": "open", "TERMS_VERSION": "2"})
    try:
        client = app.test_client()
        sign_in(client, "new@example.test", GOOD)
        asked = client.get("/o/x/?a=1")
        assert asked.status_code == 302
        assert asked.headers["Location"].startswith("/account/terms?next=/o/x/")
        page = client.get(asked.headers["Location"]).get_data(as_text=True)
        assert "Our terms of use have changed" in page and "version 2" in page
        token = csrf_token(client, "/account/terms")
        refused = client.post("/account/terms", data={"csrf_token": token, "next": "/"})
        assert refused.status_code == 400
        done = client.post("/account/terms", data={"csrf_token": token, "next": "/",
                                                   "accept": "yes"})
        assert done.headers["Location"] == "/" and client.get("/").status_code == 200
        with services_of(app).db.sessions() as session:
            rows = session.execute(sa.select(ConsentRecord.document_version,
                                             ConsentRecord.method)
                                   .where(ConsentRecord.purpose == "terms")
                                   .order_by(ConsentRecord.id)).all()
        assert rows == [("1", "registration"), ("2", "sign_in_prompt")]
        assert [e.details for e in audit_events(app, "consent.terms")] == [{"version": "2"}]
    finally:
        services_of(app).db.dispose()


def test_people_who_never_accepted_terms_are_not_stopped(app, client, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    assert client.get("/").status_code == 200


def test_a_new_privacy_notice_is_asked_for_with_its_version(mail_settings, smtp_server, tx):
    from portal import create_app
    app = create_app({**mail_settings, "REGISTRATION": "open"})
    try:
        client = app.test_client()
        _register(client, "/register")
        _confirm(client, _link(smtp_server, "new@example.test"))
    finally:
        services_of(app).db.dispose()
    app = create_app({**mail_settings, "REGISTRATION": "open", "PRIVACY_VERSION": "2026-12",
                      "PRIVACY_URL": "https://example.test/privacy"})
    try:
        client = app.test_client()
        sign_in(client, "new@example.test", GOOD)
        asked = client.get("/")
        assert asked.headers["Location"].startswith("/account/terms")
        page = client.get(asked.headers["Location"]).get_data(as_text=True)
        assert "Our privacy notice has changed" in page and "version 2026-12" in page
        assert 'href="https://example.test/privacy"' in page and "terms of use" not in page
        token = csrf_token(client, "/account/terms")
        done = client.post("/account/terms", data={"csrf_token": token, "next": "/",
                                                   "accept": "yes"})
        assert done.headers["Location"] == "/" and client.get("/").status_code == 200
        with services_of(app).db.sessions() as session:
            rows = session.execute(sa.select(ConsentRecord.purpose,
                                             ConsentRecord.document_version,
                                             ConsentRecord.method)
                                   .order_by(ConsentRecord.id)).all()
        assert rows == [("terms", "1", "registration"), ("privacy", "1", "registration"),
                        ("privacy", "2026-12", "sign_in_prompt")]
        assert [e.details for e in audit_events(app, "consent.privacy")] == \
            [{"version": "2026-12"}]
        # Answered once: the next sign-in asks nothing.
        client2 = app.test_client()
        sign_in(client2, "new@example.test", GOOD)
        assert client2.get("/").status_code == 200
    finally:
        services_of(app).db.dispose()
