"""Request objects (OpenID Connect Core 6.1): an app signs its authorization request with a
key of its registered JWK set; the object's parameters override the query's. Unsigned,
badly signed, expired and foreign objects are refused to the app, audited, and nothing is
issued."""

from __future__ import annotations

import html
import re
import time
from urllib.parse import urlencode

import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from tests.conftest import PASSWORD, audit_events
from tests.integration.provider_helpers import (
    CSRF,
    REDIRECT,
    browser_login,
    callback_params,
    consent,
    http,
    register,
)


def _signed_app(app, key):
    return register(app, name="Signed requests", auth_method="private_key_jwt",
                    jwks={"keys": [key.as_dict(private=False)]})


def _object(key, client_id: str, base: str, alg: str = "RS256", **claims) -> tuple[str, dict]:
    now = int(time.time())
    verifier = generate_token(48)
    body = {"iss": client_id, "aud": base, "client_id": client_id, "iat": now,
            "exp": now + 300, "response_type": "code", "redirect_uri": REDIRECT,
            "scope": "openid org roles", "state": "signed-state", "nonce": "signed-nonce",
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key), {"verifier": verifier}


def _url(base: str, client_id: str, request_object: str, **query) -> str:
    params = {"client_id": client_id, "response_type": "code", "request": request_object,
              **query}
    return base + "/oauth/authorize?" + urlencode(params)


def _redeem(base: str, key, client_id: str, code: str, verifier: str) -> dict:
    now = int(time.time())
    assertion = jwt.encode({"alg": "RS256" if isinstance(key, RSAKey) else "ES256",
                            "kid": key.kid},
                           {"iss": client_id, "sub": client_id, "aud": base + "/oauth/token",
                            "iat": now, "exp": now + 60, "jti": generate_token(16)}, key)
    answer = http.post(base + "/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier, "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_signed_request_object_overrides_the_query(app, op, alg):
    key = (RSAKey.generate_key(2048, parameters={"kid": "r1"}) if alg == "RS256"
           else ECKey.generate_key("P-256", parameters={"kid": "e1"}))
    registered = _signed_app(app, key)
    assert "RS256" in http.get(op + "/.well-known/openid-configuration").json()[
        "request_object_signing_alg_values_supported"]
    obj, extra = _object(key, registered.client_id, op, alg=alg)
    browser = browser_login(op, "alice@acme.test")
    # The query says scope=openid and another state; the object's values win.
    response = browser.get(_url(op, registered.client_id, obj, scope="openid",
                                state="query-state", redirect_uri=REDIRECT),
                           allow_redirects=False)
    assert response.status_code == 200  # the consent page
    back = callback_params(consent(op, browser, response))
    assert back["state"] == "signed-state" and back["iss"] == op
    token = _redeem(op, key, registered.client_id, back["code"], extra["verifier"])
    assert token["scope"] == "openid org roles"
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["nonce"] == "signed-nonce" and claims["org"]["slug"] == "acme"
    assert "member" in claims["roles"]


def _refused(app, op, url: str, check: str) -> dict:
    browser = browser_login(op, "alice@acme.test")
    back = callback_params(browser.get(url, allow_redirects=False))
    assert back["error"] == "invalid_request_object" and "code" not in back
    assert back["state"] == "query-state" and back["iss"] == op
    [event] = [e for e in audit_events(app, "oauth.authorize")
               if e.reason == f"request_object_{check}"]
    assert event.outcome == "failure"
    return back


def test_badly_signed_expired_unsigned_and_foreign_objects_are_refused(app, op):
    key = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    registered = _signed_app(app, key)
    cid = registered.client_id
    stranger = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    forged, _ = _object(stranger, cid, op)
    back = _refused(app, op, _url(op, cid, forged, state="query-state",
                                  redirect_uri=REDIRECT), "bad_signature")
    assert "signature" in back["error_description"]

    expired, _ = _object(key, cid, op, exp=int(time.time()) - 120)
    back = _refused(app, op, _url(op, cid, expired, state="query-state",
                                  redirect_uri=REDIRECT), "expired")
    assert "expired" in back["error_description"]

    signed, _ = _object(key, cid, op)
    unsigned = "eyJhbGciOiJub25lIn0." + signed.split(".")[1] + "."  # {"alg":"none"}
    _refused(app, op, _url(op, cid, unsigned, state="query-state", redirect_uri=REDIRECT),
             "unsigned")

    no_exp, _ = _object(key, cid, op, exp=None)
    _refused(app, op, _url(op, cid, no_exp, state="query-state", redirect_uri=REDIRECT),
             "claims")
    other = register(app, name="Other", auth_method="private_key_jwt",
                     jwks={"keys": [key.as_dict(private=False)]})
    theirs, _ = _object(key, other.client_id, op)
    _refused(app, op, _url(op, cid, theirs, state="query-state", redirect_uri=REDIRECT),
             "client_id")
    elsewhere, _ = _object(key, cid, op, aud="https://other-op.example")
    _refused(app, op, _url(op, cid, elsewhere, state="query-state", redirect_uri=REDIRECT),
             "audience")
    # An app without a JWK set cannot use request objects at all.
    plain = register(app, name="Secret app")
    obj, _ = _object(key, plain.client_id, op)
    _refused(app, op, _url(op, plain.client_id, obj, state="query-state",
                           redirect_uri=REDIRECT), "no_keys")


def test_refusal_without_a_registered_redirect_is_shown_on_trellis(app, op):
    key = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    registered = _signed_app(app, key)
    forged, _ = _object(RSAKey.generate_key(2048, parameters={"kid": "r1"}),
                        registered.client_id, op)
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(_url(op, registered.client_id, forged), allow_redirects=False)
    assert response.status_code == 400 and "Location" not in response.headers


def test_prompt_login_in_the_object_signs_in_once_and_comes_back(app, op):
    key = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    registered = _signed_app(app, key)
    obj, extra = _object(key, registered.client_id, op, prompt="login")
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(_url(op, registered.client_id, obj), allow_redirects=False)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    page = browser.get(op + response.headers["Location"] if response.headers[
        "Location"].startswith("/") else response.headers["Location"])
    found = re.search(r'name="next"[^>]*?value="([^"]*)"', page.text)
    assert found, (page.url, page.status_code, page.text[:1500])
    next_url = html.unescape(found.group(1))
    assert "request=" in next_url and "reauth=" in next_url
    signed_in = browser.post(page.url, data={
        "email": "alice@acme.test", "password": PASSWORD, "next": next_url,
        "csrf_token": CSRF.search(page.text).group(1)}, allow_redirects=False)
    assert signed_in.status_code == 302
    back_at = browser.get(op + signed_in.headers["Location"], allow_redirects=False)
    back = callback_params(consent(op, browser, back_at))
    assert back["state"] == "signed-state"
    assert _redeem(op, key, registered.client_id, back["code"], extra["verifier"])["id_token"]
    # A forged marker does not skip the sign-in.
    forged = browser.get(_url(op, registered.client_id, obj, reauth="forged"),
                         allow_redirects=False)
    assert forged.status_code == 302 and "/login" in forged.headers["Location"]

