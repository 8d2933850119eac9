"""Every way an OpenID Provider can hand us a bad answer is refused, naming the check."""

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from federation import http
from federation.errors import FederationError
from federation.identity import RequestContext
from federation.oidc import OidcAdapter, OidcSettings
from tests.peers.rogue_op import CLIENT_ID, CLIENT_SECRET

REDIRECT = "http://localhost/sso/oidc/1/callback"


@pytest.fixture
def rogue(rogue_provider):
    return rogue_provider


def settings(rogue, mode, **extra):
    options = {"algorithms": ("RS256",), **extra}
    return OidcSettings(connection_id=1, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                        issuer=rogue.issuer(mode), allow_insecure_loopback=True, **options)


def sign_in(adapter, rogue, mode, **extra):
    config = settings(rogue, mode, **extra)
    redirect = adapter.begin(config, RequestContext(redirect_uri=REDIRECT))
    location = requests.get(redirect.url, allow_redirects=False, timeout=5).headers["Location"]
    callback = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return adapter.complete(config, callback, redirect.pending_state)


def test_a_well_behaved_provider_signs_in(rogue):
    identity = sign_in(OidcAdapter(), rogue, "good")
    assert (identity.subject, identity.email, identity.email_verified) == (
        "rogue-user", "rogue@acme.test", True)


@pytest.mark.parametrize(("mode", "code"), [
    ("wrong-iss", "id_token_iss"),
    ("wrong-aud", "id_token_aud"),
    ("expired", "id_token_expired"),
    ("future-iat", "id_token_iat"),
    ("alg-none", "id_token_alg"),
    ("hs256-pubkey", "id_token_alg"),
    ("foreign-key", "id_token_signature"),
    ("unknown-kid", "id_token_kid"),
    ("nonce-mismatch", "id_token_nonce"),
    ("missing-sub", "id_token_sub"),
    ("userinfo-sub", "userinfo_sub"),
    ("other-client", "id_token_azp"),
    ("mix-up", "iss_mismatch"),
])
def test_bad_answers_are_refused(rogue, mode, code):
    with pytest.raises(FederationError) as caught:
        sign_in(OidcAdapter(), rogue, mode)
    assert caught.value.code == code, caught.value.detail


def test_algorithms_pinned_per_connection_even_if_discovery_offers_more(rogue):
    with pytest.raises(FederationError) as caught:
        sign_in(OidcAdapter(), rogue, "good", algorithms=("ES256",))
    assert caught.value.code == "id_token_alg"


def test_unknown_kid_refetches_the_key_set_at_most_once_a_minute(rogue, monkeypatch):
    adapter, fetched = OidcAdapter(), []
    real = http.fetch_json

    def counting(url, **kwargs):
        fetched.append(url)
        return real(url, **kwargs)
    monkeypatch.setattr(http, "fetch_json", counting)
    for _ in range(3):
        with pytest.raises(FederationError, match="id_token_kid"):
            sign_in(adapter, rogue, "unknown-kid")
    assert sum(url.endswith("/jwks") for url in fetched) == 1


@pytest.mark.parametrize(("mode", "code"), [
    ("not-json", "idp_bad_response"),
    ("huge", "idp_response_too_large"),
    ("wrong-issuer", "discovery_issuer"),
])
def test_bad_discovery_documents_are_refused(rogue, mode, code):
    with pytest.raises(FederationError) as caught:
        OidcAdapter().begin(settings(rogue, mode), RequestContext(redirect_uri=REDIRECT))
    assert caught.value.code == code


def test_a_slow_provider_times_out(rogue, monkeypatch):
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.5)
    with pytest.raises(FederationError) as caught:
        OidcAdapter().begin(settings(rogue, "slow"), RequestContext(redirect_uri=REDIRECT))
    assert caught.value.code == "idp_timeout" and caught.value.status == 502


def test_plain_http_is_refused_outside_loopback():
    config = OidcSettings(connection_id=1, client_id="c", client_secret="s",
                          issuer="http://idp.example.com", allow_insecure_loopback=True)
    with pytest.raises(FederationError, match="insecure_url"):
        OidcAdapter().begin(config, RequestContext(redirect_uri=REDIRECT))
