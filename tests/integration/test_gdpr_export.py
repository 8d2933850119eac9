"""A copy of everything held about a person: from the account page and for operators."""

import json

import pytest
from click.testing import CliRunner

from portal.cli import main
from portal.models import Connection, FederatedIdentity, Protocol
from tests.conftest import audit_events, csrf_token, sign_in


@pytest.fixture
def people(app, tx, make_org, make_user):
    org = make_org("acme", "Acme Supplies")
    alice = make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    make_user("bob@acme.test", org="acme")
    with tx() as session:
        connection = Connection(organization_id=org.id, protocol=Protocol.OIDC,
                                name="Acme Okta", settings={})
        session.add(connection)
        session.flush()
        session.add(FederatedIdentity(connection_id=connection.id, subject="okta-123",
                                      user_id=alice.id))
    return alice


def test_a_person_downloads_everything_held_about_them(app, client, people):
    sign_in(app.test_client(), "alice@acme.test", "a wrong password")
    sign_in(app.test_client(), "bob@acme.test")
    sign_in(client, "alice@acme.test")
    client.post("/account/consents", data={"purpose": "product_news",
                                           "csrf_token": csrf_token(client, "/account/")})
    response = client.get("/account/export")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    data = json.loads(response.get_data(as_text=True))
    assert data["profile"]["email"] == "alice@acme.test"
    assert data["profile"]["display_name"] == "Alice Acme"
    assert data["memberships"][0]["organization"] == "acme"
    assert data["identities"] == [{"provider": "Acme Okta", "protocol": "oidc",
                                   "subject": "okta-123", "linked_at": data["identities"][0][
                                       "linked_at"], "last_login_at": None}]
    assert [c["purpose"] for c in data["consents"]] == ["product_news"]
    assert len(data["sessions"]) == 1
    outcomes = [(e["action"], e["outcome"]) for e in data["audit_events"]]
    assert ("auth.login", "failure") in outcomes and ("auth.login", "success") in outcomes
    text = response.get_data(as_text=True)
    assert "bob@acme.test" not in text and "argon2" not in text and "hash" not in text
    [event] = audit_events(app, "gdpr.export")
    assert event.actor == "alice@acme.test" and event.details["sections"]["consents"] == 1


def test_an_operator_exports_a_person_from_the_command_line(app, people, settings,
                                                            monkeypatch):
    for name, value in {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
                        "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
                        "SECRET_KEY": settings["SECRET_KEY"]}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["gdpr", "export", "Alice@Acme.test"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(result.output)["profile"]["email"] == "alice@acme.test"
    assert audit_events(app, "gdpr.export")[0].actor.startswith("cli:")
    unknown = CliRunner().invoke(main, ["gdpr", "export", "nobody@acme.test"])
    assert unknown.exit_code == 1 and "no user" in unknown.stderr
