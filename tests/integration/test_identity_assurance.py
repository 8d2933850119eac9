"""Identity assurance: how each person was proven (email link, the organization's own
identity provider, an administrator's check), stored on the user, read by policies
(``r.sub.identity_level``) and reported to apps in ``acr``."""

from __future__ import annotations

import re

import pyotp
import pytest
import sqlalchemy as sa

from portal.models import User
from portal.services import org_policies, users
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in
from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)
from tests.integration.test_mfa import confirmed_totp, grant


def level(app, email: str) -> tuple[int, str]:
    with services_of(app).db.sessions() as session:
        user = session.scalar(sa.select(User).where(User.email == email))
        return user.identity_level, user.identity_method


@pytest.fixture
def acme(make_org, make_user, tx):
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex")
    alice = make_user("alice@acme.test", org="acme")
    bob = make_user("bob@acme.test", org="acme")
    make_user("gina@globex.test", org="globex")
    grant(tx, "alice@acme.test", "org_owner")
    grant(tx, "gina@globex.test", "org_owner", slug="globex")
    return alice, bob


def test_operators_verify_an_identity_from_the_command_line(trellis, app, acme):  # noqa: F811
    assert level(app, "bob@acme.test") == (0, "")
    output = trellis("user", "verify-identity", "bob@acme.test", "--method", "document",
                     "--note", "passport checked by the service desk").output
    assert output == "bob@acme.test: identity level 3 (document)\n"
    assert level(app, "bob@acme.test") == (3, "document")
    event = audit_events(app, "user.identity_verify")[-1]
    assert event.reason == "passport checked by the service desk"
    assert event.details == {"before": [0, ""], "after": [3, "document"]}
    # Bad input: an unknown method, an empty note, an unknown user; nothing changes.
    trellis("user", "verify-identity", "bob@acme.test", "--method", "selfie", "--note", "x",
            expect=2)
    assert "note" in trellis("user", "verify-identity", "alice@acme.test", "--method",
                             "in_person", "--note", "   ", expect=1).output
    trellis("user", "verify-identity", "nobody@acme.test", "--method", "in_person",
            "--note", "x", expect=1)
    assert level(app, "alice@acme.test") == (0, "")


def test_organization_admins_verify_their_own_members_only(app, acme):
    _, bob = acme
    owner = app.test_client()
    sign_in(owner, "alice@acme.test")
    page = owner.get(f"/o/acme/admin/users/{bob.id}").get_data(as_text=True)
    assert "Identity assurance" in page and "Level 0" in page
    token = csrf_token(owner, f"/o/acme/admin/users/{bob.id}")
    url = f"/o/acme/admin/users/{bob.id}/verify-identity"
    response = owner.post(url, data={"csrf_token": token, "method": "photo", "note": "x"})
    assert response.status_code == 422 and level(app, "bob@acme.test") == (0, "")
    response = owner.post(url, data={"csrf_token": token, "method": "in_person",
                                     "note": "met at the Lyon office, ID card"})
    assert response.status_code == 302
    assert level(app, "bob@acme.test") == (3, "in_person")
    event = audit_events(app, "user.identity_verify")[-1]
    assert event.actor == "alice@acme.test" and event.organization_id is not None
    assert "Level 3" in owner.get(f"/o/acme/admin/users/{bob.id}").get_data(as_text=True)
    # Another organization's owner can neither see nor verify Acme's members.
    other = app.test_client()
    sign_in(other, "gina@globex.test")
    token = csrf_token(other, "/o/globex/admin/security")
    assert other.post(url, data={"csrf_token": token, "method": "in_person",
                                 "note": "x"}).status_code == 404
    with services_of(app).db.sessions() as session:
        gina = users.get_by_email(session, "gina@globex.test")
    assert other.post(f"/o/globex/admin/users/{bob.id}/verify-identity", data={
        "csrf_token": token, "method": "in_person", "note": "x"}).status_code == 404
    assert owner.post(f"/o/acme/admin/users/{gina.id}/verify-identity", data={
        "csrf_token": csrf_token(owner, "/o/acme/admin/security"), "method": "in_person",
        "note": "x"}).status_code == 404
    assert level(app, "gina@globex.test") == (0, "")


def test_nobody_verifies_their_own_identity(app, acme):
    """A policy may grant on level 3, so an admin never vouches for themselves (another admin
    does); the page does not offer it, and a forged post is refused."""
    alice, _ = acme
    owner = app.test_client()
    sign_in(owner, "alice@acme.test")
    page = owner.get(f"/o/acme/admin/users/{alice.id}").get_data(as_text=True)
    assert "Record as verified" not in page and "Another admin records" in page
    response = owner.post(f"/o/acme/admin/users/{alice.id}/verify-identity", data={
        "csrf_token": csrf_token(owner, f"/o/acme/admin/users/{alice.id}"),
        "method": "in_person", "note": "it is me"})
    assert response.status_code == 403 and level(app, "alice@acme.test") == (0, "")
    assert audit_events(app, "user.identity_verify") == []


def test_policies_read_the_identity_level(app, acme, tx):
    """An organization whose members may be managed only by admins whose identity was
    checked: the rule reads r.sub.identity_level."""
    _, bob = acme
    with tx() as session:
        org_policies.upload(session, CLI_CTX, services_of(app).policy.files, "acme",
                             "p, *, *, member, manage, r.sub.identity_level < 3, deny\n")
    owner = app.test_client()
    sign_in(owner, "alice@acme.test")
    page = owner.get(f"/o/acme/admin/users/{bob.id}").get_data(as_text=True)
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    data = {"csrf_token": csrf_token(owner, f"/o/acme/admin/users/{bob.id}"),
            "version": version}
    assert owner.post(f"/o/acme/admin/users/{bob.id}/suspend", data=data).status_code == 403
    with tx() as session:
        from portal import assurance
        assurance.verify(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                         "in_person", "checked by the platform team")
    response = owner.post(f"/o/acme/admin/users/{bob.id}/suspend", data=data)
    assert response.status_code == 302


def test_a_federated_sign_in_through_the_organizations_provider_raises_the_level(
        client, app, tx, make_org, oidc_provider):
    from portal.services import organizations
    from tests.integration.test_oidc_signin import add_connection, federated_login
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    add_connection(app, tx, oidc_provider, "acme", "Acme SSO")
    oidc_provider.put_account("jane@acme.test", name="Jane Doe")
    federated_login(client, oidc_provider, "jane@acme.test")
    assert level(app, "jane@acme.test") == (2, "idp")
    assert audit_events(app, "user.identity_assurance")[-1].details == {
        "before": [0, ""], "after": [2, "idp"]}
    # An administrator's check is not lowered by the next federated sign-in.
    with tx() as session:
        from portal import assurance
        assurance.verify(session, CLI_CTX, users.get_by_email(session, "jane@acme.test"),
                         "document", "driving licence")
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    federated_login(client, oidc_provider, "jane@acme.test")
    assert level(app, "jane@acme.test") == (3, "document")


def test_an_accepted_invitation_proves_the_email_address(client, app, tx, make_org,
                                                         make_user):
    from portal.models import Organization
    from portal.services import members
    org = make_org("acme", "Acme Supplies")
    owner = make_user("owner@acme.test", org="acme")
    make_user("kim@else.test")
    with tx() as session:
        _, token = members.invite(session, CLI_CTX, session.get(Organization, org.id),
                                  members.Actor(owner.id, frozenset({"org_owner", "member"})),
                                  "kim@else.test", "member", ["member"])
    assert level(app, "kim@else.test") == (0, "")
    with tx() as session:
        members.accept(session, CLI_CTX, token, users.get_by_email(session, "kim@else.test"))
    assert level(app, "kim@else.test") == (1, "email")


def test_apps_see_level_3_in_acr_only_for_a_checked_identity(app, op):
    from tests.integration.provider_helpers import (
        callback_params,
        consent,
        http,
        register,
        rp,
        start,
    )
    from tests.integration.test_provider_flow import validate_id_token
    secret = confirmed_totp(app, "alice@acme.test")
    browser = http.__class__()

    def login() -> None:
        page = browser.get(op + "/login")
        browser.post(op + "/login", data={
            "email": "alice@acme.test", "password": PASSWORD,
            "csrf_token": re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page.text)
            .group(1)}, allow_redirects=False)
        page = browser.get(op + "/login/mfa")
        answer = browser.post(op + "/login/mfa", data={
            "code": pyotp.TOTP(secret).now(),
            "csrf_token": re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page.text)
            .group(1)}, allow_redirects=False)
        assert answer.status_code == 302

    login()
    registered = register(app)
    client = rp(op, registered)
    # Level 3 demanded as essential of an unchecked identity: refused truthfully.
    claims = '{"id_token": {"acr": {"essential": true, "values": ["urn:trellis:loa:3"]}}}'
    response, _, _, _ = start(op, client, browser, claims=claims)
    assert "unmet_authentication_requirements" in response.headers.get("Location", "")
    with services_of(app).db.transaction() as session:
        from portal import assurance
        assurance.verify(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                         "in_person", "checked at onboarding")
    response, verifier, nonce, _ = start(op, client, browser, claims=claims)
    if response.status_code == 200:
        response = consent(op, browser, response)
    token = client.fetch_token(op + "/oauth/token", code=callback_params(response)["code"],
                               code_verifier=verifier)
    claims = validate_id_token(op, token["id_token"], registered.client_id, nonce)
    assert claims["acr"] == "urn:trellis:loa:3"
