"""Account-takeover defences as the owner meets them: the notice of a sign-in from a new
device, of a password, second-factor or email change, read from a real SMTP server; its
"this wasn't me" link locks the account and ends everything; and sessions bound to the
browser family they began in."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.models import AuthSession, OAuthToken, User, UserStatus, UserToken
from portal.services import credentials, takeover
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in
from tests.peers.smtp import html_of, links_in, text_of

FIREFOX = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 "
           "Firefox/133.0")
FIREFOX_NEXT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:134.0) Gecko/20100101 "
                "Firefox/134.0")
CHROME_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")


def _browser(app, user_agent: str = FIREFOX):
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client


def _not_me_path(mail) -> str:
    [link] = [u for u in links_in(mail) if "/account/not-me/" in u]
    assert link in html_of(mail)  # the button carries the same link
    return link.replace("http://localhost", "")


def _worker_delivers(app) -> None:
    """What ``trellis worker`` does each pass for the outbox."""
    from portal.services import outbox
    outbox.deliver(services_of(app).db, outbox.MailConfig.from_settings(app.config))


def _lock(client, path):
    page = client.get(path)
    assert page.status_code == 200 and "Lock my account" in page.get_data(as_text=True)
    return client.post(path, data={"csrf_token": csrf_token(client, path)})


def _status(app, email):
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(User.status).where(User.email == email))


def _live_sessions(app, email):
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(AuthSession).join(User)
                              .where(User.email == email, AuthSession.revoked_at.is_(None)))


@pytest.mark.mail
def test_new_device_notice_and_its_link_lock_the_account(app, make_org, make_user,
                                                         smtp_server):
    make_org("acme")
    make_user("alice@acme.test", org="acme")
    usual = _browser(app)
    assert sign_in(usual, "alice@acme.test").status_code == 302  # the first device: no news
    usual.post("/logout", data={"csrf_token": csrf_token(usual, "/account/")})
    assert sign_in(usual, "alice@acme.test").status_code == 302  # the same device again
    assert smtp_server.to("alice@acme.test") == []

    intruder = _browser(app, CHROME_MAC)
    assert sign_in(intruder, "alice@acme.test").status_code == 302
    [mail] = smtp_server.wait_for("alice@acme.test")
    assert mail["Subject"] == "New sign-in to your Acme account"
    body = text_of(mail)
    assert "Chrome on macOS" in body and "127.0.0.1" in body
    path = _not_me_path(mail)
    # A password reset link asked for earlier stops working with the lock.
    with services_of(app).db.transaction() as session:
        alice = session.scalar(sa.select(User).where(User.email == "alice@acme.test"))
        credentials.issue_token(session, alice.id, "password_reset", timedelta(hours=1))

    # A mail scanner opening the link changes nothing.
    assert "Lock my account" in app.test_client().get(path).get_data(as_text=True)
    assert _status(app, "alice@acme.test") == UserStatus.ACTIVE

    owner = app.test_client()  # from the phone that read the mail
    done = _lock(owner, path)
    page = done.get_data(as_text=True)
    assert done.status_code == 200 and "Your account is locked" in page
    assert "What happens next" in page and "unlock" in page
    assert _status(app, "alice@acme.test") == UserStatus.SUSPENDED
    assert _live_sessions(app, "alice@acme.test") == 0
    assert usual.get("/account/").status_code == 302  # both browsers are signed out
    assert intruder.get("/account/").status_code == 302
    assert sign_in(_browser(app, CHROME_MAC), "alice@acme.test").status_code == 401
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(UserToken)
                              .where(UserToken.used_at.is_(None))) == 0
    [event] = audit_events(app, "user.lock")
    assert event.reason == "not_me" and event.actor == "alice@acme.test"
    assert event.organization_id is not None
    assert event.details["notice"] == "new_device" and event.details["sessions_ended"] == 2

    # The link works once.
    again = owner.post(path, data={"csrf_token": csrf_token(owner, "/login")})
    assert again.status_code == 400 and "expired or was already used" in \
        again.get_data(as_text=True)

    # An operator gives the account back; the owner signs in again.
    with services_of(app).db.transaction() as session:
        takeover.unlock(session, CLI_CTX, "alice@acme.test", "owner called")
    assert sign_in(_browser(app), "alice@acme.test").status_code == 302
    assert [e.reason for e in audit_events(app, "user.unlock")] == ["owner called"]


@pytest.mark.mail
def test_password_change_notice_locks_and_revokes_app_tokens(app, make_user, smtp_server):
    make_user("alice@acme.test")
    client = _browser(app)
    sign_in(client, "alice@acme.test")
    path = "/account/password"
    changed = client.post(path, data={"current": PASSWORD, "password": "tangerine okapi lamp",
                                      "confirm": "tangerine okapi lamp",
                                      "csrf_token": csrf_token(client, path)})
    assert changed.status_code == 302
    [mail] = smtp_server.wait_for("alice@acme.test")
    assert "password was changed" in mail["Subject"]
    link = _not_me_path(mail)
    with services_of(app).db.transaction() as session:
        alice = session.scalar(sa.select(User).where(User.email == "alice@acme.test"))
        _app_token(session, alice.id)
    assert _lock(app.test_client(), link).status_code == 200
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(OAuthToken.revoked_at)) is not None
    [event] = audit_events(app, "user.lock")
    assert event.details["notice"] == "password" and event.details["tokens_revoked"] == 1
    assert client.get("/account/").status_code == 302


def _app_token(session, user_id: int) -> None:
    """A token an app holds for the user (as the provider issues them)."""
    from portal.db import utcnow
    from portal.services import apps
    row, _secret = apps.create(session, CLI_CTX, apps.AppSpec(
        name="Supplier Portal", redirect_uris=["https://app.test/cb"], organizations=[]))
    session.add(OAuthToken(jti="j1", app_id=row.id, user_id=user_id, family="f1",
                           grant_type="authorization_code", scope="openid",
                           access_expires_at=utcnow() + timedelta(minutes=5)))


@pytest.mark.mail
def test_second_factor_and_email_change_notices_carry_the_link(app, make_user, smtp_server):
    from tests.integration.test_mfa import enroll
    make_user("alice@acme.test")
    client = _browser(app)
    sign_in(client, "alice@acme.test")
    enroll(client)
    _worker_delivers(app)
    [mail] = smtp_server.wait_for("alice@acme.test")
    assert "sign-in protection" in mail["Subject"]
    mfa_link = _not_me_path(mail)

    moved = client.post("/account/email", data={
        "new_email": "alice@new.test", "password": PASSWORD,
        "csrf_token": csrf_token(client, "/account/")})
    assert moved.status_code == 302
    [confirm] = smtp_server.wait_for("alice@new.test")
    confirm_path = next(u for u in links_in(confirm) if "/email/confirm/" in u)
    confirm_path = confirm_path.replace("http://localhost", "")
    client.post(confirm_path, data={"csrf_token": csrf_token(client, "/account/")})
    notice = smtp_server.wait_for("alice@acme.test", 2)[1]
    assert "email address was changed" in notice["Subject"]
    email_link = _not_me_path(notice)
    assert email_link != mfa_link

    # The old mailbox's owner locks the account that was moved away from them.
    assert _lock(app.test_client(), email_link).status_code == 200
    assert _status(app, "alice@new.test") == UserStatus.SUSPENDED
    [event] = audit_events(app, "user.lock")
    assert event.details["notice"] == "email"
    # Every other mailed link stopped working with the lock.
    assert app.test_client().get(mfa_link).status_code == 400


def test_a_forged_or_unknown_lock_link_is_refused_and_audited(app, make_user):
    make_user("alice@acme.test")
    client = app.test_client()
    page = client.get("/account/not-me/forged-token")
    assert page.status_code == 400 and "expired or was already used" in \
        page.get_data(as_text=True)
    assert client.get("/account/not-me/" + "x" * 200).status_code == 404
    [event] = audit_events(app, "user.lock")
    assert event.outcome == "failure" and event.reason == "invalid_token"
    assert _status(app, "alice@acme.test") == UserStatus.ACTIVE


# -- sessions bound to a browser family ---------------------------------------------------

def test_a_session_used_from_another_browser_family_ends(app, make_user):
    make_user("alice@acme.test")
    client = _browser(app, FIREFOX)
    assert sign_in(client, "alice@acme.test").status_code == 302
    client.environ_base["HTTP_USER_AGENT"] = FIREFOX_NEXT  # a browser update: same family
    assert client.get("/account/").status_code == 200

    client.environ_base["HTTP_USER_AGENT"] = CHROME_MAC  # the cookie replayed elsewhere
    stolen = client.get("/account/")
    assert stolen.status_code == 302 and "/login" in stolen.headers["Location"]
    client.environ_base["HTTP_USER_AGENT"] = FIREFOX  # and it stays ended for the owner
    assert client.get("/account/").status_code == 302
    assert _live_sessions(app, "alice@acme.test") == 0
    [event] = audit_events(app, "auth.session_end")
    assert event.outcome == "failure" and event.reason == "user_agent_changed"
    assert event.details == {"bound": "Firefox/Windows", "seen": "Chrome/macOS"}
    assert event.actor == "alice@acme.test"


@pytest.mark.parametrize("agent, family", [
    (FIREFOX, "Firefox/Windows"), (CHROME_MAC, "Chrome/macOS"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "Edge/Windows"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
     "like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", "Safari/iOS"),
    ("Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36", "Chrome/Android"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "HeadlessChrome/131.0.0.0 Safari/537.36", "Chrome/Linux"),
    ("", "Other/Other")])
def test_browser_families(agent, family):
    from portal import useragent
    assert useragent.family(agent) == family
