"""``acr_values``, an essential ``acr`` claim and ``max_age``: the ID token's ``acr`` always
says what the session really reached; a user with a second factor is sent through step-up
once; an essential level the session still cannot reach is refused with
``unmet_authentication_requirements``; a sign-in older than ``max_age`` is redone."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import audit_events, sign_in
from tests.integration.provider_helpers import (
    REDIRECT,
    browser_login,
    callback_params,
    http,
    register,
    rp,
    start,
)

LOA1, LOA2 = "urn:trellis:loa:1", "urn:trellis:loa:2"


def _essential(*values: str) -> str:
    return json.dumps({"id_token": {"acr": {"essential": True, "values": list(values)}}})


def _id_token_claims(base: str, id_token: str) -> dict:
    keys = KeySet.import_key_set(http.get(base + "/oauth/jwks").json())
    return dict(jwt.decode(id_token, keys, algorithms=["RS256", "ES256"]).claims)


def _sign_in_for(base: str, registered, browser, **params):
    client = rp(base, registered)
    response, verifier, _, state = start(base, client, browser, **params)
    return client, response, verifier, state


def _finish(base, client, response, verifier) -> dict:
    code = callback_params(response)["code"]
    token = client.fetch_token(base + "/oauth/token", code=code, code_verifier=verifier)
    return _id_token_claims(base, token["id_token"])


def test_voluntary_acr_above_the_session_is_answered_truthfully(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    client, response, verifier, _ = _sign_in_for(op, registered, browser,
                                                 acr_values=f"{LOA2} {LOA1}")
    claims = _finish(op, client, response, verifier)
    assert claims["acr"] == LOA1 and claims["amr"] == ["pwd"]


def test_essential_acr_that_cannot_be_met_is_refused(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    _, response, _, state = _sign_in_for(op, registered, browser, claims=_essential(LOA2))
    assert response.headers["Location"].startswith(REDIRECT)
    back = callback_params(response)
    assert back["error"] == "unmet_authentication_requirements"
    assert back["state"] == state and back["iss"] == op and "code" not in back
    [event] = [e for e in audit_events(app, "oauth.authorize") if e.outcome == "failure"]
    assert event.reason == "unmet_authentication_requirements"
    # An unknown level can never be met either; a met one passes.
    _, response, _, _ = _sign_in_for(op, registered, browser,
                                     claims=_essential("urn:example:gold"))
    assert callback_params(response)["error"] == "unmet_authentication_requirements"
    client, response, verifier, _ = _sign_in_for(op, registered, browser,
                                                 claims=_essential(LOA1, LOA2))
    assert _finish(op, client, response, verifier)["acr"] == LOA1


def test_malformed_claims_parameter_is_an_invalid_request(app, op):
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    _, response, _, _ = _sign_in_for(op, registered, browser, claims="{not json")
    assert callback_params(response)["error"] == "invalid_request"


def test_discovery_lists_the_acr_values(op):
    config = http.get(op + "/.well-known/openid-configuration").json()
    assert config["acr_values_supported"] == [LOA1, LOA2, "urn:trellis:loa:3"]
    assert config["claims_parameter_supported"] is True


# -- step-up with the user's second factor ---------------------------------------------------

def _authorize_url(registered, **params) -> tuple[str, str]:
    oauth = rp("http://localhost", registered)
    verifier = "v" * 48
    url, _ = oauth.create_authorization_url("http://localhost/oauth/authorize",
                                            code_verifier=verifier, nonce="n", **params)
    return url, verifier


def _redeem(client, registered, location: str, verifier: str) -> dict:
    code = parse_qs(urlsplit(location).query)["code"][0]
    basic = base64.b64encode(f"{registered.client_id}:{registered.secret}".encode()).decode()
    token = client.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier}, headers={"Authorization": f"Basic {basic}"}).get_json()
    keys = KeySet.import_key_set(client.get("/oauth/jwks").get_json())
    return dict(jwt.decode(token["id_token"], keys, algorithms=["RS256", "ES256"]).claims)


@pytest.fixture
def alice(make_org, make_user):
    make_org("acme", "Acme Supplies")
    return make_user("alice@acme.test", org="acme")


def test_step_up_with_the_second_factor_and_acr_reports_it(app, client, alice):
    from tests.integration.test_mfa import enroll, next_code, send_code
    registered = register(app, consent_required=False)
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)  # the session itself stays at level 1
    url, verifier = _authorize_url(registered, acr_values=LOA2)
    answer = client.get(url)
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/login/step-up"
    back_to = parse_qs(location.query)["next"][0]
    assert back_to.startswith("/oauth/authorize?")
    stepped = send_code(client, next_code(secret), "/login/step-up", next=back_to)
    assert stepped.status_code == 302 and stepped.headers["Location"] == back_to
    issued = client.get(back_to)
    assert issued.headers["Location"].startswith(REDIRECT + "?code=")
    claims = _redeem(client, registered, issued.headers["Location"], verifier)
    assert claims["acr"] == LOA2 and "otp" in claims["amr"] and "mfa" in claims["amr"]


def test_abandoned_step_up_is_not_asked_again_and_essential_is_refused(app, client, alice):
    from tests.integration.test_mfa import enroll
    registered = register(app, consent_required=False)
    sign_in(client, "alice@acme.test")
    enroll(client)
    url, _ = _authorize_url(registered, claims=_essential(LOA2))
    first = client.get(url)
    assert urlsplit(first.headers["Location"]).path == "/login/step-up"
    # The user comes back without the code (cancel, back button): no second round.
    again = client.get(url)
    back = parse_qs(urlsplit(again.headers["Location"]).query)
    assert back["error"] == ["unmet_authentication_requirements"]
    # prompt=none cannot show the step-up page: the app learns interaction is required.
    url, _ = _authorize_url(registered, acr_values=LOA2, prompt="none")
    back = parse_qs(urlsplit(client.get(url).headers["Location"]).query)
    assert back["error"] == ["interaction_required"]


def test_without_a_second_factor_there_is_no_step_up_detour(app, client, alice):
    registered = register(app, consent_required=False)
    sign_in(client, "alice@acme.test")
    url, verifier = _authorize_url(registered, acr_values=LOA2)
    answer = client.get(url)
    assert answer.headers["Location"].startswith(REDIRECT + "?code=")
    assert _redeem(client, registered, answer.headers["Location"], verifier)["acr"] == LOA1
    url, _ = _authorize_url(registered, claims=_essential(LOA2), prompt="none")
    back = parse_qs(urlsplit(client.get(url).headers["Location"]).query)
    assert back["error"] == ["unmet_authentication_requirements"]


# -- max_age ---------------------------------------------------------------------------------

def test_max_age_redoes_an_old_sign_in(app, client, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    registered = register(app, consent_required=False)
    sign_in(client, "alice@acme.test")
    with client.session_transaction() as s:
        s["auth_time"] = time.time() - 7200  # signed in two hours ago
    oauth = rp("http://localhost", registered)
    url, _ = oauth.create_authorization_url("http://localhost/oauth/authorize",
                                            code_verifier="v" * 48, nonce="n", max_age=3600)
    old = client.get(url)
    assert old.status_code == 302 and urlsplit(old.headers["Location"]).path == "/login"
    url, _ = oauth.create_authorization_url("http://localhost/oauth/authorize",
                                            code_verifier="v" * 48, nonce="n", max_age=10800)
    fresh = client.get(url)
    assert fresh.status_code == 302 and "code=" in fresh.headers["Location"]
