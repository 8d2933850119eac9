"""The OpenID Provider peer works, driven from Python without Trellis: a real code + PKCE flow
with authlib, the ID token verified with joserfc, and every misbehaviour really bad in the way
its name says (so Trellis tests that refuse it refuse the right thing)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from html import unescape
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet, RSAKey
from joserfc.jwt import JWTClaimsRegistry

from tests.peers import oidc_provider as peer_module
from tests.peers.oidc_provider import (
    DISCOVERY_MISBEHAVIOURS,
    MISBEHAVIOURS,
    OTHER_CLIENT,
    WRONG_ISSUER,
    OidcProviderPeer,
    start_peer,
)

REDIRECT = "http://127.0.0.1:9/peer-test/callback"  # nothing listens: we stop at the redirect
SCOPE = "openid email profile groups"


@dataclass
class SignIn:
    client_id: str
    nonce: str
    response: dict[str, str]  # the authorization response's query
    token: dict
    oauth: OAuth2Session

    @property
    def id_token(self) -> str:
        return self.token["id_token"]


@pytest.fixture(scope="module")
def client(oidc_provider) -> tuple[str, str]:
    return oidc_provider.register_client(REDIRECT, client_id=f"peer-test-{secrets.token_hex(4)}",
                                         client_secret="peer-test-secret")


@pytest.fixture(scope="module")
def jane(oidc_provider) -> dict:
    return oidc_provider.put_account(
        "jane@acme.test", name="Jane Doe", given_name="Jane", family_name="Doe",
        groups=["purchasing", "it-admins"], amr=["pwd", "otp"], acr="urn:acme:mfa")


def sign_in(peer: OidcProviderPeer, client: tuple[str, str], login: str | None = None, *,
            misbehave: str | None = None, timeout: float = 5, **params) -> SignIn:
    client_id, secret = client
    meta = peer.discovery()
    oauth = OAuth2Session(client_id, secret, scope=SCOPE, redirect_uri=REDIRECT,
                          code_challenge_method="S256",
                          token_endpoint_auth_method="client_secret_basic")
    verifier, nonce = generate_token(48), generate_token(16)
    if login:
        params["login_hint"] = login
    url, state = oauth.create_authorization_url(meta["authorization_endpoint"],
                                                code_verifier=verifier, nonce=nonce, **params)
    callback = peer.authorize(url, REDIRECT, misbehave=misbehave)
    response = dict(parse_qsl(urlsplit(callback).query))
    assert response["state"] == state
    token = oauth.fetch_token(meta["token_endpoint"], authorization_response=callback,
                              code_verifier=verifier, state=state, timeout=timeout)
    return SignIn(client_id, nonce, response, token, oauth)


def verify(peer: OidcProviderPeer, id_token: str, client_id: str, nonce: str) -> dict:
    """What a careful relying party does: pinned RS256 against the JWKS, iss, aud, nonce."""
    token = jwt.decode(id_token, KeySet.import_key_set(peer.jwks()), algorithms=["RS256"])
    JWTClaimsRegistry(
        iss={"essential": True, "value": peer.issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    ).validate(token.claims)
    return token.claims


def signature_ok(peer: OidcProviderPeer, id_token: str) -> dict:
    """Signature only (the claims may be bad on purpose)."""
    return jwt.decode(id_token, KeySet.import_key_set(peer.jwks()), algorithms=["RS256"]).claims


def parts(id_token: str) -> tuple[dict, dict, bytes]:
    """Header, claims and signature, unverified."""
    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    header, payload, signature = id_token.split(".")
    return json.loads(decode(header)), json.loads(decode(payload)), decode(signature)


# --- the well-behaved provider


def test_discovery_advertises_pkce_s256_and_iss_in_responses(oidc_provider):
    meta = oidc_provider.discovery()
    assert meta["issuer"] == oidc_provider.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]


def test_code_flow_with_pkce_gives_a_verifiable_id_token(oidc_provider, client, jane):
    started = time.perf_counter()
    flow = sign_in(oidc_provider, client, "jane@acme.test")
    elapsed = time.perf_counter() - started
    assert flow.response["iss"] == oidc_provider.issuer  # RFC 9207
    claims = verify(oidc_provider, flow.id_token, client[0], flow.nonce)
    assert claims["sub"] == jane["sub"]
    assert (claims["email"], claims["email_verified"]) == ("jane@acme.test", True)
    assert (claims["name"], claims["given_name"], claims["family_name"]) == (
        "Jane Doe", "Jane", "Doe")
    assert claims["groups"] == ["purchasing", "it-admins"]
    assert (claims["amr"], claims["acr"]) == (["pwd", "otp"], "urn:acme:mfa")
    assert parts(flow.id_token)[0]["kid"] in {k["kid"] for k in oidc_provider.jwks()["keys"]}
    userinfo = flow.oauth.get(oidc_provider.discovery()["userinfo_endpoint"], timeout=5).json()
    assert userinfo["sub"] == claims["sub"] and userinfo["groups"] == claims["groups"]
    assert elapsed < 2


def test_login_hint_chooses_the_account(oidc_provider, client):
    one = oidc_provider.put_account("one@acme.test", name="One")
    two = oidc_provider.put_account("two@beta.test", name="Two")
    first = verify(oidc_provider, (flow := sign_in(oidc_provider, client, "one@acme.test"))
                   .id_token, client[0], flow.nonce)
    second = verify(oidc_provider, (flow := sign_in(oidc_provider, client, "TWO@beta.test"))
                    .id_token, client[0], flow.nonce)
    assert (first["sub"], first["name"]) == (one["sub"], "One")
    assert (second["sub"], second["email"]) == (two["sub"], "two@beta.test")
    # An update keeps the sub and replaces the claims.
    updated = oidc_provider.put_account("one@acme.test", name="Uno", email_verified=False)
    assert updated["sub"] == one["sub"] and updated["email_verified"] is False


def test_unknown_login_hint_is_denied(oidc_provider, client):
    oauth = OAuth2Session(client[0], client[1], scope=SCOPE, redirect_uri=REDIRECT,
                          code_challenge_method="S256")
    url, _ = oauth.create_authorization_url(oidc_provider.discovery()["authorization_endpoint"],
                                            code_verifier=generate_token(48),
                                            login_hint="nobody@acme.test")
    query = dict(parse_qsl(urlsplit(oidc_provider.authorize(url, REDIRECT)).query))
    assert query["error"] == "access_denied" and "code" not in query


def test_pkce_is_required_even_for_confidential_clients(oidc_provider, client, jane):
    oauth = OAuth2Session(client[0], client[1], scope=SCOPE, redirect_uri=REDIRECT)
    url, _ = oauth.create_authorization_url(oidc_provider.discovery()["authorization_endpoint"],
                                            login_hint="jane@acme.test")
    query = dict(parse_qsl(urlsplit(oidc_provider.authorize(url, REDIRECT)).query))
    assert query["error"] == "invalid_request" and "PKCE" in query["error_description"]


def test_admin_api_needs_the_token(oidc_provider):
    url = f"{oidc_provider.issuer}/_test/accounts"
    assert requests.post(url, json={"email": "x@acme.test"}, timeout=5).status_code == 401
    wrong = requests.post(url, json={"email": "x@acme.test"}, timeout=5,
                          headers={"Authorization": "Bearer " + "0" * 32})
    assert wrong.status_code == 401
    with pytest.raises(ValueError, match="unknown misbehaviour"):
        oidc_provider.register_client(REDIRECT, misbehave=["bogus"])
    with pytest.raises(ValueError, match="at most one"):
        oidc_provider.put_account("x@acme.test", misbehave=["alg-none", "foreign-key"])
    # The provider knows every mode listed here (one signing mode at a time).
    others = [m for m in MISBEHAVIOURS if m not in ("alg-none", "hs256-pubkey", "foreign-key")]
    oidc_provider.set_misbehaviour(*others, client_id="never-registered")


# --- misbehaviour, one per authorization request


def check_wrong_iss(peer, flow):
    assert signature_ok(peer, flow.id_token)["iss"] == WRONG_ISSUER
    with pytest.raises(InvalidClaimError, match="iss"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_wrong_aud(peer, flow):
    assert signature_ok(peer, flow.id_token)["aud"] == OTHER_CLIENT
    with pytest.raises(InvalidClaimError, match="aud"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_expired(peer, flow):
    assert signature_ok(peer, flow.id_token)["exp"] < time.time() - 3000
    with pytest.raises(ExpiredTokenError):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_future_iat(peer, flow):
    assert signature_ok(peer, flow.id_token)["iat"] > time.time() + 3000
    with pytest.raises(InvalidClaimError, match="future"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_alg_none(peer, flow):
    header, claims, signature = parts(flow.id_token)
    assert header["alg"] == "none" and signature == b"" and flow.id_token.endswith(".")
    assert claims["nonce"] == flow.nonce  # otherwise a perfectly good token
    with pytest.raises(JoseError):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_hs256_pubkey(peer, flow):
    header, _, signature = parts(flow.id_token)
    assert header["alg"] == "HS256"
    (published,) = peer.jwks()["keys"]
    pem = RSAKey.import_key(published).as_pem(private=False)
    signing_input = flow.id_token.rsplit(".", 1)[0].encode()
    assert hmac.compare_digest(hmac.new(pem, signing_input, hashlib.sha256).digest(), signature)
    with pytest.raises(JoseError):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_foreign_key(peer, flow):
    header, _, _ = parts(flow.id_token)
    assert header["alg"] == "RS256"
    assert header["kid"] in {k["kid"] for k in peer.jwks()["keys"]}
    with pytest.raises(BadSignatureError):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_unknown_kid(peer, flow):
    header, _, _ = parts(flow.id_token)
    assert header["kid"] not in {k["kid"] for k in peer.jwks()["keys"]}
    with pytest.raises(JoseError):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)
    (published,) = peer.jwks()["keys"]  # the published key did sign it: only the kid is off
    jwt.decode(flow.id_token, RSAKey.import_key(published), algorithms=["RS256"])


def check_nonce_mismatch(peer, flow):
    assert signature_ok(peer, flow.id_token)["nonce"] != flow.nonce
    with pytest.raises(InvalidClaimError, match="nonce"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_missing_sub(peer, flow):
    assert "sub" not in signature_ok(peer, flow.id_token)
    with pytest.raises(MissingClaimError, match="sub"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_other_client(peer, flow):
    claims = signature_ok(peer, flow.id_token)
    assert (claims["aud"], claims["azp"]) == (OTHER_CLIENT, OTHER_CLIENT)
    with pytest.raises(InvalidClaimError, match="aud"):
        verify(peer, flow.id_token, flow.client_id, flow.nonce)


def check_azp_other(peer, flow):
    # Passes an aud-only check: only a relying party that looks at azp refuses it.
    claims = verify(peer, flow.id_token, flow.client_id, flow.nonce)
    assert claims["aud"] == [flow.client_id, OTHER_CLIENT] and claims["azp"] == OTHER_CLIENT


def check_userinfo_sub(peer, flow):
    claims = verify(peer, flow.id_token, flow.client_id, flow.nonce)
    userinfo = flow.oauth.get(peer.discovery()["userinfo_endpoint"], timeout=5).json()
    assert userinfo["sub"] and userinfo["sub"] != claims["sub"]


def check_mix_up(peer, flow):
    assert flow.response["iss"] == WRONG_ISSUER != peer.issuer
    verify(peer, flow.id_token, flow.client_id, flow.nonce)  # only the response's iss is off


CHECKS = {name.removeprefix("check_").replace("_", "-"): check
          for name, check in globals().items() if name.startswith("check_")}


def test_every_misbehaviour_is_checked_here():
    assert set(CHECKS) | {"slow-token"} == set(MISBEHAVIOURS)


@pytest.mark.parametrize("mode", sorted(CHECKS))
def test_misbehaviour_per_request(oidc_provider, client, jane, mode):
    flow = sign_in(oidc_provider, client, "jane@acme.test", misbehave=mode)
    CHECKS[mode](oidc_provider, flow)
    # The next sign-in of the same client and account behaves again.
    good = sign_in(oidc_provider, client, "jane@acme.test")
    assert good.response["iss"] == oidc_provider.issuer
    verify(oidc_provider, good.id_token, client[0], good.nonce)


def test_slow_token_endpoint(oidc_provider, client, jane):
    with pytest.raises(requests.ReadTimeout):
        sign_in(oidc_provider, client, "jane@acme.test", misbehave="slow-token=1", timeout=0.3)
    started = time.perf_counter()
    flow = sign_in(oidc_provider, client, "jane@acme.test", misbehave="slow-token=1")
    assert time.perf_counter() - started >= 1
    verify(oidc_provider, flow.id_token, client[0], flow.nonce)


def test_misbehaviour_per_client_and_combined_with_the_request(oidc_provider, jane):
    bad = oidc_provider.register_client(REDIRECT, misbehave=["expired"])
    check_expired(oidc_provider, sign_in(oidc_provider, bad, "jane@acme.test"))
    both = sign_in(oidc_provider, bad, "jane@acme.test", misbehave="alg-none")
    header, claims, _ = parts(both.id_token)
    assert header["alg"] == "none" and claims["exp"] < time.time()
    oidc_provider.set_misbehaviour(client_id=bad[0])
    flow = sign_in(oidc_provider, bad, "jane@acme.test")
    verify(oidc_provider, flow.id_token, bad[0], flow.nonce)


def test_misbehaviour_per_account(oidc_provider, client):
    oidc_provider.put_account("mallory@acme.test", misbehave=["mix-up", "userinfo-sub"])
    flow = sign_in(oidc_provider, client, "mallory@acme.test")
    check_mix_up(oidc_provider, flow)
    check_userinfo_sub(oidc_provider, flow)
    oidc_provider.set_misbehaviour("hs256-pubkey", account="mallory@acme.test")
    check_hs256_pubkey(oidc_provider, sign_in(oidc_provider, client, "mallory@acme.test"))


def test_unknown_misbehaviour_in_a_request_is_an_error(oidc_provider, client, jane):
    oauth = OAuth2Session(client[0], client[1], scope=SCOPE, redirect_uri=REDIRECT,
                          code_challenge_method="S256")
    url, _ = oauth.create_authorization_url(oidc_provider.discovery()["authorization_endpoint"],
                                            code_verifier=generate_token(48),
                                            login_hint="jane@acme.test")
    callback = oidc_provider.authorize(url, REDIRECT, misbehave="expird")
    query = dict(parse_qsl(urlsplit(callback).query))
    assert query["error"] == "invalid_request" and "expird" in query["error_description"]


# --- discovery misbehaviour (pseudo-issuers)


def test_discovery_pseudo_issuer_without_tricks_is_valid(oidc_provider):
    issuer = oidc_provider.rogue_issuer("slow-discovery=0")
    meta = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=5).json()
    assert meta["issuer"] == issuer
    assert meta["token_endpoint"] == oidc_provider.discovery()["token_endpoint"]


def test_discovery_that_is_not_json(oidc_provider):
    url = f"{oidc_provider.rogue_issuer('not-json')}/.well-known/openid-configuration"
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        response.json()


def test_discovery_with_the_wrong_issuer(oidc_provider):
    url = f"{oidc_provider.rogue_issuer('discovery-wrong-issuer')}/.well-known/openid-configuration"
    assert requests.get(url, timeout=5).json()["issuer"] == WRONG_ISSUER


def test_slow_discovery(oidc_provider):
    url = f"{oidc_provider.rogue_issuer('slow-discovery=1')}/.well-known/openid-configuration"
    with pytest.raises(requests.ReadTimeout):
        requests.get(url, timeout=0.3)


def test_huge_discovery_is_50_mb_of_json_without_a_length(oidc_provider):
    url = f"{oidc_provider.rogue_issuer('huge-discovery')}/.well-known/openid-configuration"
    with requests.get(url, stream=True, timeout=5) as response:
        assert "Content-Length" not in response.headers
        chunks = response.iter_content(1 << 20)
        head = next(chunks)
        assert head.startswith(b'{"issuer":')
        size = len(head) + sum(len(chunk) for chunk in chunks)
    assert size > 50 * 1024 * 1024
    # A reader that gives up early does not upset the provider.
    with requests.get(url, stream=True, timeout=5) as response:
        next(response.iter_content(1024))
    assert oidc_provider.discovery()["issuer"] == oidc_provider.issuer


def test_every_discovery_misbehaviour_is_checked_here():
    tested = {"slow-discovery", "not-json", "huge-discovery", "discovery-wrong-issuer"}
    assert tested == set(DISCOVERY_MISBEHAVIOURS)


# --- other ways to run it


def test_clients_and_accounts_from_the_config_file(tmp_path):
    peer = start_peer(
        tmp_path,
        clients=[{"client_id": "from-file", "client_secret": "file-secret",
                  "redirect_uris": [REDIRECT], "misbehave": ["wrong-aud"]}],
        accounts=[{"email": "dee@acme.test", "sub": "dee-1", "name": "Dee",
                   "groups": ["g1"]}],
        default_account="dee@acme.test")
    try:
        client = ("from-file", "file-secret")
        flow = sign_in(peer, client)  # no login_hint: the default account
        check_wrong_aud(peer, flow)
        assert signature_ok(peer, flow.id_token)["sub"] == "dee-1"
        peer.set_misbehaviour(client_id="from-file")
        flow = sign_in(peer, client, "dee@acme.test")
        assert verify(peer, flow.id_token, "from-file", flow.nonce)["groups"] == ["g1"]
    finally:
        peer.stop()
    assert peer.process.returncode is not None


def test_interactive_mode_shows_the_stock_forms(interactive_oidc_provider):
    peer = interactive_oidc_provider
    client = peer.register_client(REDIRECT)
    peer.put_account("ui@acme.test", name="Ui")
    meta = peer.discovery()
    oauth = OAuth2Session(client[0], client[1], scope="openid email profile",
                          redirect_uri=REDIRECT, code_challenge_method="S256")
    verifier, nonce = generate_token(48), generate_token(16)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"],
                                            code_verifier=verifier, nonce=nonce)
    browser = requests.Session()
    fields = {"login": "ui@acme.test", "password": "anything"}
    for _ in range(12):
        if url.startswith(REDIRECT):
            break
        response = browser.get(url, allow_redirects=False, timeout=5)
        if response.status_code == 200:  # a form: fill it in and submit it
            form = re.search(r'<form[^>]*action="([^"]+)"', response.text)
            assert form, response.text[:500]
            inputs = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"',
                                     response.text))
            response = browser.post(urljoin(url, unescape(form.group(1))),
                                    data={**inputs, **fields}, allow_redirects=False, timeout=5)
            fields = {}
        url = urljoin(url, response.headers["Location"])
    token = oauth.fetch_token(meta["token_endpoint"], authorization_response=url,
                              code_verifier=verifier)
    claims = verify(peer, token["id_token"], client[0], nonce)
    assert claims["email"] == "ui@acme.test" and claims["name"] == "Ui"


def test_missing_node_modules_says_to_run_make_test(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_module, "HERE", tmp_path)
    with pytest.raises(RuntimeError, match="make test"):
        OidcProviderPeer(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="make test"):
        start_peer(tmp_path)
