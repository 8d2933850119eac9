"""Pushed authorization requests (RFC 9126) and authorization requests sent by POST
(OpenID Connect Core 3.1.2.1), against Trellis on a loopback port: the app's backend pushes
its request with its credentials and sends the browser with only ``client_id`` and the
``request_uri`` it got back; a request object too long for a URL can also be POSTed."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import urlencode

import sqlalchemy as sa
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from portal.db import utcnow
from portal.models import OAuthCode, OAuthPushedRequest
from portal.services import provider
from tests.conftest import audit_events, services_of
from tests.integration.provider_helpers import (
    REDIRECT,
    browser_login,
    callback_params,
    consent,
    http,
    register,
)


def _request(verifier: str, **extra) -> dict[str, str]:
    params = {"response_type": "code", "redirect_uri": REDIRECT,
              "scope": "openid email org roles", "state": "pushed-state",
              "nonce": "pushed-nonce", "code_challenge": create_s256_code_challenge(verifier),
              "code_challenge_method": "S256", **extra}
    return {k: v for k, v in params.items() if v is not None}


def _push(base: str, registered, **extra):
    return http.post(base + "/oauth/par", data=extra,
                     auth=(registered.client_id, registered.secret))


def _redeem(base: str, registered, code: str, verifier: str):
    return http.post(base + "/oauth/token", auth=(registered.client_id, registered.secret),
                     data={"grant_type": "authorization_code", "code": code,
                           "redirect_uri": REDIRECT, "code_verifier": verifier})


def _codes(app) -> int:
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(OAuthCode))


def _pushed(app) -> int:
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(OAuthPushedRequest))


def test_pushed_request_signs_in_once(app, op):
    registered = register(app)
    discovery = http.get(op + "/.well-known/openid-configuration").json()
    assert discovery["pushed_authorization_request_endpoint"] == op + "/oauth/par"
    verifier = generate_token(48)
    pushed = _push(op, registered, **_request(verifier))
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["Cache-Control"] == "no-store"
    body = pushed.json()
    assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert 0 < body["expires_in"] <= 600

    browser = browser_login(op, "alice@acme.test")
    # Only the pushed parameters count: the query's scope and state are ignored.
    url = op + "/oauth/authorize?" + urlencode({
        "client_id": registered.client_id, "request_uri": body["request_uri"],
        "scope": "openid", "state": "query-state"})
    page = browser.get(url, allow_redirects=False)
    back = callback_params(consent(op, browser, page))
    assert back["state"] == "pushed-state" and back["iss"] == op
    token = _redeem(op, registered, back["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "openid email org roles"
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    claims = jwt.decode(token.json()["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["nonce"] == "pushed-nonce" and claims["org"]["slug"] == "acme"

    # Used once: the same request_uri is refused on Trellis, and no second code is made.
    before = _codes(app)
    again = browser.get(url, allow_redirects=False)
    assert again.status_code == 400 and "Location" not in again.headers
    assert _codes(app) == before
    assert [e for e in audit_events(app, "oauth.authorize")
            if e.reason == "request_object_request_uri_unknown"]


def test_pushed_request_survives_the_sign_in_round_trip(app, op):
    registered = register(app, consent_required=False)
    verifier = generate_token(48)
    request_uri = _push(op, registered, **_request(verifier)).json()["request_uri"]
    browser = browser_login(op, "alice@acme.test")
    # A fresh browser goes to sign in first and comes back with the same request_uri.
    fresh = http.__class__()
    answer = fresh.get(op + "/oauth/authorize?" + urlencode({
        "client_id": registered.client_id, "request_uri": request_uri}),
        allow_redirects=False)
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert "request_uri" in answer.headers["Location"]
    assert "code_challenge" not in answer.headers["Location"]  # the reference only
    # The signed-in browser completes it without consent (pre-approved app).
    back = callback_params(browser.get(op + "/oauth/authorize?" + urlencode({
        "client_id": registered.client_id, "request_uri": request_uri}),
        allow_redirects=False))
    assert _redeem(op, registered, back["code"], verifier).status_code == 200


def test_pushed_requests_are_refused_with_reasons_and_nothing_stored(app, op):
    registered = register(app)
    other = register(app, name="Other app")
    verifier = generate_token(48)
    good = _request(verifier)
    cases = [
        (http.post(op + "/oauth/par", data=good, auth=(registered.client_id, "wrong")),
         401, "invalid_client"),
        (_push(op, registered, **{**good, "redirect_uri": "https://evil.example/cb"}), 400,
         "invalid_request"),
        (_push(op, registered, **{**good, "code_challenge_method": "plain"}), 400,
         "invalid_request"),
        (_push(op, registered, **{**good, "code_challenge": None}), 400, "invalid_request"),
        (_push(op, registered, **{**good, "scope": "openid apps:manage"}), 400,
         "invalid_scope"),
        (_push(op, registered, **{**good, "response_type": "token"}), 400,
         "unsupported_response_type"),
        (_push(op, registered, **good, request_uri="urn:ietf:params:oauth:request_uri:x"),
         400, "invalid_request"),
        (http.post(op + "/oauth/par?scope=openid", data=good,
                   auth=(registered.client_id, registered.secret)), 400, "invalid_request"),
    ]
    for response, status, error in cases:
        assert response.status_code == status, (error, response.text)
        assert response.json()["error"] == error, response.text
    assert _pushed(app) == 0

    # Another app's request_uri, a made-up one and an expired one: refused on Trellis.
    browser = browser_login(op, "alice@acme.test")
    theirs = _push(op, other, **good).json()["request_uri"]
    expired = _push(op, registered, **good).json()["request_uri"]
    with services_of(app).db.transaction() as session:
        handle = expired.rpartition(":")[2]
        session.execute(sa.update(OAuthPushedRequest).where(
            OAuthPushedRequest.handle_hash == provider.digest(handle))
            .values(expires_at=utcnow() - timedelta(seconds=1)))
    for uri in (theirs, expired, "urn:ietf:params:oauth:request_uri:" + "a" * 43):
        answer = browser.get(op + "/oauth/authorize?" + urlencode({
            "client_id": registered.client_id, "request_uri": uri}), allow_redirects=False)
        assert answer.status_code == 400 and "Location" not in answer.headers, uri
    # A URL to fetch a request object from is not supported: said to the app.
    back = callback_params(browser.get(op + "/oauth/authorize?" + urlencode({
        "client_id": registered.client_id, "request_uri": "https://app.example/req.jwt",
        "redirect_uri": REDIRECT, "state": "s"}), allow_redirects=False))
    assert back["error"] == "request_uri_not_supported" and "code" not in back
    assert _codes(app) == 0


def _key_app(app):
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    registered = register(app, name="Signed", auth_method="private_key_jwt",
                          jwks={"keys": [key.as_dict(private=False)]})
    return key, registered


def _assertion(key, client_id: str, audience: str) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"alg": "RS256", "kid": key.kid},
                       {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
                        "exp": now + 60, "jti": generate_token(16)}, key)
    return {"client_id": client_id, "client_assertion": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}


def _request_object(key, client_id: str, base: str, verifier: str, **extra) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": key.kid},
                      {"iss": client_id, "aud": base, "client_id": client_id, "iat": now,
                       "exp": now + 300, **_request(verifier), **extra}, key)


def test_pushed_request_object_with_private_key_jwt(app, op):
    key, registered = _key_app(app)
    verifier = generate_token(48)
    obj = _request_object(key, registered.client_id, op, verifier, state="object-state")
    pushed = http.post(op + "/oauth/par", data={
        **_assertion(key, registered.client_id, op), "request": obj,
        "state": "ignored-form-state"})
    assert pushed.status_code == 201, pushed.text
    browser = browser_login(op, "alice@acme.test")
    page = browser.get(op + "/oauth/authorize?" + urlencode({
        "client_id": registered.client_id, "request_uri": pushed.json()["request_uri"]}),
        allow_redirects=False)
    back = callback_params(consent(op, browser, page))
    assert back["state"] == "object-state"
    token = http.post(op + "/oauth/token", data={
        **_assertion(key, registered.client_id, op + "/oauth/token"),
        "grant_type": "authorization_code", "code": back["code"], "redirect_uri": REDIRECT,
        "code_verifier": verifier})
    assert token.status_code == 200, token.text

    forged = _request_object(RSAKey.generate_key(2048, parameters={"kid": "k1"}),
                             registered.client_id, op, verifier)
    refused = http.post(op + "/oauth/par", data={
        **_assertion(key, registered.client_id, op), "request": forged})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request_object"


def test_request_object_posted_to_the_authorization_endpoint(app, op):
    key, registered = _key_app(app)
    verifier = generate_token(48)
    # Long enough that it would not fit a URL comfortably.
    obj = _request_object(key, registered.client_id, op, verifier, state="posted-state",
                          padding="x" * 6000)
    browser = browser_login(op, "alice@acme.test")
    # The app's page posts the form: no CSRF token of Trellis's, and that is fine.
    page = browser.post(op + "/oauth/authorize", data={
        "client_id": registered.client_id, "response_type": "code", "request": obj},
        allow_redirects=False)
    assert page.status_code == 200, page.text[:500]
    action = re.search(r'action="(/oauth/authorize[^"]*)"', page.text).group(1)
    assert "request=" in action  # the consent form carries the object on
    back = callback_params(consent(op, browser, page))
    assert back["state"] == "posted-state" and back["iss"] == op
    token = http.post(op + "/oauth/token", data={
        **_assertion(key, registered.client_id, op + "/oauth/token"),
        "grant_type": "authorization_code", "code": back["code"], "redirect_uri": REDIRECT,
        "code_verifier": verifier})
    assert token.status_code == 200, token.text

    # A badly signed posted object is refused to the app like one in the query.
    forged = _request_object(RSAKey.generate_key(2048, parameters={"kid": "k1"}),
                             registered.client_id, op, verifier)
    back = callback_params(browser.post(op + "/oauth/authorize", data={
        "client_id": registered.client_id, "response_type": "code", "request": forged,
        "redirect_uri": REDIRECT, "state": "s"}, allow_redirects=False))
    assert back["error"] == "invalid_request_object" and "code" not in back


def test_posted_request_cannot_stand_in_for_the_consent_form(app, op):
    """A cross-site form that posts an authorization request with ``decision=allow`` gets
    the consent page, never a code; the real consent form still needs its CSRF token."""
    registered = register(app)
    verifier = generate_token(48)
    browser = browser_login(op, "alice@acme.test")
    params = {"client_id": registered.client_id, **_request(verifier)}
    page = browser.post(op + "/oauth/authorize", data={**params, "decision": "allow"},
                        allow_redirects=False)
    assert page.status_code == 200 and "Allow" in page.text
    forged = browser.post(op + "/oauth/authorize?" + urlencode(params),
                          data={"decision": "allow"}, allow_redirects=False)
    assert forged.status_code == 400 and "Location" not in forged.headers
    assert _codes(app) == 0
