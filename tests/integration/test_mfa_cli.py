"""Operators' MFA commands: an organization's policy, trusting a connection's IdP MFA, and
removing the factors of a user who lost them."""

from __future__ import annotations

import pyotp
import sqlalchemy as sa

from portal.models import RecoveryCode, TotpFactor
from portal.services import mfa, organizations, users
from tests.conftest import CLI_CTX, audit_events, services_of
from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)


def test_policy_and_reset_from_the_command_line(trellis, app, make_org, make_user):  # noqa: F811
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    assert trellis("org", "mfa-policy", "acme", "all").output == "MFA policy of acme: all\n"
    trellis("org", "mfa-policy", "acme", "sometimes", expect=2)
    services = services_of(app)
    with services.db.transaction() as session:
        assert organizations.get(session, "acme").mfa_policy.value == "all"
        user = users.get_by_email(session, "alice@acme.test")
        secret = mfa.begin_totp(session, services.secrets, user).secret
        mfa.confirm_totp(session, CLI_CTX, services.secrets, services.passwords, user,
                         pyotp.TOTP(secret).now())
    output = trellis("user", "mfa-reset", "alice@acme.test", "--reason", "lost phone").output
    assert output == "alice@acme.test: removed 1 second factor(s) and the recovery codes\n"
    with services.db.sessions() as session:
        assert session.scalar(sa.select(TotpFactor)) is None
        assert session.scalar(sa.select(RecoveryCode)) is None
    [event] = audit_events(app, "mfa.reset")
    assert (event.actor.startswith("cli:"), event.reason) == (True, "lost phone")


def test_trusting_a_connection_from_the_command_line(trellis, app, make_org):  # noqa: F811
    from portal.services import connections
    make_org("acme", "Acme Supplies")
    with services_of(app).db.transaction() as session:
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug="acme", name="Acme SSO",
            client_id="c", client_secret="s", issuer="https://idp.acme.test")
        connection_id = row.id
    output = trellis("connection", "trust-idp-mfa", str(connection_id), "on").output
    assert "multi-factor is trusted" in output
    with services_of(app).db.sessions() as session:
        assert connections.get(session, connection_id).settings["trust_idp_mfa"] is True
