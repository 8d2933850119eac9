"""A real relying party (Authlib's OAuth2Session over HTTP) signs users in through Trellis:
code + PKCE, ID token validated with the relying party's own checks, userinfo, refresh with
rotation, client credentials, introspection and revocation."""

from __future__ import annotations

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.provider_helpers import (
    browser_login,
    callback_params,
    consent,
    full_login,
    http,
    register,
    rp,
    start,
)


def validate_id_token(base: str, id_token: str, client_id: str, nonce: str) -> dict:
    """What a careful relying party does: pinned algorithm, issuer, audience, nonce."""
    config = http.get(base + "/.well-known/openid-configuration").json()
    keys = KeySet.import_key_set(http.get(config["jwks_uri"]).json())
    decoded = jwt.decode(id_token, keys, algorithms=["RS256"])
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": base},
                          aud={"essential": True, "value": client_id},
                          nonce={"essential": True, "value": nonce},
                          exp={"essential": True}).validate(decoded.claims)
    return decoded.claims


def test_code_flow_with_pkce_gives_a_valid_id_token_with_org_and_roles(app, op):
    registered = register(app)
    client, token, nonce, _ = full_login(op, registered)
    claims = validate_id_token(op, token["id_token"], registered.client_id, nonce)
    assert claims["email"] == "alice@acme.test"
    assert claims["name"] == "Alice Adams"
    assert claims["email_verified"] is True
    assert claims["org"]["slug"] == "acme"
    assert claims["roles"] == ["member"]
    assert claims["amr"] == ["pwd"] and claims["acr"] == "urn:trellis:loa:1"
    assert claims["sid"] and claims["auth_time"]
    info = client.get(op + "/oauth/userinfo").json()
    assert info["sub"] == claims["sub"] and info["org"]["slug"] == "acme"


def test_discovery_advertises_only_what_is_enforced(op):
    config = http.get(op + "/.well-known/openid-configuration").json()
    assert config["issuer"] == op
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["response_types_supported"] == ["code"]
    assert config["authorization_response_iss_parameter_supported"] is True
    assert "none" not in config["id_token_signing_alg_values_supported"]


def test_refresh_rotates_and_reuse_revokes_the_family(app, op):
    registered = register(app)
    client, token, _, _ = full_login(op, registered)
    first_refresh = token["refresh_token"]
    second = client.refresh_token(op + "/oauth/token", refresh_token=first_refresh)
    assert second["refresh_token"] != first_refresh
    # The old refresh token is replayed: refused, and the newest tokens die with it.
    replay = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                           data={"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    again = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                          data={"grant_type": "refresh_token",
                                "refresh_token": second["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"
    introspected = http.post(op + "/oauth/introspect",
                                 auth=(registered.client_id, registered.secret),
                                 data={"token": second["access_token"]}).json()
    assert introspected == {"active": False}


def test_a_reused_code_is_refused_and_revokes_what_it_issued(app, op):
    registered = register(app)
    browser = browser_login(op, "alice@acme.test")
    client = rp(op, registered)
    response, verifier, _, _ = start(op, client, browser)
    code = callback_params(consent(op, browser, response))["code"]
    token = client.fetch_token(op + "/oauth/token", code=code, code_verifier=verifier)
    reuse = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                          data={"grant_type": "authorization_code", "code": code,
                                "redirect_uri": client.redirect_uri,
                                "code_verifier": verifier})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    info = http.get(op + "/oauth/userinfo",
                        headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.status_code == 401


def test_client_credentials_token_calls_the_decision_api(app, op):
    registered = register(app, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"])
    token = http.post(op + "/oauth/token", auth=(registered.client_id, registered.secret),
                          data={"grant_type": "client_credentials", "scope": "authz"}).json()
    assert "refresh_token" not in token and "id_token" not in token
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    check = {"subject": "1", "organization": "acme", "object": "organization",
             "action": "read"}
    assert http.post(op + "/api/v1/authz/check", json=check, headers=headers
                         ).status_code == 200
    other = http.post(op + "/api/v1/authz/check", headers=headers,
                          json={**check, "organization": "globex"})
    assert other.status_code == 403
    http.post(op + "/oauth/revoke", auth=(registered.client_id, registered.secret),
                  data={"token": token["access_token"]})
    assert http.post(op + "/api/v1/authz/check", json=check, headers=headers
                         ).status_code == 401
