"""``acr_values``, an essential ``acr`` claim and ``max_age``: the ID token's ``acr`` always
says what the session really reached; an essential level the session cannot reach is refused
with ``unmet_authentication_requirements``; when a step-up page is installed, the user is
sent through it once; a sign-in older than ``max_age`` is redone."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Blueprint, redirect, request, session
from joserfc import jwt
from joserfc.jwk import KeySet

from portal.permissions import signed_in
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
    assert config["acr_values_supported"] == [LOA1, LOA2]
    assert config["claims_parameter_supported"] is True


# -- with a step-up page installed (as a second factor will provide) -----------------------

@pytest.fixture
def step_up(app):
    """A stand-in for the second-factor page: it raises the session's level when told to
    (``app.config["STEP_UP_WORKS"]``) and sends the user back to ``next``."""
    bp = Blueprint("mfa", __name__)
    visits = []

    @bp.get("/mfa/step-up")
    @signed_in
    def step_up():
        visits.append(request.args["next"])
        if app.config.get("STEP_UP_WORKS"):
            session["assurance"], session["amr"] = 2, ["pwd", "otp"]
        return redirect(request.args["next"])

    app.register_blueprint(bp)
    return visits


def _follow(browser, response, base: str):
    """Follow Trellis's own redirects until one leaves for the app."""
    while response.status_code in (302, 303) and \
            response.headers["Location"].startswith(("/", base)):
        location = response.headers["Location"]
        response = browser.get(location if location.startswith("http") else base + location,
                               allow_redirects=False)
    return response


def test_step_up_raises_the_level_and_acr_reports_it(app, step_up, op):
    app.config["STEP_UP_WORKS"] = True
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    client, response, verifier, _ = _sign_in_for(op, registered, browser, acr_values=LOA2)
    assert urlsplit(response.headers["Location"]).path == "/mfa/step-up"
    response = _follow(browser, response, op)
    claims = _finish(op, client, response, verifier)
    assert claims["acr"] == LOA2 and claims["amr"] == ["pwd", "otp"]
    assert len(step_up) == 1
    assert parse_qs(urlsplit(step_up[0]).query)["acr_values"] == [LOA2]


def test_failed_step_up_is_refused_once_without_a_loop(app, step_up, op):
    app.config["STEP_UP_WORKS"] = False
    registered = register(app, consent_required=False)
    browser = browser_login(op, "alice@acme.test")
    _, response, _, _ = _sign_in_for(op, registered, browser, claims=_essential(LOA2))
    response = _follow(browser, response, op)
    assert callback_params(response)["error"] == "unmet_authentication_requirements"
    assert len(step_up) == 1
    # prompt=none cannot step up: the app is told interaction is required.
    _, response, _, _ = _sign_in_for(op, registered, browser, acr_values=LOA2, prompt="none")
    assert callback_params(response)["error"] == "interaction_required"


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
