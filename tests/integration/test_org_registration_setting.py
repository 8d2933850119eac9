"""Who may sign up to an organization: its owners choose invitation only, open to verified
domains, or open, in the admin pages and over the admin API; each change is audited, and
nobody else (another organization's owner, a user manager) can change it."""

from __future__ import annotations

import pytest

from portal.db import utcnow
from portal.errors import Forbidden
from portal.models import Domain, RegistrationMode
from portal.services import organizations, registration
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, two_orgs  # noqa: F401


def mode_of(tx, slug="acme") -> str:
    with tx() as session:
        return organizations.get(session, slug).registration.value


def verified_domain(tx, name, slug="acme", suspended=False):
    with tx() as session:
        org = organizations.get(session, slug)
        session.add(Domain(name=name, organization_id=org.id, verified=True, verified_name=name,
                           verification_token="t" * 32, verified_at=utcnow(),
                           suspended_at=utcnow() if suspended else None))


def test_owner_chooses_who_may_sign_up_on_the_page(app, tx, two_orgs):  # noqa: F811
    verified_domain(tx, "acme.test")
    client = as_user(app, "alice@acme.test")
    page = client.get("/o/acme/admin/registration")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Invitation only" in text and "acme.test" in text and "/o/acme/register" in text
    assert 'value="invite" checked' in text
    saved = client.post("/o/acme/admin/registration",
                        data={"csrf_token": csrf_token(client, "/"), "mode": "domains"},
                        follow_redirects=True)
    assert saved.status_code == 200 and "Sign-up setting saved" in saved.get_data(as_text=True)
    assert mode_of(tx) == "domains"
    [event] = audit_events(app, "org.registration")
    assert event.actor == "alice@acme.test" and event.details == {"from": "invite",
                                                                   "to": "domains"}
    # Saving the same choice again changes nothing and records nothing.
    client.post("/o/acme/admin/registration",
                data={"csrf_token": csrf_token(client, "/"), "mode": "domains"})
    assert len(audit_events(app, "org.registration")) == 1


def test_bad_choice_and_other_admins_are_refused(app, tx, two_orgs):  # noqa: F811
    owner = as_user(app, "alice@acme.test")
    bad = owner.post("/o/acme/admin/registration",
                     data={"csrf_token": csrf_token(owner, "/"), "mode": "everyone"})
    assert bad.status_code == 400 and "Choose who may sign up" in bad.get_data(as_text=True)
    uma = as_user(app, "uma@acme.test")  # user manager: not an owner
    assert uma.get("/o/acme/admin/registration").status_code == 403
    assert uma.post("/o/acme/admin/registration",
                    data={"csrf_token": csrf_token(uma, "/"), "mode": "open"}).status_code == 403
    assert "Sign-up" not in uma.get("/o/acme/admin/users").get_data(as_text=True)
    other = as_user(app, "bob@globex.test")
    assert other.post("/o/acme/admin/registration",
                      data={"csrf_token": csrf_token(other, "/"), "mode": "open"}
                      ).status_code in (403, 404)
    assert mode_of(tx) == "invite" and not audit_events(app, "org.registration")


def test_the_page_warns_when_no_domain_is_verified(app, tx, two_orgs):  # noqa: F811
    verified_domain(tx, "old.acme.test", suspended=True)  # record gone: proves nothing now
    text = as_user(app, "alice@acme.test").get("/o/acme/admin/registration").get_data(
        as_text=True)
    assert "nobody can sign up until you verify a domain" in text
    assert "old.acme.test" not in text


def test_the_setting_decides_who_may_sign_up(app, tx, two_orgs):  # noqa: F811
    verified_domain(tx, "acme.test")
    verified_domain(tx, "lapsed.test", suspended=True)

    def allowed(email):
        with tx() as session:
            try:
                registration.check_allowed(session, organizations.get(session, "acme"), email,
                                           False)
            except Forbidden as refused:
                return refused.code
            return "ok"

    assert allowed("new@acme.test") == "registration_invite_only"
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "domains")
    assert allowed("new@acme.test") == "ok"
    assert allowed("new@elsewhere.test") == "registration_domain"
    assert allowed("new@lapsed.test") == "registration_domain"
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "open")
    assert allowed("new@elsewhere.test") == "ok"


def test_the_setting_over_the_api(app, tx, two_orgs):  # noqa: F811
    verified_domain(tx, "acme.test")
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    read = client.get("/api/v1/orgs/acme/registration", headers=auth)
    assert read.status_code == 200
    assert read.get_json() == {"mode": "invite", "verified_domains": ["acme.test"]}
    changed = client.put("/api/v1/orgs/acme/registration", headers=auth, json={"mode": "open"})
    assert changed.status_code == 200 and changed.get_json()["mode"] == "open"
    assert mode_of(tx) == "open"
    [event] = audit_events(app, "org.registration")
    assert event.actor == "alice@acme.test" and event.details["to"] == "open"
    for body in ({"mode": "everyone"}, {"mode": None}, {}, ["open"], {"mode": [{"a": 1}]}):
        wrong = client.put("/api/v1/orgs/acme/registration", headers=auth, json=body)
        assert wrong.status_code == 422, body
        assert wrong.get_json()["field"] in ("mode", "body")
    read_only = token_for(tx, "alice@acme.test", scopes=["settings:read"])
    refused = client.put("/api/v1/orgs/acme/registration", headers=read_only,
                         json={"mode": "invite"})
    assert refused.status_code == 403 and refused.get_json()["code"] == "scope_missing"
    # Another organization's setting: not found, and untouched.
    assert client.put("/api/v1/orgs/globex/registration", headers=auth,
                      json={"mode": "open"}).status_code == 404
    assert mode_of(tx) == "open" and mode_of(tx, "globex") == "invite"
    # A user manager's token cannot change it either (the permission, not only the scope).
    uma = token_for(tx, "uma@acme.test")
    assert client.put("/api/v1/orgs/acme/registration", headers=uma,
                      json={"mode": "invite"}).status_code == 403
    assert mode_of(tx) == "open"


@pytest.mark.parametrize("mode", [m.value for m in RegistrationMode])
def test_every_mode_is_documented(app, mode):
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    schema = document["components"]["schemas"]["Registration"]["properties"]["mode"]
    assert mode in schema["enum"]
