"""Delegated administration: an organization's admins manage its members and invitations, and
nothing of any other organization."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.crypto import self_signed_pair
from portal.db import utcnow
from portal.models import (
    AuditEvent,
    CustomRole,
    Domain,
    Invitation,
    Membership,
    MembershipSource,
    OrgApiToken,
    RoleGrant,
    User,
)
from portal.services import roles, users
from portal.services import saml as saml_connections
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in

KNOWN = {"org_owner", "user_manager", "sso_manager", "auditor", "member", "buyer"}


@pytest.fixture
def two_orgs(app, tx, make_org, make_user):
    """Acme: owner Alice, user manager Uma, members Max and Mia. Globex: owner Bob, member
    Carol. Oscar is a platform operator who is also an Acme member."""
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex Logistics")
    ids = {}
    for email, org, role in (("alice@acme.test", "acme", "org_owner"),
                             ("uma@acme.test", "acme", "user_manager"),
                             ("max@acme.test", "acme", None), ("mia@acme.test", "acme", None),
                             ("bob@globex.test", "globex", "org_owner"),
                             ("carol@globex.test", "globex", None)):
        ids[email] = make_user(email, org=org).id
        if role:
            grant(tx, email, org, role)
    oscar = make_user("oscar@trellis.test", org="acme", operator=True)
    ids["oscar@trellis.test"] = oscar.id
    return ids


def grant(tx, email, slug, role):
    from portal.services import organizations
    with tx() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, email),
                             organizations.get(session, slug), role, KNOWN)


def as_user(app, email):
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def post(client, path, **data):
    return client.post(path, data={"csrf_token": csrf_token(client, "/"), **data})


def member_status(tx, user_id, slug="acme"):
    from portal.models import Organization
    with tx() as session:
        return session.scalar(sa.select(Membership.status).join(Organization).where(
            Membership.user_id == user_id, Organization.slug == slug))


def held(tx, user_id, slug="acme"):
    from portal.models import Organization
    with tx() as session:
        return set(session.scalars(sa.select(RoleGrant.role).join(
            Organization, Organization.id == RoleGrant.organization_id).where(
            RoleGrant.user_id == user_id, Organization.slug == slug)))


def test_member_list_search_filter_and_pages(app, tx, two_orgs):
    client = as_user(app, "uma@acme.test")
    page = client.get("/o/acme/admin/users").get_data(as_text=True)
    assert "5 members" in page and "max@acme.test" in page
    assert "globex" not in page.lower() and "carol" not in page
    found = client.get("/o/acme/admin/users?q=MI").get_data(as_text=True)
    assert "mia@acme.test" in found and "max@acme.test" not in found
    owners = client.get("/o/acme/admin/users?role=org_owner").get_data(as_text=True)
    assert "1 member match" in owners and "alice@acme.test" in owners
    from portal.services import members, organizations
    with tx() as session:
        org = organizations.get(session, "acme")
        first = members.list_members(session, org, limit=2)
        second = members.list_members(session, org, limit=2, after=first.next_after)
        assert [r.email for r in first.rows] == ["alice@acme.test", "max@acme.test"]
        assert [r.email for r in second.rows] == ["mia@acme.test", "oscar@trellis.test"]
    percent = client.get("/o/acme/admin/users?q=%25").get_data(as_text=True)
    assert "No members match" in percent  # LIKE wildcards are searched literally


def test_detail_shows_only_this_organization(app, tx, two_orgs, make_org):
    from portal.services import organizations
    with tx() as session:
        users.add_membership(session, CLI_CTX, users.get_by_email(session, "max@acme.test"),
                             organizations.get(session, "globex"), MembershipSource.MANUAL)
    grant(tx, "max@acme.test", "globex", "buyer")
    client = as_user(app, "uma@acme.test")
    page = client.get(f"/o/acme/admin/users/{two_orgs['max@acme.test']}").get_data(
        as_text=True)
    assert "max@acme.test" in page and "Globex" not in page and "buyer" not in page


def test_suspend_ends_sessions_and_resume(app, tx, two_orgs):
    victim = as_user(app, "max@acme.test")
    assert victim.get("/o/acme/").status_code == 200
    admin = as_user(app, "uma@acme.test")
    max_id = two_orgs["max@acme.test"]
    done = post(admin, f"/o/acme/admin/users/{max_id}/suspend")
    assert done.status_code == 302
    assert member_status(tx, max_id).value == "suspended"
    assert victim.get("/o/acme/").status_code == 302  # signed out at once
    post(admin, f"/o/acme/admin/users/{max_id}/resume")
    assert member_status(tx, max_id).value == "active"
    actions = [e.action for e in audit_events(app) if e.action.startswith("membership.")]
    assert actions[-2:] == ["membership.suspend", "membership.resume"]


def test_no_escalation(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    max_id, uma_id = two_orgs["max@acme.test"], two_orgs["uma@acme.test"]
    refused = post(uma, f"/o/acme/admin/users/{max_id}/roles", role="org_owner")
    assert refused.status_code == 403 and "roles you hold yourself" in refused.get_data(
        as_text=True)
    assert held(tx, max_id) == set()
    own = post(uma, f"/o/acme/admin/users/{uma_id}/roles", role="auditor")
    assert own.status_code == 403 and held(tx, uma_id) == {"user_manager"}
    operator = post(uma, f"/o/acme/admin/users/{two_orgs['oscar@trellis.test']}/suspend")
    assert operator.status_code == 403
    assert post(uma, f"/o/acme/admin/users/{max_id}/roles", role="user_manager"
                ).status_code == 302
    assert held(tx, max_id) == {"user_manager"}
    invite = post(uma, "/o/acme/admin/invitations", email="new@acme.test", role="org_owner")
    assert invite.status_code == 403


def test_last_owner_cannot_be_removed_suspended_or_demoted(app, tx, two_orgs):
    alice_id = two_orgs["alice@acme.test"]
    operator = as_user(app, "oscar@trellis.test")  # operators may act, but not break the org
    for path, data in ((f"/o/acme/admin/users/{alice_id}/suspend", {}),
                       (f"/o/acme/admin/users/{alice_id}/remove", {}),
                       (f"/o/acme/admin/users/{alice_id}/roles",
                        {"role": "org_owner", "change": "revoke"})):
        response = post(operator, path, **data)
        assert response.status_code == 409, path
        assert "last owner" in response.get_data(as_text=True)
    assert held(tx, alice_id) == {"org_owner"}
    alice = as_user(app, "alice@acme.test")
    assert post(alice, f"/o/acme/admin/users/{two_orgs['mia@acme.test']}/roles",
                role="org_owner").status_code == 302
    assert post(operator, f"/o/acme/admin/users/{alice_id}/roles", role="org_owner",
                change="revoke").status_code == 302
    assert held(tx, alice_id) == set()


def test_concurrent_edit_is_refused_not_lost(app, tx, two_orgs):
    max_id = two_orgs["max@acme.test"]
    uma = as_user(app, "uma@acme.test")
    page = uma.get(f"/o/acme/admin/users/{max_id}").get_data(as_text=True)
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    alice = as_user(app, "alice@acme.test")
    assert post(alice, f"/o/acme/admin/users/{max_id}/suspend").status_code == 302
    stale = post(uma, f"/o/acme/admin/users/{max_id}/resume", version=version)
    assert stale.status_code == 409 and "changed this member" in stale.get_data(as_text=True)
    assert member_status(tx, max_id).value == "suspended"


def test_remove_keeps_the_account(app, tx, two_orgs):
    max_id = two_orgs["max@acme.test"]
    grant(tx, "max@acme.test", "acme", "buyer")
    uma = as_user(app, "uma@acme.test")
    assert post(uma, f"/o/acme/admin/users/{max_id}/remove").status_code == 302
    assert member_status(tx, max_id) is None and held(tx, max_id) == set()
    with tx() as session:
        assert session.get(User, max_id) is not None


def _invite(client, email, role="member"):
    response = post(client, "/o/acme/admin/invitations", email=email, role=role)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    link = re.search(r'id="invite-link" type="text" readonly value="([^"]+)"',
                     response.get_data(as_text=True)).group(1)
    return link.removeprefix("http://localhost")


def test_invitation_accepted_once_by_the_invited_address(app, tx, two_orgs, make_user):
    uma = as_user(app, "uma@acme.test")
    path = _invite(uma, "Nina@Acme.test", role="user_manager")
    with tx() as session:
        stored = session.scalar(sa.select(Invitation))
        assert stored.email == "nina@acme.test" and path.rsplit("/", 1)[1] not in (
            stored.token_hash,)
    anonymous = app.test_client()
    assert anonymous.get(path).status_code == 302  # sign in first
    make_user("nina@acme.test", org=None)
    make_user("eve@acme.test", org=None)
    eve = as_user(app, "eve@acme.test")
    wrong = post(eve, path)
    assert wrong.status_code == 403 and "for nina@acme.test" in wrong.get_data(as_text=True)
    nina = as_user(app, "nina@acme.test")
    assert "Join Acme Supplies" in nina.get(path).get_data(as_text=True)
    joined = post(nina, path)
    assert joined.status_code == 302 and joined.headers["Location"] == "/o/acme/"
    assert held(tx, users_id(tx, "nina@acme.test")) == {"user_manager"}
    again = post(nina, path)
    assert again.status_code == 409 and "already used" in again.get_data(as_text=True)


def users_id(tx, email):
    with tx() as session:
        return users.get_by_email(session, email).id


def test_expired_and_revoked_invitations(app, tx, two_orgs, make_user):
    uma = as_user(app, "uma@acme.test")
    expired = _invite(uma, "late@acme.test")
    with tx() as session:
        session.execute(sa.update(Invitation).values(expires_at=utcnow() - timedelta(days=1)))
    revoked = _invite(uma, "gone@acme.test")
    with tx() as session:
        gone = session.scalar(sa.select(Invitation).where(Invitation.email == "gone@acme.test"))
    post(uma, f"/o/acme/admin/invitations/{gone.id}/revoke")
    make_user("late@acme.test", org=None)
    make_user("gone@acme.test", org=None)
    late = as_user(app, "late@acme.test")
    assert "expired" in late.get(expired).get_data(as_text=True)
    assert as_user(app, "gone@acme.test").get(revoked).status_code == 404
    resent = post(uma, f"/o/acme/admin/invitations/{gone.id - 1}/resend")
    assert resent.status_code == 200  # a new link and a new expiry
    new_link = re.search(r'readonly value="http://localhost([^"]+)"',
                         resent.get_data(as_text=True)).group(1)
    assert post(late, new_link).status_code == 302
    assert post(late, expired).status_code == 404  # the old link died with the resend


# -- tenant isolation: every admin route, with the other organization's ids ---------------

def admin_routes(app):
    return [rule for rule in app.url_map.iter_rules()
            if rule.endpoint.startswith("orgadmin.")]


def foreign_values(tx, ids):
    """For each path argument, an id that belongs to Globex."""
    with tx() as session:
        from portal.services import members, organizations
        org = organizations.get(session, "globex")
        invitation, _ = members.invite(session, CLI_CTX, org,
                                       members.Actor(ids["bob@globex.test"],
                                                     frozenset(KNOWN)),
                                       "someone@globex.test", "member", sorted(KNOWN))
        connection = saml_connections.create(
            session, CLI_CTX, services_of_session_box(), org_slug="globex",
            name="Globex SSO", idp_entity_id="https://idp.globex.test/",
            idp_sso_url="https://idp.globex.test/sso", idp_certs=(GLOBEX_CERT,))
        from portal.services import org_tokens
        token, _ = org_tokens.create(session, CLI_CTX, org, ids["bob@globex.test"], "Globex",
                                     ["members:read"], 30)
        from portal.services import domains
        domain = domains.add(session, CLI_CTX, org, "globex.test")
        from portal.models import CustomRole
        custom = CustomRole(organization_id=org.id, name="globex_helpdesk",
                            permissions=[["member", "read"]])
        session.add(custom)
        session.flush()
        return {"slug": "acme", "user_id": ids["carol@globex.test"],
                "invitation_id": invitation.id, "connection_id": connection.id,
                "token_id": token.id, "domain_id": domain.id,
                "role_id": custom.id}


GLOBEX_CERT = self_signed_pair("idp.globex.test", 30)[0]


def services_of_session_box():
    from flask import current_app
    return current_app.extensions["trellis"].secrets


def test_every_admin_route_refuses_another_organizations_ids(app, tx, two_orgs):
    """Signed in as Acme's owner, every admin route is tried with Globex's ids (in the path,
    and in the body for POSTs): the answer is 403/404, nothing of Globex leaks, nothing
    changes. A new route whose arguments this test cannot fill fails it."""
    with app.app_context():
        values = foreign_values(tx, two_orgs)
    client = as_user(app, "alice@acme.test")
    before = _globex_state(tx)
    events = len(audit_events(app))
    for rule in admin_routes(app):
        unknown = set(rule.arguments) - set(values)
        assert not unknown, f"{rule.rule}: cannot fill {unknown}; extend foreign_values"
        if not (set(rule.arguments) - {"slug"}):
            continue  # organization-wide pages: covered by the slug test below
        path = rule.build(values, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method, data={
                "csrf_token": csrf_token(client, "/"), "role": "member",
                "user_id": values["user_id"], "email": "x@globex.test",
                "group_roles": "g = member", "client_secret": "stolen"})
            assert response.status_code in (403, 404), (method, path, response.status_code)
            body = response.get_data(as_text=True)
            assert "carol" not in body and "globex" not in body.lower(), (method, path)
    assert _globex_state(tx) == before
    assert not [e for e in audit_events(app)[events:] if e.outcome == "success"]


def test_admin_of_one_org_cannot_open_anothers_admin(app, tx, two_orgs):
    client = as_user(app, "alice@acme.test")
    for rule in admin_routes(app):
        if set(rule.arguments) != {"slug"}:
            continue
        path = rule.build({"slug": "globex"}, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method, data={
                "csrf_token": csrf_token(client, "/"), "email": "x@acme.test",
                "role": "member"})
            assert response.status_code == 404, (method, path)  # as if Globex did not exist
    member = as_user(app, "max@acme.test")
    assert member.get("/o/acme/admin/users").status_code == 403


def _globex_state(tx):
    from portal.models import Organization
    with tx() as session:
        globex = session.scalar(sa.select(Organization.id).where(Organization.slug == "globex"))
        return (
            sorted(session.execute(sa.select(Membership.user_id, Membership.status,
                                             Membership.version)
                                   .where(Membership.organization_id == globex)).all()),
            sorted(session.execute(sa.select(RoleGrant.user_id, RoleGrant.role)
                                   .where(RoleGrant.organization_id == globex)).all()),
            sorted(session.execute(sa.select(Invitation.id, Invitation.token_hash,
                                             Invitation.revoked_at)
                                   .where(Invitation.organization_id == globex)).all()),
            sorted(session.execute(sa.select(OrgApiToken.id, OrgApiToken.revoked_at)
                                   .where(OrgApiToken.organization_id == globex)).all()),
            sorted(session.execute(sa.select(CustomRole.id, CustomRole.name,
                                             CustomRole.permissions.cast(sa.String))
                                   .where(CustomRole.organization_id == globex)).all()),
            sorted(session.execute(sa.select(Domain.id, Domain.name, Domain.verified,
                                             Domain.last_checked_at)
                                   .where(Domain.organization_id == globex)).all()),
            session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
                AuditEvent.organization_id == globex)))


def test_services_reject_foreign_ids_without_the_pages(app, tx, two_orgs):
    """The same scoping holds below the pages, for every future caller (API, CLI)."""
    from portal.errors import NotFound
    from portal.services import members, organizations
    with tx() as session:
        acme = organizations.get(session, "acme")
        actor = members.Actor(two_orgs["alice@acme.test"], frozenset(KNOWN))
        for call in (lambda: members.detail(session, acme, two_orgs["carol@globex.test"]),
                     lambda: members.suspend(session, CLI_CTX, acme, actor,
                                             two_orgs["carol@globex.test"]),
                     lambda: members.grant(session, CLI_CTX, acme, actor,
                                           two_orgs["carol@globex.test"], "buyer",
                                           sorted(KNOWN))):
            with pytest.raises(NotFound):
                call()
    assert services_of(app) is not None and PASSWORD


def test_unknown_role_and_bad_invitation_email_are_plain_errors(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    unknown = post(alice, f"/o/acme/admin/users/{two_orgs['max@acme.test']}/roles",
                   role="wizard")
    assert unknown.status_code == 400 and "has no role" in unknown.get_data(as_text=True)
    bad = post(alice, "/o/acme/admin/invitations", email="not an email\x00", role="member")
    assert bad.status_code == 400 and "valid email" in bad.get_data(as_text=True)
    member = post(alice, "/o/acme/admin/invitations", email="max@acme.test", role="member")
    assert member.status_code == 409 and "already a member" in member.get_data(as_text=True)
