"""What users and apps notice around a sign-in through Trellis: consent remembered and
withdrawn, choosing an organization, forced re-authentication, public and private_key_jwt
apps, the device grant, and logout reaching the apps."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs

import pytest
from authlib.common.security import generate_token
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.conftest import CLI_CTX, services_of
from tests.integration.provider_helpers import (
    CSRF,
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


def test_consent_is_remembered_and_can_be_withdrawn(app, op):
    registered = register(app)
    _, first, _, browser = full_login(op, registered)
    client = rp(op, registered)
    response, _, _, _ = start(op, client, browser)
    assert response.status_code == 302 and "code=" in response.headers["Location"]  # no page
    page = browser.get(op + "/account/apps")
    assert "Supplier Portal" in page.text
    token = CSRF.search(page.text).group(1)
    browser.post(op + f"/account/apps/{registered.client_id}/revoke",
                 data={"csrf_token": token}, headers={"Referer": op + "/account/apps"})
    assert "Supplier Portal" not in browser.get(op + "/account/apps").text
    introspected = http.post(op + "/oauth/introspect",
                             auth=(registered.client_id, registered.secret),
                             data={"token": first["refresh_token"]}).json()
    assert introspected == {"active": False}
    response, _, _, _ = start(op, client, browser)
    assert response.status_code == 200 and "wants to sign you in" in response.text


def test_wider_scope_asks_again(app, op):
    registered = register(app)
    _, _, _, browser = full_login(op, registered, scope="openid email")
    response, _, _, _ = start(op, rp(op, registered, scope="openid email roles"), browser)
    assert response.status_code == 200 and "roles" in response.text


def test_declining_returns_access_denied(app, op):
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    response, _, _, _ = start(op, rp(op, registered), browser)
    back = callback_params(consent(op, browser, response, decision="deny"))
    assert back["error"] == "access_denied" and "code" not in back


def test_consent_form_without_csrf_token_is_refused(app, op):
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    response, _, _, _ = start(op, rp(op, registered), browser)
    forged = browser.post(response.url, data={"decision": "allow"}, allow_redirects=False)
    assert forged.status_code == 400 and "Location" not in forged.headers


def test_pre_approved_app_skips_the_consent_page(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    response, _, _, _ = start(op, rp(op, registered), browser)
    assert "code" in callback_params(response)


@pytest.fixture
def two_orgs(app):
    """Alice is also a member of Globex, and the app is offered to both."""
    from portal.models import MembershipSource
    from portal.services import organizations, roles, users
    with services_of(app).db.transaction() as session:
        user = users.get_by_email(session, "alice@acme.test")
        globex = organizations.get(session, "globex")
        users.add_membership(session, CLI_CTX, user, globex, MembershipSource.MANUAL)
        roles.grant_manually(session, CLI_CTX, user, globex, "admin", {"admin"})
    return register(app, organizations=["acme", "globex"], consent_required=False)


def test_a_user_in_two_orgs_chooses_one_and_gets_its_roles(app, op, two_orgs):
    browser = browser_login(op, "alice@acme.test")
    client = rp(op, two_orgs)
    response, verifier, _, _ = start(op, client, browser)
    assert "Sign in for which organization?" in response.text
    back = callback_params(consent(op, browser, response, org="globex"))
    token = client.fetch_token(op + "/oauth/token", code=back["code"], code_verifier=verifier)
    claims = jwt.decode(token["id_token"], KeySet.import_key_set(
        http.get(op + "/oauth/jwks").json()), algorithms=["RS256"]).claims
    assert claims["org"]["slug"] == "globex" and claims["roles"] == ["admin", "member"]


def test_the_app_may_preselect_the_org(app, op, two_orgs):
    browser = browser_login(op, "alice@acme.test")
    response, _, _, _ = start(op, rp(op, two_orgs), browser, org="acme")
    assert "code" in callback_params(response)


def test_prompt_login_and_max_age_send_the_user_back_to_sign_in(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    for params in ({"prompt": "login"}, {"max_age": "0"}):
        time.sleep(1.1) if "max_age" in params else None
        response, _, _, _ = start(op, rp(op, registered), browser, **params)
        assert response.status_code == 302
        login = response.headers["Location"]
        assert login.startswith("/login?next=")
        page = browser.get(op + login, allow_redirects=False)
        assert page.status_code == 200 and 'name="password"' in page.text  # not skipped
    response, _, _, _ = start(op, rp(op, registered), browser, max_age="3600")
    assert "code" in callback_params(response)


def test_public_app_signs_in_with_pkce_alone(app, op):
    registered = register(app, name="Mobile", client_type="public",
                          redirect_uris=["com.example.mobile:/callback"])
    browser = browser_login(op, "alice@acme.test")
    client = rp(op, registered, redirect_uri="com.example.mobile:/callback")
    response, verifier, _, _ = start(op, client, browser)
    response = consent(op, browser, response)
    location = response.headers["Location"]
    assert location.startswith("com.example.mobile:/callback?code=")
    code = parse_qs(location.split("?", 1)[1])["code"][0]
    token = client.fetch_token(op + "/oauth/token", code=code, code_verifier=verifier)
    assert token["id_token"] and token["refresh_token"]
    # a public app cannot pretend to have a secret
    answer = http.post(op + "/oauth/token", auth=(registered.client_id, "made-up"),
                       data={"grant_type": "refresh_token",
                             "refresh_token": token["refresh_token"]})
    assert answer.json()["error"] == "invalid_client"


def _assertion(key: RSAKey, client_id: str, audience: str, jti: str | None = None) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": key.kid},
                      {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
                       "exp": now + 60, "jti": jti or generate_token(16)}, key)


def test_private_key_jwt_client_authentication(app, op):
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    registered = register(app, name="Signed backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"],
                          auth_method="private_key_jwt",
                          jwks={"keys": [key.as_dict(private=False)]})
    assert registered.secret is None
    audience = op + "/oauth/token"
    form = {"grant_type": "client_credentials", "scope": "authz",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    assertion = _assertion(key, registered.client_id, audience)
    ok = http.post(audience, data={**form, "client_assertion": assertion})
    assert ok.status_code == 200 and ok.json()["access_token"]
    replay = http.post(audience, data={**form, "client_assertion": assertion})
    assert replay.json()["error"] == "invalid_client"
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    forged = http.post(audience, data={**form, "client_assertion": _assertion(
        stranger, registered.client_id, audience)})
    assert forged.json()["error"] == "invalid_client"
    wrong_aud = http.post(audience, data={**form, "client_assertion": _assertion(
        key, registered.client_id, "https://elsewhere.example/token")})
    assert wrong_aud.json()["error"] == "invalid_client"


def test_device_grant(app, op):
    registered = register(app, name="CLI", client_type="public", redirect_uris=[],
                          grant_types=["urn:ietf:params:oauth:grant-type:device_code",
                                       "refresh_token"], consent_required=False)
    started = http.post(op + "/oauth/device_authorization",
                        data={"client_id": registered.client_id, "scope": "openid org"}).json()
    assert started["verification_uri"] == op + "/device" and started["interval"] == 5
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": started["device_code"], "client_id": registered.client_id}
    assert http.post(op + "/oauth/token", data=poll).json()["error"] == "authorization_pending"
    assert http.post(op + "/oauth/token", data=poll).json()["error"] == "slow_down"
    browser = browser_login(op, "alice@acme.test")
    page = browser.get(op + "/device", params={"user_code": started["user_code"].lower()})
    assert "Connect CLI?" in page.text
    token = CSRF.search(page.text).group(1)
    done = browser.post(op + "/device", data={"csrf_token": token, "decision": "allow",
                                              "user_code": started["user_code"]},
                        headers={"Referer": op + "/device"})
    assert "Device connected" in done.text
    issued = http.post(op + "/oauth/token", data=poll).json()
    assert issued["access_token"] and issued["id_token"]
    again = http.post(op + "/oauth/token", data=poll).json()
    assert "access_token" not in again  # the device code works once
    bad = browser.get(op + "/device", params={"user_code": "BCDF-GHJK"})
    assert bad.status_code == 400 and "not a pending code" in bad.text


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append(parse_qs(body)["logout_token"][0])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def logout_receiver():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/backchannel", _Receiver.received
    server.shutdown()
    server.server_close()


def test_rp_initiated_logout_ends_the_session_and_notifies_apps(app, op, logout_receiver):
    uri, received = logout_receiver
    registered = register(app, backchannel_logout_uri=uri,
                          post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    client, token, _, browser = full_login(op, registered)
    id_claims = jwt.decode(token["id_token"], KeySet.import_key_set(
        http.get(op + "/oauth/jwks").json()), algorithms=["RS256"]).claims
    out = browser.get(op + "/oauth/logout", params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/bye",
        "state": "bye1"}, allow_redirects=False)
    assert out.status_code == 302 and out.headers["Location"] == "http://127.0.0.1:9/bye?state=bye1"
    assert len(received) == 1
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    logout = jwt.decode(received[0], keys, algorithms=["RS256"])
    assert logout.header["typ"] == "logout+jwt"
    assert logout.claims["sid"] == id_claims["sid"] and logout.claims["aud"] == registered.client_id
    assert "http://schemas.openid.net/event/backchannel-logout" in logout.claims["events"]
    assert "nonce" not in logout.claims
    assert client.get(op + "/oauth/userinfo").status_code == 401  # tokens revoked with it
    home = browser.get(op + "/", allow_redirects=False)
    assert home.status_code == 302 and "/login" in home.headers["Location"]


def test_logout_without_an_id_token_asks_first_and_never_redirects_blindly(app, op):
    registered = register(app, post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    _, _, _, browser = full_login(op, registered)
    page = browser.get(op + "/oauth/logout", params={
        "client_id": registered.client_id, "post_logout_redirect_uri": "http://127.0.0.1:9/bye"})
    assert page.status_code == 200 and "Sign out of Trellis?" in page.text
    assert browser.get(op + "/", allow_redirects=False).status_code == 200  # still signed in
    token = CSRF.search(page.text).group(1)
    done = browser.post(op + "/oauth/logout", data={
        "csrf_token": token, "client_id": registered.client_id,
        "post_logout_redirect_uri": "http://127.0.0.1:9/bye"},
        headers={"Referer": op + "/oauth/logout"}, allow_redirects=False)
    assert done.status_code == 200 and "You have signed out" in done.text


def test_forged_id_token_hint_is_refused(app, op):
    registered = register(app, post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    stranger = RSAKey.generate_key(2048)
    forged = jwt.encode({"alg": "RS256"}, {"iss": op, "aud": registered.client_id,
                                           "sub": "1"}, stranger)
    answer = http.get(op + "/oauth/logout", params={
        "id_token_hint": forged, "post_logout_redirect_uri": "http://127.0.0.1:9/bye"},
        allow_redirects=False)
    assert answer.status_code == 400 and "Location" not in answer.headers


def test_signing_out_of_trellis_notifies_apps(app, op, logout_receiver):
    uri, received = logout_receiver
    registered = register(app, backchannel_logout_uri=uri)
    _, _, _, browser = full_login(op, registered)
    page = browser.get(op + "/account/apps")
    token = CSRF.search(page.text).group(1)
    browser.post(op + "/logout", data={"csrf_token": token},
                 headers={"Referer": op + "/account/apps"})
    assert len(received) == 1
    assert json.loads(json.dumps(jwt.decode(received[0], KeySet.import_key_set(
        http.get(op + "/oauth/jwks").json()), algorithms=["RS256"]).claims))["sub"]


def test_refresh_keeps_org_and_current_roles(app, op):
    from portal.services import organizations, roles, users
    registered = register(app)
    client, token, _, _ = full_login(op, registered)
    with services_of(app).db.transaction() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                             organizations.get(session, "acme"), "buyer", {"buyer"})
    fresh = client.refresh_token(op + "/oauth/token", refresh_token=token["refresh_token"])
    claims = jwt.decode(fresh["id_token"], KeySet.import_key_set(
        http.get(op + "/oauth/jwks").json()), algorithms=["RS256"]).claims
    assert claims["org"]["slug"] == "acme" and claims["roles"] == ["buyer", "member"]
    assert REDIRECT  # registered redirect is the one used throughout


def test_back_channel_logout_token_of_a_pairwise_es256_app(app, op, logout_receiver):
    """The logout token is signed like the app's ID tokens and names the user by the app's
    own pairwise sub."""
    uri, received = logout_receiver
    registered = register(app, backchannel_logout_uri=uri, subject_type="pairwise",
                          id_token_signed_response_alg="ES256")
    _, token, _, browser = full_login(op, registered)
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    id_claims = jwt.decode(token["id_token"], keys, algorithms=["ES256"]).claims
    page = browser.get(op + "/")
    browser.post(op + "/logout", data={"csrf_token": CSRF.search(page.text).group(1)},
                 headers={"Referer": op + "/"}, allow_redirects=False)
    assert len(received) == 1
    logout = jwt.decode(received[0], keys, algorithms=["ES256"])
    assert logout.header["alg"] == "ES256" and logout.header["typ"] == "logout+jwt"
    assert logout.claims["sub"] == id_claims["sub"] and logout.claims["sid"] == id_claims["sid"]
