"""ES256 ID tokens beside RS256, validated by Authlib and by openid-client with their own
code; pairwise subjects: two apps of different sectors see different ``sub`` values for the
same user, and userinfo, introspection and logout agree with each app's ID token."""

from __future__ import annotations

import base64
import warnings

from authlib.oidc.core import CodeIDToken

from tests.integration.provider_helpers import (
    REDIRECT,
    browser_login,
    consent,
    full_login,
    http,
    register,
)
from tests.peers.node_rp import NodeRelyingParty


def authlib_validate(base: str, token: dict, client_id: str, nonce: str, alg: str) -> dict:
    """Authlib's own ID token validation: signature with the pinned algorithm, iss, aud,
    nonce, expiry and at_hash."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # authlib.jose is deprecated, still Authlib's check
        from authlib.jose import JsonWebToken
        jwks = http.get(base + "/oauth/jwks").json()
        claims = JsonWebToken([alg]).decode(
            token["id_token"], jwks, claims_cls=CodeIDToken,
            claims_options={"iss": {"essential": True, "value": base},
                            "aud": {"essential": True, "value": client_id}},
            claims_params={"nonce": nonce, "client_id": client_id,
                           "access_token": token["access_token"]})
        claims.validate()
    return dict(claims)


def header_alg(jwt_text: str) -> str:
    import json
    head = jwt_text.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["alg"]


def test_jwks_publishes_rs256_and_es256_and_discovery_says_so(op):
    keys = http.get(op + "/oauth/jwks").json()["keys"]
    assert {k["alg"] for k in keys} == {"RS256", "ES256"}
    assert all("d" not in k for k in keys)
    assert {k["crv"] for k in keys if k["kty"] == "EC"} == {"P-256"}
    config = http.get(op + "/.well-known/openid-configuration").json()
    assert config["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert config["subject_types_supported"] == ["public", "pairwise"]


def test_authlib_validates_an_es256_id_token(app, op):
    registered = register(app, id_token_signed_response_alg="ES256")
    _, token, nonce, _ = full_login(op, registered)
    assert header_alg(token["id_token"]) == "ES256"
    assert header_alg(token["access_token"]) == "RS256"  # access tokens stay RS256
    claims = authlib_validate(op, token, registered.client_id, nonce, "ES256")
    assert claims["email"] == "alice@acme.test" and claims["org"]["slug"] == "acme"
    # An RS256 app next to it still gets RS256, validated the same way.
    other = register(app, name="Classic", id_token_signed_response_alg="RS256")
    _, token, nonce, _ = full_login(op, other)
    assert header_alg(token["id_token"]) == "RS256"
    authlib_validate(op, token, other.client_id, nonce, "RS256")


def test_openid_client_validates_an_es256_id_token(app, op):
    registered = register(app, id_token_signed_response_alg="ES256")
    browser = browser_login(op, "alice@acme.test")

    def sign_in(metadata):
        rp = NodeRelyingParty(op, registered.client_id, registered.secret)
        started = rp.run("start", redirect_uri=REDIRECT, scope="openid email",
                         metadata=metadata)
        response = browser.get(started["url"], allow_redirects=False)
        if response.status_code == 200:
            response = consent(op, browser, response)
        return rp.run("finish", callback=response.headers["Location"],
                      verifier=started["verifier"], state=started["state"],
                      nonce=started["nonce"], metadata=metadata)

    finished = sign_in({"id_token_signed_response_alg": "ES256"})
    assert finished["ok"], finished
    assert finished["claims"]["aud"] == registered.client_id
    assert header_alg(finished["tokens"]["id_token"]) == "ES256"
    # Told to expect RS256, it refuses the ES256 token: the signature really is ES256.
    refused = sign_in({"id_token_signed_response_alg": "RS256"})
    assert not refused["ok"] and "\"alg\"" in (refused["detail"] or ""), refused


def test_pairwise_apps_see_different_subjects_that_userinfo_agrees_with(app, op):
    first = register(app, name="Tickets", subject_type="pairwise",
                     redirect_uris=["https://tickets.example/cb", REDIRECT],
                     sector_identifier="tickets.example")
    second = register(app, name="Freight", subject_type="pairwise",
                      sector_identifier="freight.example")
    public = register(app, name="Classic")
    same_sector = register(app, name="Tickets admin", subject_type="pairwise",
                           sector_identifier="tickets.example")
    subs = {}
    for name, registered in (("first", first), ("second", second), ("public", public),
                             ("same_sector", same_sector)):
        client, token, nonce, _ = full_login(op, registered)
        claims = authlib_validate(op, token, registered.client_id, nonce, "RS256")
        info = client.get(op + "/oauth/userinfo").json()
        assert info["sub"] == claims["sub"]  # userinfo agrees with the ID token
        introspected = http.post(op + "/oauth/introspect",
                                 data={"token": token["access_token"]},
                                 auth=(registered.client_id, registered.secret)).json()
        assert introspected["active"] and introspected["sub"] == claims["sub"]
        subs[name] = claims["sub"]
    from portal.models import User
    from tests.conftest import services_of
    with services_of(app).db.sessions() as session:
        import sqlalchemy as sa
        alice = session.scalar(sa.select(User.id).where(User.email == "alice@acme.test"))
    assert subs["public"] == str(alice)
    assert subs["first"] != subs["second"]
    assert str(alice) not in (subs["first"], subs["second"])
    assert subs["same_sector"] == subs["first"]  # one sector, one sub


def test_pairwise_sector_must_be_unambiguous(app, op):
    import pytest

    from portal.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="sector_identifier"):
        register(app, name="Two hosts", subject_type="pairwise",
                 redirect_uris=["https://a.example/cb", "https://b.example/cb"])
    derived = register(app, name="One host", subject_type="pairwise",
                       redirect_uris=["https://a.example/cb", "https://a.example/cb2"])
    from portal.services import apps
    from tests.conftest import services_of
    with services_of(app).db.sessions() as session:
        assert apps.get(session, derived.client_id).sector_identifier == "a.example"


def test_logout_with_a_pairwise_es256_id_token_hint_ends_the_session(app, op):
    registered = register(app, name="Tickets", subject_type="pairwise",
                          id_token_signed_response_alg="ES256",
                          post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    _, token, _, browser = full_login(op, registered)
    assert browser.get(op + "/", allow_redirects=False).status_code == 200
    out = browser.get(op + "/oauth/logout", params={
        "id_token_hint": token["id_token"],
        "post_logout_redirect_uri": "http://127.0.0.1:9/bye"}, allow_redirects=False)
    assert out.headers["Location"] == "http://127.0.0.1:9/bye"
    assert browser.get(op + "/", allow_redirects=False).status_code == 302  # signed out
