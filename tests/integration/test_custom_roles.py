"""Custom roles: an owner composes a role from the permissions the organization's kind
allows, grants it like a built-in role, and never beyond their own rights."""

from __future__ import annotations

import time

import sqlalchemy as sa

from portal.models import CustomRole
from tests.conftest import audit_events
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, grant, held, post


def create(client, name, *permissions, slug="acme"):
    return client.post(f"/o/{slug}/admin/roles", data={
        "csrf_token": _csrf(client), "name": name, "description": f"{name} role",
        "permissions": list(permissions)})


def _csrf(client):
    from tests.conftest import csrf_token
    return csrf_token(client, "/")


def role_id(tx, name):
    with tx() as session:
        return session.scalar(sa.select(CustomRole.id).where(CustomRole.name == name))


def test_owner_composes_grants_changes_a_role_and_it_applies_at_once(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    page = alice.get("/o/acme/admin/roles").get_data(as_text=True)
    assert "member/manage" in page
    # Conditional rules are offered with their condition; Alice is no buyer, so greyed out.
    assert "r.obj.owner_org == r.dom and r.obj.amount &lt;= 50000" in page
    assert create(alice, "helpdesk", "member/read", "member/manage").status_code == 302
    max_id = two_orgs["max@acme.test"]
    member_page = alice.get(f"/o/acme/admin/users/{max_id}").get_data(as_text=True)
    assert '<option value="helpdesk">' in member_page  # grantable like a built-in role
    assert post(alice, f"/o/acme/admin/users/{max_id}/roles", role="helpdesk").status_code == 302
    assert held(tx, max_id) == {"helpdesk"}
    max_client = as_user(app, "max@acme.test")
    assert max_client.get("/o/acme/admin/users").status_code == 200
    mia = two_orgs["mia@acme.test"]
    assert post(max_client, f"/o/acme/admin/users/{mia}/suspend").status_code == 302
    assert post(max_client, f"/o/acme/admin/users/{mia}/resume").status_code == 302
    assert max_client.get("/o/acme/admin/domains").status_code == 403

    changed = post(alice, f"/o/acme/admin/roles/{role_id(tx, 'helpdesk')}",
                   description="read only now", permissions="member/read")
    assert changed.status_code == 302
    assert post(max_client, f"/o/acme/admin/users/{mia}/suspend").status_code == 403
    assert max_client.get("/o/acme/admin/users").status_code == 200
    actions = [e.action for e in audit_events(app) if e.action.startswith("custom_role.")]
    assert actions == ["custom_role.create", "custom_role.update"]
    assert audit_events(app, "custom_role.update")[-1].details == {
        "before": ["member/manage", "member/read"], "after": ["member/read"]}


def test_another_worker_sees_a_change_within_a_second(app, tx, two_orgs, settings):
    """A second app (its own engine and cache, as in another worker) decides on the same
    database: a new custom role's permission is in force there within a second."""
    from portal import create_app
    from tests.conftest import services_of
    other = create_app(settings)
    try:
        engine = services_of(other).policy
        subject = {"id": str(two_orgs["max@acme.test"]), "platform_operator": False}
        assert not engine.decide(subject, "acme", {"type": "audit"}, "read",
                                 {"org_status": "active"}).allowed
        alice = as_user(app, "alice@acme.test")
        create(alice, "reader", "audit/read")
        post(alice, f"/o/acme/admin/users/{two_orgs['max@acme.test']}/roles", role="reader")
        started = time.monotonic()
        while not engine.decide(subject, "acme", {"type": "audit"}, "read",
                                {"org_status": "active"}).allowed:
            assert time.monotonic() - started < 1.0, "not seen within a second"
            time.sleep(0.05)
    finally:
        services_of(other).db.dispose()


def test_no_escalation_in_composing_or_granting(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    create(alice, "token_admin", "organization/manage")
    create(alice, "domains_only", "domain/manage")
    create(alice, "viewer", "member/read")
    mia_id, max_id = two_orgs["mia@acme.test"], two_orgs["max@acme.test"]
    post(alice, f"/o/acme/admin/users/{mia_id}/roles", role="token_admin")
    mia = as_user(app, "mia@acme.test")  # may manage roles, but holds nothing else
    refused = create(mia, "sneaky", "member/manage")
    assert refused.status_code == 403 and "you do not hold member/manage" in refused.get_data(
        as_text=True)
    assert role_id(tx, "sneaky") is None
    page = mia.get("/o/acme/admin/roles").get_data(as_text=True)
    assert "(you do not hold it)" in page
    edit = post(mia, f"/o/acme/admin/roles/{role_id(tx, 'viewer')}",
                permissions="organization/manage")
    assert edit.status_code == 403  # cannot take away what they could not give
    uma = as_user(app, "uma@acme.test")  # user manager: grants roles, not domains
    assert uma.get("/o/acme/admin/roles").status_code == 403
    assert create(uma, "x_role", "member/read").status_code == 403
    escalate = post(uma, f"/o/acme/admin/users/{max_id}/roles", role="domains_only")
    assert escalate.status_code == 403 and "roles you hold yourself" in escalate.get_data(
        as_text=True)
    assert post(uma, f"/o/acme/admin/users/{max_id}/roles", role="viewer").status_code == 302
    assert held(tx, max_id) == {"viewer"}
    invite = post(uma, "/o/acme/admin/invitations", email="n@acme.test", role="domains_only")
    assert invite.status_code == 403


def test_bad_names_and_permissions_are_plain_errors(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    for name, permissions, status, text in (
            ("org_owner", ["member/read"], 409, "built-in role"),
            ("buyer", ["member/read"], 409, "built-in role"),
            ("Bad Name", ["member/read"], 400, "lowercase letters"),
            ("empty", [], 400, "at least one permission"),
            ("orders", ["purchase_order/approve"], 400, "is not a permission"),
            ("weird", ["member"], 400, "looks like member/read")):
        response = create(alice, name, *permissions)
        assert response.status_code == status, name
        assert text in response.get_data(as_text=True), name
    create(alice, "dup_role", "member/read")
    assert create(alice, "dup_role", "member/read").status_code == 409
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CustomRole)) == 1


def test_deleting_a_role_in_use_is_refused_or_revokes_it_everywhere(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    create(alice, "helpdesk", "member/read")
    max_id = two_orgs["max@acme.test"]
    post(alice, f"/o/acme/admin/users/{max_id}/roles", role="helpdesk")
    post(alice, "/o/acme/admin/invitations", email="new@acme.test", role="helpdesk")
    rid = role_id(tx, "helpdesk")
    refused = post(alice, f"/o/acme/admin/roles/{rid}/delete")
    assert refused.status_code == 409
    assert "held by 1 member(s) and offered by 1 open invitation(s)" in refused.get_data(
        as_text=True)
    assert held(tx, max_id) == {"helpdesk"}
    assert as_user(app, "max@acme.test").get("/o/acme/admin/users").status_code == 200
    done = post(alice, f"/o/acme/admin/roles/{rid}/delete", revoke="1")
    assert done.status_code == 302 and role_id(tx, "helpdesk") is None
    assert held(tx, max_id) == set()
    assert as_user(app, "max@acme.test").get("/o/acme/admin/users").status_code == 403
    event = audit_events(app, "custom_role.delete")[-1]
    assert event.details["revoked_grants"] == 1 and event.details["revoked_invitations"] == 1


def test_roles_over_the_api(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    listed = client.get("/api/v1/orgs/acme/roles", headers=auth).get_json()
    assert {"permission": "member/read", "label": "see members", "held": True, "when": None,
            "amount_cap": None, "conditions": ["mfa"]} in listed["permissions"]
    made = client.post("/api/v1/orgs/acme/roles", headers=auth,
                       json={"name": "api_role", "permissions": ["member/read"]})
    assert made.status_code == 201 and made.get_json()["permissions"] == ["member/read"]
    rid = made.get_json()["id"]
    changed = client.put(f"/api/v1/orgs/acme/roles/{rid}", headers=auth,
                         json={"permissions": ["member/read", "audit/read"]})
    assert changed.get_json()["permissions"] == ["audit/read", "member/read"]
    wrong = client.put(f"/api/v1/orgs/acme/roles/{rid}", headers=auth,
                       json={"permissions": "member/read"})
    assert wrong.status_code == 422 and wrong.get_json()["field"] == "permissions"
    granted = client.post(f"/api/v1/orgs/acme/members/{two_orgs['max@acme.test']}/roles",
                          headers=auth, json={"role": "api_role"})
    assert granted.status_code == 200
    in_use = client.delete(f"/api/v1/orgs/acme/roles/{rid}", headers=auth)
    assert in_use.status_code == 409 and in_use.get_json()["code"] == "role_in_use"
    gone = client.delete(f"/api/v1/orgs/acme/roles/{rid}?revoke=true", headers=auth)
    assert gone.status_code == 200
    read_only = token_for(tx, "alice@acme.test", scopes=["roles:read"])
    assert client.post("/api/v1/orgs/acme/roles", headers=read_only,
                       json={"name": "x_role", "permissions": ["member/read"]}
                       ).status_code == 403


def test_roles_of_one_organization_do_not_exist_in_another(app, tx, two_orgs):
    grant(tx, "bob@globex.test", "globex", "org_owner")
    bob = as_user(app, "bob@globex.test")
    create(bob, "globex_helpdesk", "member/read", slug="globex")
    alice = as_user(app, "alice@acme.test")
    refused = post(alice, f"/o/acme/admin/users/{two_orgs['max@acme.test']}/roles",
                   role="globex_helpdesk")
    assert refused.status_code == 400 and "has no role" in refused.get_data(as_text=True)
    assert "globex_helpdesk" not in alice.get("/o/acme/admin/roles").get_data(as_text=True)


# -- custom roles from conditional rules ----------------------------------------------------

def _approve_key(client, auth):
    listed = client.get("/api/v1/orgs/acme/roles", headers=auth).get_json()["permissions"]
    [offer] = [p for p in listed if p["permission"].startswith("purchase_order/approve@")]
    return offer


def _decide(app, user_id, action, amount, owner_org="acme", assurance=2):
    from tests.conftest import services_of
    engine = services_of(app).policy
    return engine.decide({"id": str(user_id), "platform_operator": False}, "acme",
                         {"type": "purchase_order", "amount": amount, "owner_org": owner_org},
                         action, {"org_status": "active", "assurance": assurance}).allowed


def test_owner_narrows_a_conditional_permission_and_it_holds(app, tx, two_orgs):
    """An owner who is also a buyer composes a junior buyer: approvals of this organization's
    orders up to 20,000 (the template allows 50,000), only after MFA. Every condition holds in
    the decisions, and the platform's own deny (no approvals without MFA) still wins."""
    grant(tx, "alice@acme.test", "acme", "buyer")
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    offer = _approve_key(client, auth)
    assert offer["when"] == "r.obj.owner_org == r.dom and r.obj.amount <= 50000"
    assert offer["amount_cap"] == 50000 and offer["held"] is True
    assert offer["conditions"] == ["amount_max", "mfa"]
    made = client.post("/api/v1/orgs/acme/roles", headers=auth, json={
        "name": "junior_buyer", "permissions": [offer["permission"]],
        "conditions": {offer["permission"]: {"amount_max": 20000, "mfa": True}}})
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["conditions"] == {offer["permission"]: {
        "when": offer["when"], "amount_max": 20000, "mfa": True}}
    max_id = two_orgs["max@acme.test"]
    assert client.post(f"/api/v1/orgs/acme/members/{max_id}/roles", headers=auth,
                       json={"role": "junior_buyer"}).status_code == 200
    assert _decide(app, max_id, "approve", 15000)
    assert not _decide(app, max_id, "approve", 20001)  # the owner's limit
    assert not _decide(app, max_id, "approve", 15000, owner_org="globex")  # template's
    assert not _decide(app, max_id, "approve", 15000, assurance=1)  # platform deny + MFA
    assert not _decide(app, max_id, "read", 100)  # only what the role names
    [event] = audit_events(app, "custom_role.create")
    assert event.details["permissions"] == [
        "purchase_order/approve (when r.obj.owner_org == r.dom and r.obj.amount <= 50000, "
        "amount at most 20000, with MFA)"]
    # The page shows the role with its conditions, and the form keeps them when editing.
    page = as_user(app, "alice@acme.test").get(
        f"/o/acme/admin/roles/{made.get_json()['id']}").get_data(as_text=True)
    assert 'value="20000"' in page and f'name="mfa:{offer["permission"]}" value="1" checked' \
        in page


def test_conditions_never_widen_and_bad_ones_are_refused(app, tx, two_orgs):
    grant(tx, "alice@acme.test", "acme", "buyer")
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    key = _approve_key(client, auth)["permission"]
    for conditions, text in (
            ({key: {"amount_max": 60000}}, "at most 50000, the platform's own limit"),
            ({key: {"amount_max": -1}}, "whole number"),
            ({key: {"amount_max": "20000"}}, "whole number"),
            ({key: {"own_org": True}}, "cannot have the condition own_org"),
            ({key: {"anything": True}}, "cannot have the condition anything"),
            ({key: "mfa"}, "are an object"),
            ({"member/read": {"mfa": True}}, "which the role does not have")):
        refused = client.post("/api/v1/orgs/acme/roles", headers=auth, json={
            "name": "wide_buyer", "permissions": [key], "conditions": conditions})
        assert refused.status_code == 400, conditions
        assert refused.get_json()["code"] == "invalid_condition"
        assert text in refused.get_json()["title"], (conditions, refused.get_json())
    plain = client.post("/api/v1/orgs/acme/roles", headers=auth, json={
        "name": "wide_buyer", "permissions": ["purchase_order/approve"]})
    assert plain.status_code == 400 and key in plain.get_json()["title"]
    assert role_id(tx, "wide_buyer") is None and not audit_events(app, "custom_role.create")


def test_no_escalation_through_conditional_permissions(app, tx, two_orgs):
    """Alice (owner, no buyer) cannot put approvals into a role, nor grant one that has
    them; a holder of a narrowed role cannot compose a wider one from it."""
    grant(tx, "bob@globex.test", "globex", "org_owner")
    client = app.test_client()
    alice = token_for(tx, "alice@acme.test")
    offer = _approve_key(client, alice)
    assert offer["held"] is False
    refused = client.post("/api/v1/orgs/acme/roles", headers=alice, json={
        "name": "approver", "permissions": [offer["permission"]]})
    assert refused.status_code == 403 and refused.get_json()["code"] == "escalation"
    page = as_user(app, "alice@acme.test").get("/o/acme/admin/roles").get_data(as_text=True)
    assert f'value="{offer["permission"]}" disabled' in page
    # Mia is a buyer and composes a narrowed approver; Max holds it and manages roles.
    grant(tx, "mia@acme.test", "acme", "buyer")
    grant(tx, "mia@acme.test", "acme", "org_owner")
    mia = token_for(tx, "mia@acme.test")
    made = client.post("/api/v1/orgs/acme/roles", headers=mia, json={
        "name": "small_approver", "permissions": [offer["permission"]],
        "conditions": {offer["permission"]: {"amount_max": 1000}}})
    assert made.status_code == 201
    max_id = two_orgs["max@acme.test"]
    assert client.post(f"/api/v1/orgs/acme/members/{max_id}/roles", headers=mia,
                       json={"role": "small_approver"}).status_code == 200
    grant(tx, "max@acme.test", "acme", "org_owner")
    max_token = token_for(tx, "max@acme.test")
    wider = client.post("/api/v1/orgs/acme/roles", headers=max_token, json={
        "name": "big_approver", "permissions": [offer["permission"]]})
    assert wider.status_code == 403 and wider.get_json()["code"] == "escalation"
    # Alice may not grant the approver role she could not compose either.
    denied = client.post(f"/api/v1/orgs/acme/members/{two_orgs['uma@acme.test']}/roles",
                         headers=alice, json={"role": "small_approver"})
    assert denied.status_code == 403
    assert _decide(app, max_id, "approve", 900) and not _decide(app, max_id, "approve", 1001)
