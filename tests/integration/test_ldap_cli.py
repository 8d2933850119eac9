"""`trellis connection create-ldap` and `set-bind-password`."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner
from flask.cli import ScriptInfo

from portal.cli import main
from portal.models import Connection
from tests.conftest import audit_events, services_of

BASE = ["connection", "create-ldap", "acme", "--name", "Acme directory",
        "--bind-dn", "cn=svc,dc=acme", "--bind-password-stdin",
        "--user-base", "ou=people,dc=acme"]


def run(app, args, stdin=""):
    return CliRunner().invoke(main, args, input=stdin, obj=ScriptInfo(create_app=lambda: app))


def test_create_ldap_seals_the_password_and_keeps_settings(app, tx, make_org, tmp_path):
    make_org("acme")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    result = run(app, [*BASE, "--directory", "ad", "--url", "ldaps://dc1.acme.test",
                       "--url", "ldaps://dc2.acme.test", "--ca-cert", str(ca),
                       "--group-role", "Purchasing=buyer",
                       "--attribute", "email=userPrincipalName"],
                 "s3rvice pass\n")
    assert result.exit_code == 0, result.output
    assert "disabled until you enable it" in result.output
    with tx() as session:
        row = session.scalar(sa.select(Connection))
        assert row.protocol.value == "ldap" and not row.enabled
        assert row.settings["urls"] == ["ldaps://dc1.acme.test", "ldaps://dc2.acme.test"]
        assert row.settings["attributes"]["subject"] == "objectGUID"
        assert row.settings["attributes"]["email"] == "userPrincipalName"
        assert row.settings["nested_groups"] == "ad" and "BEGIN CERTIFICATE" in \
            row.settings["ca_cert_pem"]
        assert "s3rvice pass" not in row.sealed_secrets
        assert services_of(app).secrets.open(row.sealed_secrets) == \
            {"bind_password": "s3rvice pass"}
    event = audit_events(app, "connection.create")[-1]
    assert "s3rvice" not in str(event.details) and event.details["insecure"] is False
    assert run(app, ["connection", "set-bind-password", str(row.id), "--bind-password-stdin"],
               "new pass\n").exit_code == 0
    with tx() as session:
        row = session.get(Connection, row.id)
        assert services_of(app).secrets.open(row.sealed_secrets)["bind_password"] == "new pass"


def test_plain_ldap_needs_explicit_permission_and_is_flagged(app, tx, make_org):
    make_org("acme")
    refused = run(app, [*BASE, "--url", "ldap://ldap.acme.test", "--no-starttls"], "pw\n")
    assert refused.exit_code == 1 and "Plain LDAP" in refused.output
    allowed = run(app, [*BASE, "--url", "ldap://ldap.acme.test", "--no-starttls",
                        "--allow-plain"], "pw\n")
    assert allowed.exit_code == 0 and "warning: plain LDAP" in allowed.output
    assert audit_events(app, "connection.create")[-1].details["insecure"] is True


def test_bad_ldap_settings_are_named(app, make_org):
    make_org("acme")
    assert "not an ldap:// or ldaps:// URL" in run(app, [*BASE, "--url", "http://x"],
                                                   "pw\n").output
    assert "password" in run(app, [*BASE, "--url", "ldaps://x"], "\n").output
    assert "in parentheses" in run(app, [*BASE, "--url", "ldaps://x", "--user-filter",
                                         "uid=*"], "pw\n").output
    assert "cannot map" in run(app, [*BASE, "--url", "ldaps://x", "--attribute",
                                     "shoe=size"], "pw\n").output
