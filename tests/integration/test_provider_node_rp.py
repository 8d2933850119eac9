"""openid-client (npm) signs in through Trellis over HTTP: discovery, code + PKCE, its own
ID token validation, the RFC 9207 iss check, refresh, userinfo, client credentials and the
logout URL; and it notices a tampered callback."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from tests.integration.provider_helpers import REDIRECT, browser_login, consent, http, register
from tests.peers.node_rp import NodeRelyingParty


def test_openid_client_signs_in_refreshes_and_logs_out(app, op):
    registered = register(app, post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    rp = NodeRelyingParty(op, registered.client_id, registered.secret)
    started = rp.run("start", redirect_uri=REDIRECT, scope="openid email org roles")
    assert started["ok"], started
    browser = browser_login(op, "alice@acme.test")
    response = browser.get(started["url"], allow_redirects=False)
    callback = consent(op, browser, response).headers["Location"]
    finished = rp.run("finish", callback=callback, verifier=started["verifier"],
                      state=started["state"], nonce=started["nonce"])
    assert finished["ok"], finished
    claims = finished["claims"]
    assert claims["iss"] == op and claims["aud"] == registered.client_id
    assert claims["org"]["slug"] == "acme" and claims["roles"] == ["member"]
    tokens = finished["tokens"]

    info = rp.run("userinfo", access_token=tokens["access_token"], sub=claims["sub"])
    assert info["ok"] and info["userinfo"]["email"] == "alice@acme.test"
    refreshed = rp.run("refresh", refresh_token=tokens["refresh_token"])
    assert refreshed["ok"] and refreshed["tokens"]["refresh_token"] != tokens["refresh_token"]
    reused = rp.run("refresh", refresh_token=tokens["refresh_token"])
    assert not reused["ok"] and reused["cause"] == "invalid_grant"

    logout = rp.run("logout", id_token=tokens["id_token"],
                    post_logout_redirect_uri="http://127.0.0.1:9/bye", state="bye")
    out = browser.get(logout["url"], allow_redirects=False)
    assert out.headers["Location"] == "http://127.0.0.1:9/bye?state=bye"


def test_openid_client_refuses_a_callback_with_the_wrong_issuer(app, op):
    registered = register(app, consent_required=False)
    rp = NodeRelyingParty(op, registered.client_id, registered.secret)
    started = rp.run("start", redirect_uri=REDIRECT, scope="openid")
    browser = browser_login(op, "alice@acme.test")
    callback = browser.get(started["url"], allow_redirects=False).headers["Location"]
    query = parse_qs(urlsplit(callback).query)
    assert query["iss"] == [op]
    # Only the iss value differs from the real callback (a mix-up attack's answer).
    forged = REDIRECT + "?" + urlencode({**{k: v[0] for k, v in query.items()},
                                         "iss": "https://evil.example"})
    finished = rp.run("finish", callback=forged, verifier=started["verifier"],
                      state=started["state"], nonce=started["nonce"])
    assert not finished["ok"], finished


def test_openid_client_client_credentials_reach_the_decision_api(app, op):
    registered = register(app, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"])
    rp = NodeRelyingParty(op, registered.client_id, registered.secret)
    got = rp.run("client_credentials", scope="authz")
    assert got["ok"], got
    answer = http.post(op + "/api/v1/authz/check", json={
        "subject": "1", "organization": "acme", "object": "organization", "action": "read"},
        headers={"Authorization": f"Bearer {got['tokens']['access_token']}"})
    assert answer.status_code == 200


def test_openid_client_sends_a_signed_request_object(app, op):
    """openid-client's own JAR support (buildAuthorizationUrlWithJAR) and private_key_jwt:
    the query holds only client_id and request; Trellis reads everything from the object."""
    from joserfc.jwk import ECKey
    key = ECKey.generate_key("P-256", parameters={"kid": "jar-1"})
    registered = register(app, name="Signed requests", auth_method="private_key_jwt",
                          jwks={"keys": [key.as_dict(private=False)]})
    rp = NodeRelyingParty(op, registered.client_id)
    rp.base["private_jwk"] = key.as_dict(private=True)
    started = rp.run("start_jar", redirect_uri=REDIRECT, scope="openid org roles")
    assert started["ok"], started
    query = parse_qs(urlsplit(started["url"]).query)
    assert set(query) == {"client_id", "request"}
    browser = browser_login(op, "alice@acme.test")
    callback = consent(op, browser, browser.get(started["url"], allow_redirects=False))
    finished = rp.run("finish", callback=callback.headers["Location"],
                      verifier=started["verifier"], state=started["state"],
                      nonce=started["nonce"])
    assert finished["ok"], finished
    assert finished["claims"]["org"]["slug"] == "acme"
    assert finished["claims"]["nonce"] == started["nonce"]


def test_openid_client_pushes_its_authorization_request(app, op):
    """openid-client's own PAR support (buildAuthorizationUrlWithPAR): it finds the endpoint
    in discovery, pushes with its client secret, and sends the browser with the reference."""
    registered = register(app)
    rp = NodeRelyingParty(op, registered.client_id, registered.secret)
    started = rp.run("start_par", redirect_uri=REDIRECT, scope="openid org roles")
    assert started["ok"], started
    query = parse_qs(urlsplit(started["url"]).query)
    assert set(query) == {"client_id", "request_uri"}
    browser = browser_login(op, "alice@acme.test")
    callback = consent(op, browser, browser.get(started["url"], allow_redirects=False))
    finished = rp.run("finish", callback=callback.headers["Location"],
                      verifier=started["verifier"], state=started["state"],
                      nonce=started["nonce"])
    assert finished["ok"], finished
    assert finished["claims"]["nonce"] == started["nonce"]
    assert finished["claims"]["org"]["slug"] == "acme"
    # The pushed request is spent: the same URL does not give a second code.
    again = browser.get(started["url"], allow_redirects=False)
    assert again.status_code == 400 and "Location" not in again.headers
