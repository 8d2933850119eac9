"""Connections from the CLI, and secrets that stay encrypted through a key rotation."""

import sqlalchemy as sa

from portal.crypto import SecretBox, generate_key
from portal.models import Connection
from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)


def test_connection_secret_is_encrypted_and_survives_rotation(trellis, tx, monkeypatch):  # noqa: F811
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("TRELLIS_ENCRYPTION_KEYS", old)
    trellis("org", "create", "acme", "--name", "Acme")
    created = trellis("connection", "create-oidc", "acme", "--name", "Acme IdP",
                      "--issuer", "https://idp.acme.test", "--client-id", "trellis",
                      "--client-secret-stdin", "--group-role", "buyers=buyer",
                      input="very secret value\n")
    assert "created connection 1 (Acme IdP), disabled until you enable it" in created.output
    with tx() as session:
        row = session.get(Connection, 1)
        sealed = row.sealed_secrets
        assert "very secret value" not in sealed and "very secret value" not in str(row.settings)
        assert row.group_roles == {"buyers": "buyer"}
    monkeypatch.setenv("TRELLIS_ENCRYPTION_KEYS", f"{new},{old}")
    assert "re-encrypted 1 secret with the current key" in trellis("keys", "rotate").output
    with tx() as session:
        rotated = session.get(Connection, 1).sealed_secrets
    assert SecretBox((new,)).open(rotated) == {"client_secret": "very secret value"}
    assert trellis("connection", "list").output == "1\tacme\toidc\tdisabled\tAcme IdP\n"
    trellis("connection", "enable", "1")
    assert "\tenabled\t" in trellis("connection", "list").output
    actions = [e.action for e in _events(tx)]
    assert actions[-3:] == ["connection.create", "keys.rotate", "connection.enable"]


def test_connection_cli_refuses_bad_input(trellis):  # noqa: F811
    trellis("org", "create", "acme", "--name", "Acme")
    both = trellis("connection", "create-oidc", "acme", "--platform", "--name", "X",
                   "--client-id", "c", "--client-secret-stdin", input="s\n", expect=1)
    assert both.stderr == "error: Name an organization or pass --platform (not both).\n"
    missing = trellis("connection", "create-oidc", "acme", "--name", "X", "--client-id", "c",
                      "--client-secret-stdin", input="s\n", expect=1)
    assert missing.stderr == "error: An OIDC connection needs the issuer URL.\n"
    assert trellis("connection", "list").output == "no connections\n"


def _events(tx):
    from portal.models import AuditEvent
    with tx() as session:
        return list(session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)))


def test_symmetric_or_none_algorithms_are_refused(app, tx, make_org):
    import pytest

    from portal.errors import ValidationError
    from portal.services import connections
    from tests.conftest import CLI_CTX, services_of
    make_org("acme")
    for algorithms in (("HS256",), ("none",), ("RS256", "HS512")):
        with pytest.raises(ValidationError, match="Only asymmetric"), tx() as session:
            connections.create_oidc(session, CLI_CTX, services_of(app).secrets,
                                    org_slug="acme", name="X", client_id="c",
                                    client_secret="s", issuer="https://idp.test",
                                    algorithms=algorithms)


def test_secret_rotation_in_place_and_claim_mapping(trellis, tx, monkeypatch):  # noqa: F811
    key = generate_key()
    monkeypatch.setenv("TRELLIS_ENCRYPTION_KEYS", key)
    trellis("org", "create", "acme", "--name", "Acme")
    trellis("connection", "create-oidc", "acme", "--name", "Acme IdP", "--issuer",
            "https://idp.acme.test", "--client-id", "trellis", "--client-secret-stdin",
            "--claim", "email=upn", "--claim", "name=displayName", input="first\n")
    bad = trellis("connection", "create-oidc", "acme", "--name", "X", "--issuer",
                  "https://idp.acme.test", "--client-id", "c", "--client-secret-stdin",
                  "--claim", "sub=oid", input="s\n", expect=1)
    assert bad.stderr == "error: --claim cannot map sub.\n"
    replaced = trellis("connection", "set-secret", "1", "--client-secret-stdin",
                       input="second\n")
    assert replaced.output == "connection 1: client secret replaced\n"
    with tx() as session:
        row = session.get(Connection, 1)
        assert row.settings["claims"] == {"email": "upn", "name": "displayName"}
        assert SecretBox((key,)).open(row.sealed_secrets) == {"client_secret": "second"}
    assert [e.action for e in _events(tx)][-1] == "connection.secret"
