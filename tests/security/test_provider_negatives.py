"""Bad input at the OpenID Provider: every case the issue and Authlib's known gaps name is
refused in the OAuth error format, nothing is issued, and nothing goes to an unregistered
redirect URI."""

from __future__ import annotations

import threading
from datetime import timedelta
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from portal.db import utcnow
from portal.models import OAuthCode, OAuthToken
from tests.conftest import CLI_CTX, services_of
from tests.integration.provider_helpers import (
    REDIRECT,
    browser_login,
    callback_params,
    consent,
    full_login,
    http,
    register,
    rp,
    start,
)


def authorize_url(base: str, client_id: str, **params) -> str:
    verifier = generate_token(48)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
             "scope": "openid", "state": "s1", "code_challenge_method": "S256",
             "code_challenge": create_s256_code_challenge(verifier), **params}
    return base + "/oauth/authorize?" + urlencode({k: v for k, v in query.items()
                                                   if v is not None})


def issued_tokens(app) -> int:
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(OAuthToken))


@pytest.mark.parametrize("redirect_uri", ["https://evil.example/cb", REDIRECT + "/",
                                          REDIRECT + "?x=1", "http://127.0.0.1:9/CALLBACK"])
def test_unregistered_redirect_uri_is_shown_on_trellis_never_redirected(app, op, redirect_uri):
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(authorize_url(op, registered.client_id, redirect_uri=redirect_uri),
                           allow_redirects=False)
    assert response.status_code == 400 and "Location" not in response.headers
    assert "not valid" in response.text and 'class="reference"' in response.text


def test_unknown_client_is_shown_on_trellis(op):
    response = http.get(authorize_url(op, "app_nobody"), allow_redirects=False)
    assert response.status_code == 400 and "not registered" in response.text


@pytest.mark.parametrize(("params", "error"), [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"response_type": "code id_token"}, "unsupported_response_type"),
    ({"scope": "openid admin"}, "invalid_scope"),
    ({"request": "eyJhbGciOiJub25lIn0.e30."}, "invalid_request_object"),  # unsigned
    ({"request_uri": "https://evil.example/req"}, "request_uri_not_supported"),
    ({"prompt": "none login"}, "invalid_request"),
])
def test_bad_authorization_requests_return_to_the_app_with_an_error(app, op, params, error):
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(authorize_url(op, registered.client_id, **params),
                           allow_redirects=False)
    back = callback_params(response)
    assert back["error"] == error and back["state"] == "s1" and back["iss"] == op
    assert "code" not in back


def test_plain_pkce_at_the_token_endpoint_is_useless(app, op):
    """Even a code whose challenge equals the verifier (what plain would send) fails."""
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    verifier = generate_token(48)
    response = browser.get(authorize_url(op, registered.client_id, code_challenge=verifier,
                                         code_challenge_method="S256"), allow_redirects=False)
    code = callback_params(consent(op, browser, response))["code"]
    answer = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                       data={"grant_type": "authorization_code", "code": code,
                             "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert answer.json()["error"] == "invalid_grant"
    assert issued_tokens(app) == 0


def _code(app, op, registered, browser=None):
    browser = browser or browser_login(op, "alice@acme.test")
    client = rp(op, registered)
    response, verifier, _, _ = start(op, client, browser)
    if response.status_code == 200:
        response = consent(op, browser, response)
    return callback_params(response)["code"], verifier


@pytest.mark.parametrize("case", ["missing_verifier", "wrong_verifier", "wrong_redirect",
                                  "wrong_secret", "other_client", "expired", "no_auth"])
def test_bad_token_requests_issue_nothing(app, op, case):
    registered = register(app)
    other = register(app, name="Other")
    code, verifier = _code(app, op, registered)
    auth = (registered.client_id, registered.secret)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    expected = "invalid_grant"
    if case == "missing_verifier":
        data.pop("code_verifier")
        expected = "invalid_request"
    elif case == "wrong_verifier":
        data["code_verifier"] = generate_token(48)
    elif case == "wrong_redirect":
        data["redirect_uri"] = REDIRECT + "/other"
    elif case == "wrong_secret":
        auth = (registered.client_id, "trs_wrong")
        expected = "invalid_client"
    elif case == "other_client":
        auth = (other.client_id, other.secret)
    elif case == "expired":
        with services_of(app).db.transaction() as session:
            session.execute(sa.update(OAuthCode).values(expires_at=utcnow() - timedelta(1)))
    elif case == "no_auth":
        auth = None
        data["client_id"] = registered.client_id
        expected = "invalid_client"
    answer = http.post(op + "/oauth/token", auth=auth, data=data)
    assert answer.status_code in (400, 401) and answer.json()["error"] == expected, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    assert issued_tokens(app) == 0
    if case == "other_client":  # the other app's attempt did not burn the code
        ok = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                       data={**data, "code_verifier": verifier})
        assert ok.status_code == 200


def test_concurrent_redemptions_of_one_code_have_one_winner(app, op):
    registered = register(app)
    code, verifier = _code(app, op, registered)
    results: list[int] = []

    def redeem():
        answer = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                           data={"grant_type": "authorization_code", "code": code,
                                 "redirect_uri": REDIRECT, "code_verifier": verifier})
        results.append(answer.status_code)

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200, 400, 400, 400]
    # and the losers' reuse revoked what the winner got
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OAuthToken).where(
            OAuthToken.revoked_at.is_(None))) == 0


@pytest.mark.parametrize(("data", "error"), [
    ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
    ({"grant_type": "client_credentials"}, "unauthorized_client"),
    ({"grant_type": "implicit"}, "unsupported_grant_type"),
])
def test_unsupported_grants_are_refused(app, op, data, error):
    registered = register(app)
    answer = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                       data=data)
    assert answer.json()["error"] == error


def test_client_secret_in_the_url_is_refused(app, op):
    registered = register(app, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"],
                          auth_method="client_secret_post")
    answer = http.post(op + "/oauth/token?" + urlencode(
        {"client_id": registered.client_id, "client_secret": registered.secret}),
        data={"grant_type": "client_credentials"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_client_credentials_cannot_ask_for_user_scopes(app, op):
    registered = register(app, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz", "openid"])
    answer = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                       data={"grant_type": "client_credentials", "scope": "openid"})
    assert answer.json()["error"] == "invalid_scope"


def test_an_org_the_app_is_not_offered_to_gets_access_denied(app, op):
    registered = register(app, organizations=["acme"])
    browser = browser_login(op, "bob@globex.test")
    response = browser.get(authorize_url(op, registered.client_id), allow_redirects=False)
    back = callback_params(response)
    assert back["error"] == "access_denied" and "code" not in back
    # asking for an organization by name does not help either
    response = browser.get(authorize_url(op, registered.client_id, org="acme"),
                           allow_redirects=False)
    assert callback_params(response)["error"] == "access_denied"


def test_unknown_parameters_are_ignored(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(authorize_url(op, registered.client_id, foo="bar",
                                         claims_locales="xx"), allow_redirects=False)
    assert "code" in callback_params(response)


def test_prompt_none_without_a_session_says_login_required(app, op):
    registered = register(app)
    response = http.get(authorize_url(op, registered.client_id, prompt="none"),
                        allow_redirects=False)
    assert callback_params(response)["error"] == "login_required"


def test_a_suspended_users_tokens_stop_at_once(app, op):
    from portal.services import users
    registered = register(app)
    client, token, _, _ = full_login(op, registered)
    with services_of(app).db.transaction() as session:
        users.suspend(session, CLI_CTX, "alice@acme.test")
    auth = (registered.client_id, registered.secret)
    for kind in ("access_token", "refresh_token"):
        answer = http.post(op + "/oauth/introspect", auth=auth, data={"token": token[kind]})
        assert answer.json() == {"active": False}
    assert client.get(op + "/oauth/userinfo").status_code == 401
    refresh = http.post(op + "/oauth/token", auth=auth, data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert refresh.json()["error"] == "invalid_grant"


def test_apps_see_only_their_own_tokens(app, op):
    registered = register(app)
    other = register(app, name="Other")
    _, token, _, _ = full_login(op, registered)
    mine = http.post(op + "/oauth/introspect", auth=(registered.client_id, registered.secret),
                     data={"token": token["access_token"]}).json()
    assert mine["active"] is True and mine["org"]["slug"] == "acme"
    theirs = http.post(op + "/oauth/introspect", auth=(other.client_id, other.secret),
                       data={"token": token["access_token"]}).json()
    assert theirs == {"active": False}
    http.post(op + "/oauth/revoke", auth=(other.client_id, other.secret),
              data={"token": token["refresh_token"]})
    still = http.post(op + "/oauth/introspect", auth=(registered.client_id, registered.secret),
                      data={"token": token["refresh_token"]}).json()
    assert still["active"] is True


def test_introspection_needs_client_authentication(app, op):
    registered = register(app)
    _, token, _, _ = full_login(op, registered)
    answer = http.post(op + "/oauth/introspect", data={"token": token["access_token"],
                                                       "client_id": registered.client_id})
    assert answer.status_code in (400, 401) and answer.json()["error"] == "invalid_client"


def test_expired_access_token_is_inactive(app, op):
    registered = register(app)
    client, token, _, _ = full_login(op, registered)
    with services_of(app).db.transaction() as session:
        session.execute(sa.update(OAuthToken).values(
            access_expires_at=utcnow() - timedelta(seconds=1)))
    answer = http.post(op + "/oauth/introspect", auth=(registered.client_id, registered.secret),
                       data={"token": token["access_token"], "token_type_hint": "access_token"})
    assert answer.json() == {"active": False}
    assert client.get(op + "/oauth/userinfo").status_code == 401


def test_tokens_signed_before_a_rotation_still_verify_after_it(app, op):
    from joserfc import jwt
    from joserfc.jwk import KeySet

    from portal.services import provider_keys
    registered = register(app)
    _, token, _, _ = full_login(op, registered)
    s = services_of(app)
    with s.db.transaction() as session:
        provider_keys.rotate(session, CLI_CTX, s.secrets)
    app.extensions["trellis_oidc_keys"].clear()
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    assert jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims["sub"]
    _, fresh, _, _ = full_login(op, registered)
    new_kid = jwt.decode(fresh["id_token"], keys, algorithms=["RS256"]).header["kid"]
    assert new_kid != jwt.decode(token["id_token"], keys, algorithms=["RS256"]).header["kid"]


@pytest.mark.parametrize("change", ["org_suspended", "membership_suspended", "app_disabled"])
def test_tokens_stop_when_the_org_membership_or_app_goes(app, op, change):
    from portal.models import Membership, MembershipStatus
    from portal.services import apps, organizations
    registered = register(app)
    client, token, _, _ = full_login(op, registered)
    with services_of(app).db.transaction() as session:
        if change == "org_suspended":
            organizations.set_status(session, CLI_CTX, "acme", "suspended")
        elif change == "membership_suspended":
            session.execute(sa.update(Membership).values(status=MembershipStatus.SUSPENDED))
        else:
            apps.set_enabled(session, CLI_CTX, registered.client_id, False)
    if change == "app_disabled":  # the app itself can no longer ask; the owner of the token
        app.extensions["trellis_oauth_clients"].clear()  # ... learns it from userinfo
    else:
        answer = http.post(op + "/oauth/introspect",
                           auth=(registered.client_id, registered.secret),
                           data={"token": token["access_token"]})
        assert answer.json() == {"active": False}
        refresh = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                            data={"grant_type": "refresh_token",
                                  "refresh_token": token["refresh_token"]})
        assert refresh.json()["error"] == "invalid_grant"
    assert client.get(op + "/oauth/userinfo").status_code == 401


def test_token_endpoint_is_rate_limited_per_ip(settings, make_org):
    from portal import create_app
    from tests.e2e.conftest import LiveServer
    limited = create_app({**settings, "OAUTH_RATE_LIMIT": "3/minute"})
    make_org("acme", "Acme Supplies")
    registered = register(limited, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"])
    server = LiveServer(limited)
    try:
        answers = [http.post(server.url + "/oauth/token",
                             auth=(registered.client_id, "trs_wrong-guess"),
                             data={"grant_type": "client_credentials"}).status_code
                   for _ in range(4)]
    finally:
        server.stop()
        services_of(limited).db.dispose()
    assert answers == [401, 401, 401, 429]
