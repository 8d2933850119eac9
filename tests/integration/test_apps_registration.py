"""Operators register and change apps from the apps pages and the JSON API: the secret is
shown once, redirect URIs can be edited, a rotated secret keeps working for its grace
period, and every change is in the audit trail."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import sqlalchemy as sa

from portal.db import utcnow
from portal.models import OAuthApp
from tests.conftest import audit_events, csrf_token, services_of, sign_in
from tests.integration.provider_helpers import register

SECRET = re.compile(r'<code class="secret">([^<]+)</code>')


def _operator(app, make_user):
    make_user("ops@trellis.test", operator=True)
    client = app.test_client()
    sign_in(client, "ops@trellis.test")
    return client


def _token_status(client, client_id: str, secret: str) -> int:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return client.post("/oauth/token", data={"grant_type": "client_credentials",
                                             "scope": "authz"},
                       headers={"Authorization": f"Basic {basic}"}).status_code


def _app_row(app, client_id: str) -> OAuthApp:
    with services_of(app).db.sessions() as session:
        row = session.scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id))
        session.expunge(row)
        return row


def test_operator_registers_an_app_and_sees_the_secret_once(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    operator = _operator(app, make_user)
    token = csrf_token(operator, "/admin/apps/new")
    answer = operator.post("/admin/apps/new", data={
        "csrf_token": token, "name": "Ticketing", "client_type": "confidential",
        "auth_method": "client_secret_basic",
        "redirect_uris": "https://tickets.example/cb\nhttps://tickets.example/cb2",
        "organizations": "acme", "grant_types": ["authorization_code", "client_credentials"],
        "scopes": ["openid", "email", "authz"], "consent_required": "1",
        "access_token_seconds": "900", "refresh_token_seconds": "86400",
        "id_token_signed_response_alg": "ES256",
        "initiate_login_uri": "https://tickets.example/login"})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "shown only this once" in page
    secret = SECRET.search(page).group(1)
    client_id = re.search(r"<code>(app_[0-9a-f]+)</code>", page).group(1)
    row = _app_row(app, client_id)
    assert row.redirect_uris == ["https://tickets.example/cb", "https://tickets.example/cb2"]
    assert row.id_token_signed_response_alg == "ES256" and row.access_token_seconds == 900
    assert secret not in (row.secret_hash or "")
    # The secret works, and no page shows it again.
    assert _token_status(operator, client_id, secret) == 200
    assert secret not in operator.get(f"/admin/apps/{client_id}").get_data(as_text=True)
    assert secret not in operator.get("/admin/apps").get_data(as_text=True)
    [event] = audit_events(app, "app.create")
    assert event.actor == "ops@trellis.test" and event.target == f"app:{client_id}"


def test_bad_registration_shows_the_form_again_and_writes_nothing(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    operator = _operator(app, make_user)
    token = csrf_token(operator, "/admin/apps/new")
    answer = operator.post("/admin/apps/new", data={
        "csrf_token": token, "name": "Sloppy", "client_type": "confidential",
        "redirect_uris": "http://sloppy.example/cb", "organizations": "acme",
        "grant_types": ["authorization_code"], "scopes": ["openid"]})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422 and "must be https" in page
    assert 'value="Sloppy"' in page  # the operator's input is kept
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OAuthApp)) == 0
    assert audit_events(app, "app.create") == []


def test_operator_edits_redirect_uris_and_the_audit_names_the_change(app, make_org,
                                                                      make_user):
    make_org("acme", "Acme Supplies")
    registered = register(app)
    operator = _operator(app, make_user)
    page = operator.get(f"/admin/apps/{registered.client_id}").get_data(as_text=True)
    assert "http://127.0.0.1:9/callback" in page
    token = csrf_token(operator, f"/admin/apps/{registered.client_id}")
    form = {"csrf_token": token, "name": "Supplier Portal",
            "redirect_uris": "https://supplier.example/callback", "organizations": "acme",
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": ["openid", "profile", "email", "org", "roles"], "consent_required": "1",
            "access_token_seconds": "600", "refresh_token_seconds": str(30 * 86400),
            "id_token_signed_response_alg": "RS256"}
    answer = operator.post(f"/admin/apps/{registered.client_id}", data=form)
    assert answer.status_code == 302
    assert _app_row(app, registered.client_id).redirect_uris == [
        "https://supplier.example/callback"]
    [event] = audit_events(app, "app.update")
    assert event.details["redirect_uris"] == [["http://127.0.0.1:9/callback"],
                                              ["https://supplier.example/callback"]]
    # A bad change is refused whole: nothing written, nothing audited.
    bad = operator.post(f"/admin/apps/{registered.client_id}",
                        data={**form, "redirect_uris": "https://x.example/*",
                              "name": "Renamed"})
    assert bad.status_code == 422 and "no fragment or wildcard" in bad.get_data(as_text=True)
    row = _app_row(app, registered.client_id)
    assert row.name == "Supplier Portal"
    assert len(audit_events(app, "app.update")) == 1


def test_rotated_secret_keeps_the_old_one_for_the_grace_period(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    registered = register(app, name="Backend", redirect_uris=[],
                          grant_types=["client_credentials"], scopes=["authz"])
    operator = _operator(app, make_user)
    token = csrf_token(operator, f"/admin/apps/{registered.client_id}")
    answer = operator.post(f"/admin/apps/{registered.client_id}/secret",
                           data={"csrf_token": token, "grace_seconds": "3600"})
    new_secret = SECRET.search(answer.get_data(as_text=True)).group(1)
    assert new_secret != registered.secret
    assert _token_status(operator, registered.client_id, new_secret) == 200
    assert _token_status(operator, registered.client_id, registered.secret) == 200
    [event] = audit_events(app, "app.rotate_secret")
    assert event.details["grace_seconds"] == 3600 and event.actor == "ops@trellis.test"
    # Once the grace period is over, the old secret is refused.
    with services_of(app).db.transaction() as session:
        session.execute(sa.update(OAuthApp).values(
            previous_secret_expires_at=utcnow() - timedelta(seconds=1)))
    app.extensions.get("trellis_oauth_clients", {}).clear()
    assert _token_status(operator, registered.client_id, registered.secret) == 401
    assert _token_status(operator, registered.client_id, new_secret) == 200
    # Without a grace period the replaced secret stops at once.
    again = operator.post(f"/admin/apps/{registered.client_id}/secret",
                          data={"csrf_token": token, "grace_seconds": "0"})
    newest = SECRET.search(again.get_data(as_text=True)).group(1)
    assert _token_status(operator, registered.client_id, new_secret) == 401
    assert _token_status(operator, registered.client_id, newest) == 200


def test_members_cannot_register_edit_or_rotate(app, client, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    registered = register(app)
    sign_in(client, "alice@acme.test")
    token = csrf_token(client, "/account/apps")
    assert client.get("/admin/apps/new").status_code == 403
    assert client.post("/admin/apps/new", data={"csrf_token": token, "name": "X"}
                       ).status_code == 403
    assert client.post(f"/admin/apps/{registered.client_id}",
                       data={"csrf_token": token, "name": "X"}).status_code == 403
    assert client.post(f"/admin/apps/{registered.client_id}/secret",
                       data={"csrf_token": token}).status_code == 403
    assert client.get("/api/v1/admin/apps").status_code == 403
    assert _app_row(app, registered.client_id).name == "Supplier Portal"


# -- the JSON API ---------------------------------------------------------------------------

def test_operator_api_creates_changes_rotates_and_disables(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    operator = _operator(app, make_user)
    csrf = {"X-CSRFToken": csrf_token(operator, "/admin/apps")}
    assert operator.post("/api/v1/admin/apps", json={"name": "X"}).status_code == 400
    created = operator.post("/api/v1/admin/apps", headers=csrf, json={
        "name": "Ticketing", "redirect_uris": ["https://tickets.example/cb"],
        "organizations": ["acme"], "subject_type": "pairwise",
        "id_token_signed_response_alg": "ES256"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert secret and body["sector_identifier"] == "tickets.example"
    listed = operator.get("/api/v1/admin/apps").get_json()["apps"]
    assert [a["client_id"] for a in listed] == [client_id]
    assert "client_secret" not in listed[0] and secret not in str(listed)

    changed = operator.patch(f"/api/v1/admin/apps/{client_id}", headers=csrf,
                             json={"redirect_uris": ["https://tickets.example/new"]})
    assert changed.get_json()["redirect_uris"] == ["https://tickets.example/new"]
    refused = operator.patch(f"/api/v1/admin/apps/{client_id}", headers=csrf,
                             json={"subject_type": "public"})
    assert refused.status_code == 422 and refused.get_json()["field"] == "subject_type"
    refused = operator.patch(f"/api/v1/admin/apps/{client_id}", headers=csrf,
                             json={"token_endpoint_auth_method": "client_secret_post"})
    assert refused.get_json()["field"] == "token_endpoint_auth_method"
    bad = operator.patch(f"/api/v1/admin/apps/{client_id}", headers=csrf,
                         json={"redirect_uris": "https://tickets.example/new"})
    assert bad.status_code == 422

    rotated = operator.post(f"/api/v1/admin/apps/{client_id}/secret", headers=csrf,
                            json={"grace_seconds": 600}).get_json()
    assert rotated["client_secret"] != secret and rotated["previous_secret_valid_until"]
    off = operator.put(f"/api/v1/admin/apps/{client_id}/enabled", headers=csrf,
                       json={"enabled": False})
    assert off.get_json()["enabled"] is False
    actions = [e.action for e in audit_events(app) if e.action.startswith("app.")]
    assert actions == ["app.create", "app.update", "app.rotate_secret", "app.disable"]
    assert operator.get("/api/v1/admin/apps/app_nope").status_code == 404


def test_automation_token_with_apps_manage_scope(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    robot = register(app, name="Ops automation", redirect_uris=[],
                     grant_types=["client_credentials"], scopes=["apps:manage", "authz"])
    client = app.test_client()
    basic = base64.b64encode(f"{robot.client_id}:{robot.secret}".encode()).decode()

    def token_for(scope):
        return client.post("/oauth/token", data={"grant_type": "client_credentials",
                                                 "scope": scope},
                           headers={"Authorization": f"Basic {basic}"}).get_json()

    manage = {"Authorization": "Bearer " + token_for("apps:manage")["access_token"]}
    created = client.post("/api/v1/admin/apps", headers=manage, json={
        "name": "Device fleet", "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
        "client_type": "public", "scopes": ["openid"], "organizations": ["acme"]})
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["client_secret"] is None
    [event] = audit_events(app, "app.create")[-1:]
    assert event.actor == f"app:{robot.client_id}"
    # A token without the scope, or none, gets nothing.
    authz_only = {"Authorization": "Bearer " + token_for("authz")["access_token"]}
    assert client.get("/api/v1/admin/apps", headers=authz_only).status_code == 401
    assert client.get("/api/v1/admin/apps").status_code == 401


def test_org_admins_and_org_tokens_do_not_reach_the_apps_api(app, tx, make_org, make_user):
    from portal.services import org_tokens, organizations, roles, users
    from tests.conftest import CLI_CTX
    make_org("acme", "Acme Supplies")
    make_user("olivia@acme.test", org="acme")
    registered = register(app)
    with tx() as session:
        org = organizations.get(session, "acme")
        owner = users.get_by_email(session, "olivia@acme.test")
        roles.grant_manually(session, CLI_CTX, owner, org, "owner", {"owner"})
        _, token = org_tokens.create(session, CLI_CTX, org, owner.id, "Acme script",
                                     ["members:read"], 30)
    client = app.test_client()
    sign_in(client, "olivia@acme.test")
    csrf = {"X-CSRFToken": csrf_token(client, "/account/apps")}
    assert client.get("/api/v1/admin/apps").status_code == 403
    assert client.patch(f"/api/v1/admin/apps/{registered.client_id}", headers=csrf,
                        json={"name": "Mine"}).status_code == 403
    bearer = {"Authorization": f"Bearer {token}"}
    assert app.test_client().get("/api/v1/admin/apps", headers=bearer).status_code == 401
    assert _app_row(app, registered.client_id).name == "Supplier Portal"
