"""Passkeys and security keys (WebAuthn) as a second factor, over HTTP with a software
authenticator: registration, sign-in, step-up, and the bad answers that must be refused."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from portal.models import RecoveryCode, WebAuthnCredential
from tests.conftest import audit_events, csrf_token, services_of, sign_in
from tests.integration.soft_authenticator import SoftAuthenticator


def post_json(client, path: str, body: dict | None = None, page: str = "/account/security"):
    return client.post(path, json=body or {}, headers={
        "X-CSRFToken": csrf_token(client, page), "Accept": "application/json"})


def add_passkey(client, authenticator: SoftAuthenticator, name: str = "YubiKey"):
    options = post_json(client, "/account/security/passkeys/options")
    assert options.status_code == 200, options.get_data(as_text=True)
    assert options.json["rp"]["id"] == "localhost"
    return post_json(client, "/account/security/passkeys", {
        "credential": authenticator.create(options.json), "name": name})


@pytest.fixture
def alice(make_org, make_user):
    make_org("acme", "Acme Supplies")
    return make_user("alice@acme.test", org="acme", display_name="Alice")


@pytest.fixture
def enrolled(client, app, alice):
    """Alice with a registered security key, signed out again."""
    key = SoftAuthenticator()
    sign_in(client, "alice@acme.test")
    done = add_passkey(client, key)
    assert done.status_code == 200 and done.json["redirect"] == \
        "/account/security/recovery-codes/new"
    page = client.get(done.json["redirect"]).get_data(as_text=True)
    assert page.count("<li><code>") == 10  # the first factor brings recovery codes
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    return key


def sign_in_with_passkey(client, key: SoftAuthenticator, **lie):
    sign_in(client, "alice@acme.test")
    options = post_json(client, "/login/passkey/options", page="/login/mfa")
    assert options.status_code == 200
    assert [c["id"] for c in options.json["allowCredentials"]] == [
        key.create({"challenge": ""})["id"]]
    return post_json(client, "/login/passkey", {"credential": key.get(options.json, **lie)},
                     page="/login/mfa")


def test_register_then_sign_in_with_the_key(client, app, enrolled):
    with services_of(app).db.sessions() as s:
        row = s.scalar(sa.select(WebAuthnCredential))
        assert row.name == "YubiKey" and row.sign_count == 0
        assert s.scalar(sa.select(sa.func.count(RecoveryCode.id))) == 10
    response = sign_in(client, "alice@acme.test")
    assert response.headers["Location"] == "/login/mfa"
    page = client.get("/login/mfa").get_data(as_text=True)
    assert "Use a passkey or security key" in page and "passkeys.js" in page
    response = sign_in_with_passkey(client, enrolled)
    assert response.status_code == 200 and response.json["redirect"] == "/"
    with client.session_transaction() as session:
        assert session["assurance"] == 2 and session["amr"] == ["pwd", "hwk", "mfa"]
    assert "Welcome, Alice" in client.get("/").get_data(as_text=True)
    [event] = [e for e in audit_events(app, "auth.mfa") if e.outcome == "success"]
    assert event.details["method"] == "hwk"
    assert [e.action for e in audit_events(app, "mfa.passkey_add")] == ["mfa.passkey_add"]


@pytest.mark.parametrize(("lie", "reason"), [
    ({"origin": "https://evil.example"}, "passkey_origin"),
    ({"bad_signature": True}, "passkey_invalid"),
])
def test_assertions_for_another_origin_or_badly_signed_are_refused(client, app, enrolled,
                                                                    lie, reason):
    response = sign_in_with_passkey(client, enrolled, **lie)
    assert response.status_code == 401 and response.json["code"] == "invalid_code"
    assert client.get("/").status_code == 302
    [event] = audit_events(app, "auth.mfa")
    assert (event.outcome, event.reason) == ("failure", reason)


def test_a_replayed_sign_count_is_refused(client, app, enrolled):
    assert sign_in_with_passkey(client, enrolled).status_code == 200  # count 1
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    response = sign_in_with_passkey(client, enrolled, count=1)  # a clone at the same count
    assert response.status_code == 401
    failures = [e for e in audit_events(app, "auth.mfa") if e.outcome == "failure"]
    assert [e.reason for e in failures] == ["passkey_sign_count"]


def test_an_answer_to_an_old_challenge_is_refused(client, app, enrolled):
    sign_in(client, "alice@acme.test")
    old = post_json(client, "/login/passkey/options", page="/login/mfa").json
    post_json(client, "/login/passkey/options", page="/login/mfa")  # a newer challenge
    response = post_json(client, "/login/passkey", {"credential": enrolled.get(old)},
                         page="/login/mfa")
    assert response.status_code == 401
    assert client.get("/").status_code == 302


def test_a_challenge_is_used_once(client, app, enrolled):
    sign_in(client, "alice@acme.test")
    options = post_json(client, "/login/passkey/options", page="/login/mfa").json
    answer = enrolled.get(options)
    response = post_json(client, "/login/passkey", {"credential": answer}, page="/login/mfa")
    assert response.status_code == 200
    other = app.test_client()  # even a second browser with the same answer gets nowhere
    sign_in(other, "alice@acme.test")
    response = post_json(other, "/login/passkey", {"credential": answer}, page="/login/mfa")
    assert response.status_code == 400 and response.json["code"] == "passkey_expired"


def test_adding_a_passkey_needs_a_recent_sign_in(client, app, alice):
    sign_in(client, "alice@acme.test")
    with client.session_transaction() as session:
        session["auth_time"] = int(time.time()) - 3600
    assert client.get("/account/security/passkeys/new").headers["Location"].startswith(
        "/login")
    response = post_json(client, "/account/security/passkeys/options")
    assert response.status_code == 403 and response.json["code"] == "reauth_required"
    with services_of(app).db.sessions() as s:
        assert s.scalar(sa.select(WebAuthnCredential)) is None


def test_a_registration_for_another_origin_is_refused(client, app, alice):
    sign_in(client, "alice@acme.test")
    response = add_passkey(client, SoftAuthenticator(origin="https://evil.example"))
    assert response.status_code == 400 and response.json["code"] == "passkey_invalid"
    with services_of(app).db.sessions() as s:
        assert s.scalar(sa.select(WebAuthnCredential)) is None


def test_step_up_with_the_key(client, app, enrolled):
    assert sign_in_with_passkey(client, enrolled).status_code == 200
    with client.session_transaction() as session:
        session["mfa_at"] = int(time.time()) - 3600
    token = csrf_token(client, "/account/security")
    with services_of(app).db.sessions() as s:
        key_id = s.scalar(sa.select(WebAuthnCredential.id))
    remove = f"/account/security/passkeys/{key_id}/remove"
    response = client.post(remove, data={"csrf_token": token})
    assert "/login/step-up" in response.headers["Location"]
    options = post_json(client, "/login/passkey/options", page="/login/step-up").json
    response = post_json(client, "/login/passkey", {
        "credential": enrolled.get(options), "next": "/account/security"},
        page="/login/step-up")
    assert response.status_code == 200 and response.json["redirect"] == "/account/security"
    response = client.post(remove, data={"csrf_token": token})
    assert response.status_code == 302
    with services_of(app).db.sessions() as s:
        assert s.scalar(sa.select(WebAuthnCredential)) is None
        assert s.scalar(sa.select(RecoveryCode)) is None  # no factor left: codes go too
