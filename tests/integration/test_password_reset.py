"""Forgotten and changed passwords, with the mail read from a real SMTP server."""

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.db import utcnow
from portal.models import (
    AuthSession,
    Connection,
    FederatedIdentity,
    OutboxMessage,
    OutboxStatus,
    Protocol,
    User,
    UserToken,
)
from tests.conftest import PASSWORD, audit_events, csrf_token, services_of, sign_in
from tests.peers.smtp import links_in, text_of

NEW = "tangerine lighthouse okapi"


pytestmark = pytest.mark.mail


def age_outbox(tx, minutes=2):
    with tx() as session:
        session.execute(sa.update(OutboxMessage).values(
            created_at=utcnow() - timedelta(minutes=minutes)))


def _forgot(client, email):
    token = csrf_token(client, "/password/forgot")
    return client.post("/password/forgot", data={"email": email, "csrf_token": token})


def _reset_link(smtp_server, email, count=1):
    mail = smtp_server.wait_for(email, count)[count - 1]
    [link] = [u for u in links_in(mail) if "/password/reset/" in u]
    return link.replace("http://localhost", "")


def _set_password(client, path, password=NEW, confirm=None):
    token = csrf_token(client, "/password/forgot")  # the session's token
    return client.post(path, data={"password": password, "confirm": confirm or password,
                                   "csrf_token": token})


def _same_page(response) -> str:
    return re.sub(r'name="csrf_token"[^>]*', "", response.get_data(as_text=True))


def test_reset_by_email_sets_the_password_and_ends_every_session(
        app, client, make_user, smtp_server):
    make_user("alice@acme.test")
    other = app.test_client()
    sign_in(other, "alice@acme.test")
    assert other.get("/").status_code == 200

    response = _forgot(client, "Alice@Acme.test")
    assert response.status_code == 200
    assert "If an account exists for" in response.get_data(as_text=True)
    path = _reset_link(smtp_server, "alice@acme.test")
    mail = smtp_server.to("alice@acme.test")[0]
    assert mail["Subject"] == "Reset your Trellis password" and "30 minutes" in text_of(mail)

    assert "Choose a new password" in client.get(path).get_data(as_text=True)
    done = _set_password(client, path)
    assert done.status_code == 302 and done.headers["Location"] == "/login"

    assert other.get("/").status_code == 302  # the other browser was signed out
    assert sign_in(app.test_client(), "alice@acme.test", PASSWORD).status_code == 401
    assert sign_in(app.test_client(), "alice@acme.test", NEW).status_code == 302
    notice = smtp_server.wait_for("alice@acme.test", 2)[1]
    assert "was changed" in notice["Subject"] and "through a reset link" in text_of(notice)
    [event] = audit_events(app, "password.reset")
    assert event.details == {"sessions_ended": 1} and event.actor == "alice@acme.test"

    # Used once: the same link no longer works.
    again = _set_password(client, path, "another fine passphrase")
    assert again.status_code == 400 and "expired or was already used" in \
        again.get_data(as_text=True)
    assert sign_in(app.test_client(), "alice@acme.test", NEW).status_code == 302


def test_an_unknown_email_gets_the_same_answer_and_no_mail(app, client, make_user,
                                                           smtp_server):
    make_user("alice@acme.test")
    known = _forgot(client, "alice@acme.test")
    unknown = _forgot(client, "nobody@acme.test")
    assert unknown.status_code == known.status_code == 200
    assert _same_page(unknown).replace("nobody", "alice") == _same_page(known)
    smtp_server.wait_for("alice@acme.test")
    assert smtp_server.to("nobody@acme.test") == []
    reasons = [e.reason for e in audit_events(app, "password.reset_request")]
    assert reasons == ["", "unknown_user"]


def test_expired_forged_and_superseded_links_are_refused(app, client, make_user, tx,
                                                         smtp_server):
    make_user("alice@acme.test")
    _forgot(client, "alice@acme.test")
    first = _reset_link(smtp_server, "alice@acme.test")
    _forgot(client, "alice@acme.test")  # at once: not sent again (no mailbox flooding)
    assert [e.reason for e in audit_events(app, "password.reset_request")] == \
        ["", "recently_sent"]
    age_outbox(tx)
    _forgot(client, "alice@acme.test")  # a minute later: a new link
    second = _reset_link(smtp_server, "alice@acme.test", 2)
    # Asking again spends the older link.
    assert client.get(first).status_code == 400
    # A made-up token, and one too long to be ours.
    forged = client.get("/password/reset/" + "A" * 43)
    assert forged.status_code == 400 and "does not work" in forged.get_data(as_text=True)
    assert client.get("/password/reset/" + "A" * 200).status_code == 404
    assert [e.reason for e in audit_events(app, "password.reset")] == ["invalid_token"] * 2
    # Expired.
    with tx() as session:
        session.execute(sa.update(UserToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get(second).status_code == 400
    assert _set_password(client, second).status_code == 400
    assert sign_in(app.test_client(), "alice@acme.test", PASSWORD).status_code == 302
    with services_of(app).db.sessions() as session:
        assert "hash" not in str(session.scalars(sa.select(UserToken.token_hash)).all()[0])
        assert all(len(h) == 64 for h in session.scalars(sa.select(UserToken.token_hash)))


def test_a_weak_or_mismatched_new_password_keeps_the_link_usable(app, client, make_user,
                                                                 smtp_server):
    make_user("alice@acme.test")
    _forgot(client, "alice@acme.test")
    path = _reset_link(smtp_server, "alice@acme.test")
    common = _set_password(client, path, "password1234")
    assert common.status_code == 400 and "commonly used passwords" in \
        common.get_data(as_text=True)
    short = _set_password(client, path, "short")
    assert "at least 12 characters" in short.get_data(as_text=True)
    mismatch = _set_password(client, path, NEW, NEW + "x")
    assert "do not match" in mismatch.get_data(as_text=True)
    assert _set_password(client, path).status_code == 302


def _federated_user(app, tx, make_user, make_org):
    org = make_org("acme", "Acme Supplies")
    user = make_user("fed@acme.test", password=None, org="acme")
    with tx() as session:
        connection = Connection(organization_id=org.id, protocol=Protocol.OIDC,
                                name="Acme Okta", settings={})
        session.add(connection)
        session.flush()
        session.add(FederatedIdentity(connection_id=connection.id, subject="s-1",
                                      user_id=user.id))
    return user


def test_a_federated_user_is_told_their_password_is_managed_by_their_idp(
        app, client, make_user, make_org, tx, smtp_server):
    user = _federated_user(app, tx, make_user, make_org)
    response = _forgot(client, "fed@acme.test")
    assert "If an account exists for" in response.get_data(as_text=True)
    [mail] = smtp_server.wait_for("fed@acme.test")
    assert "Acme Okta" in text_of(mail) and "/password/reset/" not in text_of(mail)
    assert "Acme Supplies" in mail["Subject"]  # branded for the user's organization
    # Signed in (as through the IdP), the password page says the same.
    from portal.services import auth
    from tests.conftest import CLI_CTX
    with tx() as session:
        token = auth.start_session(session, session.get(User, user.id), CLI_CTX, 1)
    with client.session_transaction() as browser:
        browser["sid"], browser["_user_id"], browser["_fresh"] = token, str(user.id), True
    page = client.get("/account/password").get_data(as_text=True)
    assert "managed by <strong>Acme Okta</strong>" in page and "Current password" not in page


def test_change_requires_the_current_password_and_ends_other_sessions(
        app, client, make_user, smtp_server):
    make_user("alice@acme.test")
    other = app.test_client()
    sign_in(other, "alice@acme.test")
    sign_in(client, "alice@acme.test")

    def change(current, new=NEW, confirm=None):
        token = csrf_token(client, "/account/password")
        return client.post("/account/password", data={
            "current": current, "password": new, "confirm": confirm or new,
            "csrf_token": token})

    wrong = change("not my password")
    assert wrong.status_code == 400 and "current password is not correct" in \
        wrong.get_data(as_text=True)
    [failure] = audit_events(app, "password.change")
    assert failure.outcome == "failure" and failure.reason == "wrong_password"
    weak = change(PASSWORD, "alice@acme.test-1")
    assert weak.status_code == 400 and "email address" in weak.get_data(as_text=True)

    done = change(PASSWORD)
    assert done.status_code == 302
    page = client.get("/account/password").get_data(as_text=True)
    assert "1 other session was signed out" in page
    assert client.get("/").status_code == 200  # this session stays
    assert other.get("/").status_code == 302  # the other one ended
    mails = smtp_server.wait_for("alice@acme.test", 2)  # the second browser was new too
    [mail] = [m for m in mails if "password" in m["Subject"]]
    assert "was changed" in mail["Subject"]
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuthSession)
                              .where(AuthSession.revoked_at.is_(None))) == 1


def test_a_recent_sign_in_stands_in_for_the_current_password(app, client, make_user):
    import time
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    page = client.get("/account/password").get_data(as_text=True)
    assert "your current password is not needed" in page and 'name="current"' not in page
    token = csrf_token(client, "/account/password")
    done = client.post("/account/password", data={"password": NEW, "confirm": NEW,
                                                  "csrf_token": token})
    assert done.status_code == 302
    [event] = audit_events(app, "password.change")
    assert event.outcome == "success" and event.details["confirmed_by"] == "recent_sign_in"
    # Past TRELLIS_RECENT_SIGN_IN_MINUTES the current password is asked again.
    with client.session_transaction() as browser:
        browser["auth_time"] = int(time.time()) - 11 * 60
    page = client.get("/account/password").get_data(as_text=True)
    assert 'name="current"' in page
    token = csrf_token(client, "/account/password")
    refused = client.post("/account/password", data={"password": PASSWORD,
                                                     "confirm": PASSWORD, "csrf_token": token})
    assert refused.status_code == 400 and len(audit_events(app, "password.change")) == 1
    assert sign_in(app.test_client(), "alice@acme.test", NEW).status_code == 302


def test_wrong_current_passwords_lock_like_sign_in(app, client, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    statuses = []
    for _ in range(7):
        token = csrf_token(client, "/account/password")
        statuses.append(client.post("/account/password", data={
            "current": "wrong guess", "password": NEW, "confirm": NEW,
            "csrf_token": token}).status_code)
    assert statuses[-1] == 429 and statuses[0] == 400


def test_smtp_down_the_reset_mail_waits_and_the_page_says_it_comes_shortly(
        app, client, make_user, smtp_server):
    make_user("alice@acme.test")
    smtp_server.stop()
    page = _forgot(client, "alice@acme.test").get_data(as_text=True)
    assert "we will send it shortly" in page
    with services_of(app).db.sessions() as session:
        [row] = session.scalars(sa.select(OutboxMessage)).all()
    assert row.status == OutboxStatus.PENDING and row.last_error


def test_the_reset_request_is_rate_limited(mail_settings, make_user):
    from portal import create_app
    app = create_app({**mail_settings, "LOGIN_RATE_LIMIT": "3/minute"})
    try:
        client = app.test_client()
        statuses = [_forgot(client, "x@acme.test").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        services_of(app).db.dispose()


@pytest.mark.parametrize("email", ["not an email", "alice@", "alice@acme", "a\u200b@acme.test"])
def test_a_malformed_address_is_a_plain_form_error(app, client, email, smtp_server):
    response = _forgot(client, email)
    assert response.status_code == 400
    assert "Enter a valid email address." in response.get_data(as_text=True)
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 0
