"""An organization's SSO manager sets up single sign-on themselves: create from the IdP's
metadata, give the IdP Trellis's values, map groups, test, and only then switch on."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from portal.models import Connection, User
from portal.services import organizations
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_org_admin import as_user, grant, post
from tests.integration.test_saml_signin import at_idp, post_acs


@pytest.fixture
def partner(app, tx, make_org, make_user):
    make_org("partner", "Partner Co")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
    make_user("sam@partner.example", org="partner")
    grant(tx, "sam@partner.example", "partner", "sso_manager")


def create_saml(client, saml_idp, group_roles="staff = member"):
    return post(client, "/o/partner/admin/connections/new", protocol="saml",
                name="Partner SSO", metadata_url=saml_idp.entity_id, group_roles=group_roles)


def test_sso_manager_sets_up_saml_tests_then_enables(app, tx, partner, saml_idp):
    sam = as_user(app, "sam@partner.example")
    created = create_saml(sam, saml_idp)
    assert created.status_code == 302, created.get_data(as_text=True)[:400]
    path = created.headers["Location"]
    page = sam.get(path).get_data(as_text=True)
    with tx() as session:
        row = session.scalar(sa.select(Connection))
        assert (row.organization.slug, row.enabled, row.group_roles) == (
            "partner", False, {"staff": "member"})
    assert f"http://localhost/saml/{row.id}/acs" in page and "have not passed a test" in page
    early = post(sam, f"{path}/enable")
    assert early.status_code == 409 and "test sign-in" in early.get_data(as_text=True)
    saml_idp.trust_sp(sam.get(f"/saml/{row.id}/metadata").get_data(as_text=True))
    start = post(sam, f"/sso/{row.id}/test", login_hint="alice@partner.example")
    report = post_acs(sam, row.id, at_idp(start.headers["Location"]))
    assert "A real sign-in would succeed" in report.get_data(as_text=True)
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1  # only Sam
    assert "passed a test" in sam.get(path).get_data(as_text=True)
    assert post(sam, f"{path}/enable").status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(Connection.enabled))
    post(sam, f"{path}/mapping", group_roles="staff = member\nadmins = sso_manager")
    with tx() as session:
        row = session.scalar(sa.select(Connection))
        assert "tested_at" not in row.settings  # changed since the test


def test_mapping_to_a_role_the_admin_lacks_is_refused(app, tx, partner, saml_idp):
    sam = as_user(app, "sam@partner.example")
    refused = create_saml(sam, saml_idp, group_roles="admins = org_owner")
    assert refused.status_code == 403
    assert "roles you hold yourself" in refused.get_data(as_text=True)
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Connection)) == 0


def test_bad_metadata_is_refused_with_a_reason(app, tx, partner):
    sam = as_user(app, "sam@partner.example")
    response = sam.post("/o/partner/admin/connections/new", data={
        "csrf_token": csrf_token(sam, "/"), "protocol": "saml", "name": "x",
        "metadata_file": (io.BytesIO(b"this is not xml"), "idp.xml")},
        content_type="multipart/form-data")
    assert response.status_code == 400
    assert "metadata was refused" in response.get_data(as_text=True)
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Connection)) == 0


def test_failed_refresh_keeps_the_last_good_metadata(app, tx, partner, saml_idp):
    sam = as_user(app, "sam@partner.example")
    path = create_saml(sam, saml_idp).headers["Location"]
    saml_idp.metadata_broken = True
    post(sam, f"{path}/metadata")
    page = sam.get(path).get_data(as_text=True)
    assert "could not be fetched" in page and "the last good copy" in page
    assert audit_events(app, "connection.metadata_refresh")[-1].outcome == "failure"


def test_oidc_connection_and_secret_rotation(app, tx, partner, oidc_provider):
    sam = as_user(app, "sam@partner.example")
    created = post(sam, "/o/partner/admin/connections/new", protocol="oidc", name="OIDC",
                   issuer=oidc_provider.issuer, client_id="abc", client_secret="s1")
    assert created.status_code == 302
    path = created.headers["Location"]
    assert "/sso/oidc/" in sam.get(path).get_data(as_text=True)
    assert post(sam, f"{path}/secret", client_secret="s2").status_code == 302
    assert audit_events(app, "connection.secret")[-1].organization_id is not None


def test_oidc_connection_asks_for_extra_scopes(app, tx, partner, oidc_provider):
    sam = as_user(app, "sam@partner.example")
    bad = post(sam, "/o/partner/admin/connections/new", protocol="oidc", name="OIDC",
               issuer=oidc_provider.issuer, client_id="abc", client_secret="s1",
               scopes='groups "x"')
    assert bad.status_code == 400 and "extra scopes" in bad.get_data(as_text=True)
    created = post(sam, "/o/partner/admin/connections/new", protocol="oidc", name="OIDC",
                   issuer=oidc_provider.issuer, client_id="abc", client_secret="s1",
                   scopes="groups, openid groups")
    assert created.status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(Connection)).settings["scopes"] == [
            "openid", "email", "profile", "groups"]


def test_sso_manager_narrows_the_connection_to_domains(app, tx, partner, oidc_provider):
    sam = as_user(app, "sam@partner.example")
    path = post(sam, "/o/partner/admin/connections/new", protocol="oidc", name="OIDC",
                issuer=oidc_provider.issuer, client_id="abc",
                client_secret="s1").headers["Location"]
    bad = post(sam, f"{path}/domains", allowed_domains="partner.example not_a_domain")
    assert bad.status_code == 400 and "is not a valid domain name" in bad.get_data(
        as_text=True)
    saved = post(sam, f"{path}/domains", allowed_domains="Partner.Example, eu.partner.example")
    assert saved.status_code == 302
    assert 'value="eu.partner.example partner.example"' in sam.get(path).get_data(as_text=True)
    event = audit_events(app, "connection.update")[-1]
    assert event.details["allowed_domains"] == [[], ["eu.partner.example", "partner.example"]]
    assert post(sam, f"{path}/domains", allowed_domains="").status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(Connection)).settings["allowed_domains"] == []


def test_members_without_the_role_cannot_see_sso(app, tx, partner, make_user):
    make_user("pat@partner.example", org="partner")
    pat = as_user(app, "pat@partner.example")
    assert pat.get("/o/partner/admin/connections").status_code == 403


def test_oidc_discovery_is_checked_before_anything_is_stored(app, tx, partner, oidc_provider):
    sam = as_user(app, "sam@partner.example")
    bad = post(sam, "/o/partner/admin/connections/new", protocol="oidc", name="OIDC",
               issuer=oidc_provider.rogue_issuer("discovery-wrong-issuer"), client_id="abc",
               client_secret="s1")
    assert bad.status_code == 400 and "could not be used" in bad.get_data(as_text=True)
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Connection)) == 0
    assert audit_events(app, "connection.create") == []
