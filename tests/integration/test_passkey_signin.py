"""Passwordless sign-in with a passkey over HTTP with a software authenticator: the good
assertion signs in through the usual completion with the second factor satisfied; forged,
replayed, unverified and mismatched assertions are refused and audited."""

from __future__ import annotations

import pytest
from webauthn.helpers import bytes_to_base64url

from tests.conftest import audit_events, csrf_token
from tests.integration.soft_authenticator import SoftAuthenticator
from tests.integration.test_passkeys import alice, enrolled, post_json  # noqa: F401

OPTIONS, FINISH = "/login/passkey/discover/options", "/login/passkey/discover"


def _assert(client, key: SoftAuthenticator, *, handle: bytes | None = None, **lie):
    options = post_json(client, OPTIONS, page="/login")
    assert options.status_code == 200
    assert options.json["allowCredentials"] == []  # no account named: discoverable
    assert options.json["userVerification"] == "required"
    answer = key.get(options.json, **lie)
    if handle is not None:
        answer["response"]["userHandle"] = bytes_to_base64url(handle)
    return post_json(client, FINISH, {"credential": answer, "next": "/account/"},
                     page="/login")


def test_a_passkey_alone_signs_in_with_the_second_factor_satisfied(client, app, enrolled):  # noqa: F811
    response = _assert(client, enrolled)
    assert response.status_code == 200 and response.json["redirect"] == "/account/"
    with client.session_transaction() as session:
        assert session["assurance"] == 2 and session["amr"] == ["hwk", "mfa"]
        assert session["ua"]  # bound to this browser, as every sign-in
    assert client.get("/account/").status_code == 200
    [login] = [e for e in audit_events(app, "auth.login") if e.details == {"method": "passkey"}]
    assert login.actor == "alice@acme.test" and login.outcome == "success"
    assert audit_events(app, "auth.risk")[-1].details["method"] == ["hwk"]


def test_the_user_handle_must_name_the_credentials_account(client, app, enrolled):  # noqa: F811
    from portal.services.passkeys import user_handle
    assert _assert(client, enrolled, handle=user_handle(999999)).status_code == 401
    [failure] = [e for e in audit_events(app, "auth.login") if e.outcome == "failure"]
    assert failure.reason == "passkey_user_handle" and failure.target == "user:alice@acme.test"
    right = _assert(client, enrolled, handle=user_handle(_alice_id(app)))
    assert right.status_code == 200


def _alice_id(app) -> int:
    from portal.services import users
    from tests.conftest import services_of
    with services_of(app).db.sessions() as session:
        return users.get_by_email(session, "alice@acme.test").id


@pytest.mark.parametrize("lie, reason", [
    ({"bad_signature": True}, "passkey_invalid"),
    ({"origin": "https://evil.test"}, "passkey_origin"),
    ({"count": 0}, "passkey_sign_count"),
    ({"user_verified": False}, "passkey_user_verification"),
])
def test_bad_assertions_are_refused_and_audited(client, app, enrolled, lie, reason):  # noqa: F811
    if reason == "passkey_sign_count":
        assert _assert(client, enrolled).status_code == 200  # count 1 is stored
        client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    refused = _assert(client, enrolled, **lie)
    assert refused.status_code == 401
    assert refused.json["code"] == "passkey_refused"
    assert "could not sign you in" in refused.json["title"]
    failures = [e for e in audit_events(app, "auth.login") if e.outcome == "failure"]
    assert [f.reason for f in failures] == [reason]
    assert client.get("/account/").status_code == 302  # not signed in


def test_an_unknown_passkey_and_a_missing_challenge(client, app, alice):  # noqa: F811
    stranger = SoftAuthenticator()
    refused = _assert(client, stranger)
    assert refused.status_code == 401
    [failure] = [e for e in audit_events(app, "auth.login") if e.outcome == "failure"]
    assert failure.reason == "unknown_passkey" and failure.target == ""
    # Finishing without asking for options first: the challenge is not there.
    again = post_json(client, FINISH, {"credential": stranger.get({"challenge": "AAAA"})},
                      page="/login")
    assert again.status_code == 422 or again.status_code == 400
    assert again.json["code"] == "passkey_expired"


def test_the_sign_in_page_offers_a_passkey(client):
    page = client.get("/login").get_data(as_text=True)
    assert "Sign in with a passkey" in page and "passkeys.js" in page
    assert 'data-finish="/login/passkey/discover"' in page
