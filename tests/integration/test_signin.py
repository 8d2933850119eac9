"""Local sign-in as a user experiences it, with what the audit trail records."""

import pytest

from portal import create_app
from portal.passwords import Passwords
from tests.conftest import PASSWORD, audit_events, csrf_token, services_of, sign_in

INVALID = "The email or password is not correct."


def test_sign_in_opens_the_portal_and_is_audited(client, app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme", display_name="Alice")
    response = sign_in(client, "Alice@ACME.test ")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    page = client.get("/").get_data(as_text=True)
    assert "Welcome, Alice" in page and "Acme Supplies" in page
    [event] = audit_events(app, "auth.login")
    assert (event.outcome, event.target, event.actor) == ("success", "user:alice@acme.test",
                                                          "alice@acme.test")
    assert event.request_id and event.ip == "127.0.0.1"


@pytest.mark.parametrize(("email", "password", "reason"), [
    ("alice@acme.test", "wrong password here", "wrong_password"),
    ("nobody@acme.test", PASSWORD, "unknown_user"),
    ("not an email", PASSWORD, "unknown_user"),
])
def test_wrong_password_and_unknown_user_look_the_same(client, app, make_user, email,
                                                       password, reason):
    make_user("alice@acme.test")
    response = sign_in(client, email, password)
    assert response.status_code == 401
    assert INVALID in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out
    [event] = audit_events(app, "auth.login")
    assert (event.outcome, event.reason) == ("failure", reason)


def test_unknown_user_costs_a_password_hash_too(client, app, make_user, monkeypatch):
    make_user("alice@acme.test")
    calls = []
    passwords = services_of(app).passwords

    class Spy:
        def __init__(self, real):
            self.real = real

        def verify(self, stored, password):
            calls.append(stored)
            return self.real.verify(stored, password)

        def __getattr__(self, name):
            return getattr(self.real, name)

    monkeypatch.setattr(passwords, "hasher", Spy(passwords.hasher))
    sign_in(client, "nobody@acme.test", PASSWORD)
    sign_in(client, "alice@acme.test", "wrong password here")
    assert len(calls) == 2 and all(h.startswith("$argon2id$") for h in calls)


def test_suspended_user_cannot_sign_in(client, app, make_user, tx):
    from portal.services import users
    from tests.conftest import CLI_CTX
    make_user("alice@acme.test")
    with tx() as session:
        users.suspend(session, CLI_CTX, "alice@acme.test")
    response = sign_in(client, "alice@acme.test")
    assert response.status_code == 401 and INVALID in response.get_data(as_text=True)
    [event] = audit_events(app, "auth.login")
    assert event.reason == "user_suspended"


def test_suspension_ends_an_open_session(client, make_user, tx):
    from portal.services import users
    from tests.conftest import CLI_CTX
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    assert client.get("/").status_code == 200
    with tx() as session:
        users.suspend(session, CLI_CTX, "alice@acme.test")
    assert client.get("/").status_code == 302


def test_lockout_after_repeated_failures_is_explained_and_audited(settings, make_user):
    app = create_app({**settings, "LOGIN_FREE_FAILURES": 3, "LOCKOUT_SECONDS": 90})
    client = app.test_client()
    make_user("alice@acme.test")
    for _ in range(3):
        assert sign_in(client, "alice@acme.test", "wrong password here").status_code == 401
    locked = sign_in(client, "alice@acme.test", PASSWORD)  # even the right password waits
    assert locked.status_code == 429
    assert "Too many failed attempts. Try again in 2 minutes." in locked.get_data(as_text=True)
    assert 85 <= int(locked.headers["Retry-After"]) <= 91
    [lockout] = audit_events(app, "auth.lockout")
    assert lockout.reason == "account_locked" and lockout.details["seconds"] == 90


def test_request_rate_limit_on_the_credential_endpoint(settings, make_user):
    app = create_app({**settings, "LOGIN_RATE_LIMIT": "3/minute"})
    client = app.test_client()
    token = csrf_token(client)
    for _ in range(3):
        client.post("/login", data={"email": "x@acme.test", "password": "p" * 12,
                                    "csrf_token": token})
    limited = client.post("/login", data={"email": "x@acme.test", "password": "p" * 12,
                                          "csrf_token": token})
    assert limited.status_code == 429
    assert "Too many requests" in limited.get_data(as_text=True)
    assert client.get("/login").status_code == 200  # only POSTs are limited


def test_lockout_is_shared_between_workers_through_redis(settings, make_user, redis_url):
    import uuid
    shared = {**settings, "REDIS_URL": redis_url, "LOGIN_FREE_FAILURES": 2,
              "THROTTLE_PREFIX": f"test:{uuid.uuid4().hex}:"}
    worker_a, worker_b = create_app(shared), create_app(shared)
    make_user("alice@acme.test")
    for _ in range(2):
        sign_in(worker_a.test_client(), "alice@acme.test", "wrong password here")
    response = sign_in(worker_b.test_client(), "alice@acme.test", PASSWORD)
    assert response.status_code == 429


def test_password_is_rehashed_when_parameters_change(settings, make_user, tx):
    import sqlalchemy as sa

    from portal.models import User
    make_user("alice@acme.test")
    stronger = create_app({**settings, "ARGON2_TIME_COST": 2})
    assert sign_in(stronger.test_client(), "alice@acme.test").status_code == 302
    with tx() as session:
        stored = session.scalar(sa.select(User.password_hash))
    assert ",t=2," in stored and Passwords(2, 8192, 1).verify(stored, PASSWORD)


def test_signed_in_user_visiting_login_goes_home(client, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    assert client.get("/login").headers["Location"] == "/"


def test_org_sign_in_page_is_branded_and_unknown_orgs_are_not_confirmed(client, make_org):
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f",
                                                "footer_text": "Acme footer"})
    page = client.get("/o/acme/login").get_data(as_text=True)
    assert "Sign in to Acme Supplies" in page and "Acme footer" in page
    assert "/branding/acme.css" in page
    css = client.get("/branding/acme.css").get_data(as_text=True)
    assert css == ":root { --brand: #0b6e4f; }\n"
    missing = client.get("/o/nobody/login")
    assert missing.status_code == 404 and "nobody" not in missing.get_data(as_text=True)


def test_control_characters_in_the_email_get_the_ordinary_refusal(client, app, make_user):
    make_user("alice@acme.test")
    for raw in ("alice@acme.test\x00", "alice\x07@acme.test"):
        response = sign_in(client, raw, "wrong password")
        assert response.status_code == 400, response.status_code
        assert "Enter your work email address" in response.get_data(as_text=True)
    assert sign_in(client, "alice@acme.test").status_code == 302
