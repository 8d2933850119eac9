"""Platform operators add connections on /admin/connections: for the whole platform (a
sign-in button on /login) or for an organization, against the real node oidc-provider and the
pysaml2 identity provider. Created switched off, switched on after a test sign-in passed."""

from __future__ import annotations

import io
import re
import secrets

import pytest
import sqlalchemy as sa

from portal.models import Connection, FederatedIdentity, Membership, User
from portal.services import organizations
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_org_admin import as_user, grant, post
from tests.integration.test_saml_signin import at_idp, post_acs

BASE = "http://localhost"
NEW = "/admin/connections/new"


@pytest.fixture
def operator(app, make_user):
    make_user("ops@trellis.test", operator=True)
    return as_user(app, "ops@trellis.test")


@pytest.fixture
def partner(tx, make_org):
    make_org("partner", "Partner Co")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")


def count(tx, model=Connection) -> int:
    with tx() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def upload(client, **fields):
    """A multipart POST of the form, as a browser sends it with a file field."""
    return client.post(NEW, data={"csrf_token": csrf_token(client, NEW), **fields},
                       content_type="multipart/form-data")


def test_platform_oidc_connection_is_tested_switched_on_and_signs_people_in(
        app, tx, operator, oidc_provider):
    client_id, secret = f"platform-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    form_page = operator.get(NEW).get_data(as_text=True)
    assert "Platform: a sign-in button on /login" in form_page and "Google" in form_page
    created = post(operator, NEW, owner="", protocol="oidc", name="Partner ID",
                   issuer=f"{oidc_provider.issuer}/.well-known/openid-configuration",
                   client_id=client_id, client_secret=secret)
    assert created.status_code == 302, created.get_data(as_text=True)[:600]
    path = created.headers["Location"]
    page = operator.get(path).get_data(as_text=True)
    redirect_uri = re.search(r"<code>(http://localhost/sso/oidc/\d+/callback)</code>",
                             page).group(1)
    assert "have not passed a test" in page and "All users" not in page
    with tx() as session:
        row = session.scalar(sa.select(Connection))
        assert (row.organization_id, row.enabled, row.settings["issuer"]) == (
            None, False, oidc_provider.issuer)  # the discovery URL was cut to the issuer
    event = audit_events(app, "connection.create")[-1]
    assert (event.actor, event.organization_id, event.target) == (
        "ops@trellis.test", None, f"connection:{row.id}")
    assert "Continue with Partner ID" not in app.test_client().get("/login").get_data(
        as_text=True)  # switched off until tested
    early = post(operator, f"{path}/enable")
    assert early.status_code == 409 and "test sign-in" in early.get_data(as_text=True)

    # The identity provider's admin registers Trellis with the shown redirect URI.
    oidc_provider.register_client(redirect_uri, client_id=client_id, client_secret=secret)
    oidc_provider.put_account("fay@freelance.test", name="Fay Free")
    test = post(operator, f"/sso/{row.id}/test", login_hint="fay@freelance.test")
    callback = oidc_provider.authorize(test.headers["Location"], f"{BASE}/sso/")
    report = operator.get(callback.removeprefix(BASE)).get_data(as_text=True)
    assert "A real sign-in would succeed" in report, report[:2000]
    assert count(tx, User) == 1  # only the operator: a test provisions nothing
    assert post(operator, f"{path}/enable").status_code == 302
    assert audit_events(app, "connection.enable")[-1].actor == "ops@trellis.test"

    visitor = app.test_client()
    assert "Continue with Partner ID" in visitor.get("/login").get_data(as_text=True)
    start = visitor.post(f"/sso/{row.id}/start", data={
        "csrf_token": csrf_token(visitor), "login_hint": "fay@freelance.test"})
    callback = oidc_provider.authorize(start.headers["Location"], f"{BASE}/sso/")
    landing = visitor.get(callback.removeprefix(BASE))
    assert landing.status_code == 302 and landing.headers["Location"] == "/"
    assert "Fay Free" in visitor.get("/").get_data(as_text=True)
    with tx() as session:
        user = session.scalar(sa.select(User).where(User.email == "fay@freelance.test"))
        link = session.scalar(sa.select(FederatedIdentity).where(
            FederatedIdentity.user_id == user.id))
        assert link.connection_id == row.id
    assert count(tx, Membership) == 0


def test_org_saml_connection_from_an_uploaded_metadata_file(app, tx, operator, partner,
                                                             saml_idp):
    created = upload(operator, owner="partner", protocol="saml", name="",
                     metadata_file=(io.BytesIO(saml_idp.metadata_xml().encode()), "idp.xml"))
    assert created.status_code == 302, created.get_data(as_text=True)[:600]
    page = operator.get(created.headers["Location"]).get_data(as_text=True)
    with tx() as session:
        row = session.scalar(sa.select(Connection))
        assert (row.organization.slug, row.name, row.enabled) == (
            "partner", "Partner Co single sign-on", False)
        assert row.settings["idp_entity_id"] == saml_idp.entity_id
        partner_id = row.organization_id
    assert f"{BASE}/saml/{row.id}/metadata" in page and f"{BASE}/saml/{row.id}/acs" in page
    assert f"/o/partner/admin/connections/{row.id}" in page  # mapping lives on the org page
    event = audit_events(app, "connection.create")[-1]
    assert (event.actor, event.organization_id, event.details["source"]) == (
        "ops@trellis.test", partner_id, "file")
    # The organization's own SSO page shows the connection the operator created.
    listing = operator.get("/o/partner/admin/connections").get_data(as_text=True)
    assert "Partner Co single sign-on" in listing
    # A test sign-in through the real identity provider passes with the uploaded metadata.
    saml_idp.trust_sp(operator.get(f"/saml/{row.id}/metadata").get_data(as_text=True))
    start = post(operator, f"/sso/{row.id}/test", login_hint="alice@partner.example")
    report = post_acs(operator, row.id, at_idp(start.headers["Location"]))
    assert "A real sign-in would succeed" in report.get_data(as_text=True)


def test_bad_discovery_url_is_a_form_error_and_creates_nothing(app, tx, operator,
                                                               oidc_provider):
    bad = post(operator, NEW, owner="", protocol="oidc", name="Broken",
               issuer=oidc_provider.rogue_issuer("not-json"), client_id="c",
               client_secret="s")
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400 and "could not be used" in text
    assert "/_rogue/not-json/.well-known/openid-configuration" in text
    assert 'value="Broken"' in text  # the form is shown again with what was typed
    nowhere = post(operator, NEW, owner="", protocol="oidc", name="Broken",
                   issuer="ftp://idp.example", client_id="c", client_secret="s")
    assert nowhere.status_code == 400 and "must be an https:// URL" in nowhere.get_data(
        as_text=True)
    assert count(tx) == 0 and audit_events(app, "connection.create") == []


def test_bad_metadata_and_platform_saml_are_refused(app, tx, operator, partner):
    bad = upload(operator, owner="partner", protocol="saml", name="x",
                 metadata_file=(io.BytesIO(b"this is not xml"), "idp.xml"))
    assert bad.status_code == 400 and "metadata was refused" in bad.get_data(as_text=True)
    down = post(operator, NEW, owner="partner", protocol="saml",
                metadata_url="http://127.0.0.1:9/metadata")
    assert down.status_code == 400
    assert "The metadata at http://127.0.0.1:9/metadata could not be used" in down.get_data(
        as_text=True)
    platform = post(operator, NEW, owner="", protocol="saml", metadata_url="https://x.test/")
    assert platform.status_code == 400
    assert "belongs to an organization" in platform.get_data(as_text=True)
    missing = post(operator, NEW, owner="", protocol="google", client_id="c")
    assert missing.status_code == 400 and "client secret" in missing.get_data(as_text=True)
    assert count(tx) == 0 and audit_events(app, "connection.create") == []


def test_google_and_oauth2_presets(app, tx, operator, partner):
    google = post(operator, NEW, owner="", protocol="google", client_id="g.apps",
                  client_secret="gs")
    assert google.status_code == 302, re.findall(r"alert\">([^<]*)", google.get_data(as_text=True))
    oauth2 = post(operator, NEW, owner="partner", protocol="oauth2", name="Code host",
                  client_id="o", client_secret="os",
                  authorization_endpoint="https://code.example/login/oauth/authorize",
                  token_endpoint="https://code.example/login/oauth/access_token",
                  userinfo_endpoint="https://api.code.example/user", subject_claim="id",
                  oauth2_scopes="read:user user:email", emails_verified="1")
    assert oauth2.status_code == 302, re.findall(r"alert\">([^<]*)", oauth2.get_data(as_text=True))
    with tx() as session:
        rows = session.scalars(sa.select(Connection).order_by(Connection.id)).all()
        assert (rows[0].name, rows[0].organization_id, rows[0].settings["issuer"]) == (
            "Google (Sign in with Google)", None, "https://accounts.google.com")
        assert rows[1].settings["preset"] == "oauth2"
        assert rows[1].settings["userinfo_endpoint"] == "https://api.code.example/user"
        assert rows[1].settings["emails_verified"] is True
    insecure = post(operator, NEW, owner="", protocol="oauth2", client_id="o",
                    client_secret="os", authorization_endpoint="http://code.example/a",
                    token_endpoint="https://code.example/t",
                    userinfo_endpoint="https://code.example/u")
    assert insecure.status_code == 400 and "https://" in insecure.get_data(as_text=True)
    assert count(tx) == 2


def test_org_admins_and_members_are_refused(app, tx, partner, make_user, oidc_provider):
    make_user("owner@partner.example", org="partner")
    grant(tx, "owner@partner.example", "partner", "org_owner")
    owner = as_user(app, "owner@partner.example")
    assert owner.get(NEW).status_code == 403
    refused = post(owner, NEW, owner="partner", protocol="oidc", issuer=oidc_provider.issuer,
                   client_id="c", client_secret="s")
    assert refused.status_code == 403
    assert owner.get("/admin/connections").status_code == 403
    assert count(tx) == 0


def test_the_form_needs_its_csrf_token(app, tx, operator, oidc_provider):
    response = operator.post(NEW, data={"owner": "", "protocol": "oidc",
                                        "issuer": oidc_provider.issuer, "client_id": "c",
                                        "client_secret": "s"})
    assert response.status_code == 400 and count(tx) == 0
