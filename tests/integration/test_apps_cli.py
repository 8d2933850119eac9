"""Operators register vendor apps and rotate the provider's signing keys from the CLI."""

import json
import re

import pytest
import sqlalchemy as sa

from portal.models import OAuthApp, SigningKey
from tests.conftest import services_of
from tests.integration.provider_helpers import http
from tests.integration.test_cli import trellis  # noqa: F401  (fixture)


def test_create_list_and_rotate_a_secret(trellis, app):  # noqa: F811
    trellis("org", "create", "acme", "--name", "Acme")
    out = trellis("app", "create", "Supplier Portal", "--redirect-uri",
                  "https://supplier.example/cb", "--org", "acme").output
    client_id = re.search(r"client_id: (\S+)", out).group(1)
    secret = re.search(r"client_secret \(shown once\): (\S+)", out).group(1)
    listed = trellis("app", "list").output
    assert client_id in listed and "confidential" in listed and secret not in listed
    with services_of(app).db.sessions() as session:
        row = session.scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id))
        assert secret not in (row.secret_hash or "") and row.secret_hash  # hashed at rest
        old_hash = row.secret_hash
    rotated = trellis("app", "rotate-secret", client_id).output
    new_secret = rotated.split(": ")[1].strip()
    assert new_secret != secret
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(OAuthApp.secret_hash).where(
            OAuthApp.client_id == client_id)) != old_hash


def test_public_app_gets_no_secret(trellis):  # noqa: F811
    out = trellis("app", "create", "Mobile", "--public", "--redirect-uri",
                  "com.example.mobile:/callback").output
    assert "client_secret" not in out
    client_id = re.search(r"client_id: (\S+)", out).group(1)
    assert "error: App" in trellis("app", "rotate-secret", client_id, expect=1).stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--redirect-uri", "http://supplier.example/cb"), "must be https"),
    (("--redirect-uri", "https://supplier.example/*"), "no fragment or wildcard"),
    (("--redirect-uri", "https://a.example/cb", "--scope", "admin"), "scopes"),
    (("--redirect-uri", "https://a.example/cb", "--org", "nobody"), "no organization"),
    (("--public", "--grant", "client_credentials"), "client_credentials"),
    (("--auth-method", "private_key_jwt", "--redirect-uri", "https://a.example/cb"), "jwks"),
])
def test_bad_registrations_are_refused_with_one_line(trellis, args, message):  # noqa: F811
    result = trellis("app", "create", "Bad", *args, expect=1)
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert trellis("app", "list").output == "no apps\n"


def test_private_key_jwt_registration_refuses_private_keys(trellis, tmp_path):  # noqa: F811
    from joserfc.jwk import RSAKey
    key = RSAKey.generate_key(2048)
    leaked = tmp_path / "private.json"
    leaked.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    result = trellis("app", "create", "Leaky", "--auth-method", "private_key_jwt",
                     "--jwks-file", str(leaked), "--grant", "client_credentials",
                     "--scope", "authz", expect=1)
    assert "only RSA or EC public keys" in result.stderr
    public = tmp_path / "public.json"
    public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    out = trellis("app", "create", "Signed", "--auth-method", "private_key_jwt",
                  "--jwks-file", str(public), "--grant", "client_credentials",
                  "--scope", "authz").output
    assert "client_secret" not in out


def test_signing_key_rotation_publishes_before_use_and_keeps_the_old_key(trellis, app):  # noqa: F811
    from tests.e2e.conftest import LiveServer
    server = LiveServer(app)
    try:
        before = http.get(server.url + "/oauth/jwks").json()["keys"]
        assert len(before) == 4  # active and next of each ring, from the first request
        assert sorted(k["alg"] for k in before) == ["ES256", "ES256", "RS256", "RS256"]
        out = trellis("keys", "rotate-signing").output
        assert "RS256: signing with key" in out and "ES256: signing with key" in out
        app.extensions["trellis_oidc_keys"].clear()
        after = http.get(server.url + "/oauth/jwks").json()["keys"]
        kids_before = {k["kid"] for k in before}
        kids_after = {k["kid"] for k in after}
        assert kids_before <= kids_after and len(after) == 6  # old kept, a new next published
        # A second rotation would retire the previous key while its tokens live.
        refused = trellis("keys", "rotate-signing", expect=1).stderr
        assert "still verifies tokens until" in refused
        with services_of(app).db.sessions() as session:
            states = sorted(s.value for s in session.scalars(sa.select(SigningKey.state).where(
                SigningKey.purpose == "oidc")))
        assert states == ["active", "next", "previous"]
        # One ring can be rotated alone (with --force while its previous key lives).
        out = trellis("keys", "rotate-signing", "--alg", "ES256", "--force").output
        assert "ES256: signing with key" in out and "RS256" not in out
    finally:
        server.stop()
