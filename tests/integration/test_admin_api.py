"""The admin REST API: tokens, scopes, sessions with CSRF, the same rules as the pages, the
OpenAPI document, and no answer outside it (schema-driven requests)."""

from __future__ import annotations

import re
from datetime import timedelta

import jsonschema
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec

from portal.db import utcnow
from portal.models import Membership, OrgApiToken, RoleGrant
from portal.services import org_tokens, organizations
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_org_admin import (  # noqa: F401
    _globex_state,
    as_user,
    foreign_values,
    grant,
    held,
    member_status,
)

ALL = sorted(org_tokens.SCOPES)


def token_for(tx, email, slug="acme", scopes=ALL, days=30):
    from portal.services import users
    with tx() as session:
        user = users.get_by_email(session, email)
        _, secret = org_tokens.create(session, CLI_CTX, organizations.get(session, slug),
                                      user.id, "test", scopes, days)
    return {"Authorization": f"Bearer {secret}"}


def test_token_lists_and_changes_members(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    listed = client.get("/api/v1/orgs/acme/members?limit=2", headers=auth)
    assert listed.status_code == 200
    body = listed.get_json()
    assert body["total"] == 5 and [m["email"] for m in body["members"]] == [
        "alice@acme.test", "max@acme.test"] and body["next_after"] == "max@acme.test"
    max_id = two_orgs["max@acme.test"]
    done = client.post(f"/api/v1/orgs/acme/members/{max_id}/suspend", headers=auth, json={})
    assert done.status_code == 200 and done.get_json()["status"] == "suspended"
    assert member_status(tx, max_id).value == "suspended"
    granted = client.post(f"/api/v1/orgs/acme/members/{max_id}/roles", headers=auth,
                          json={"role": "auditor"})
    assert {"role": "auditor", "source": "manual"} in granted.get_json()["roles"]
    event = audit_events(app, "role.grant")[-1]
    assert event.actor_id == two_orgs["alice@acme.test"]  # the token acts for its creator
    with tx() as session:
        assert session.scalar(sa.select(OrgApiToken.last_used_at)) is not None


def test_token_limits(app, tx, two_orgs):
    client = app.test_client()
    read_only = token_for(tx, "alice@acme.test", scopes=["members:read"])
    refused = client.post(f"/api/v1/orgs/acme/members/{two_orgs['max@acme.test']}/suspend",
                          headers=read_only, json={})
    assert refused.status_code == 403 and refused.get_json()["code"] == "scope_missing"
    assert client.get("/api/v1/orgs/globex/members", headers=read_only).status_code == 404
    uma = token_for(tx, "uma@acme.test")  # a user manager's token cannot make owners
    escalation = client.post(f"/api/v1/orgs/acme/members/{two_orgs['max@acme.test']}/roles",
                             headers=uma, json={"role": "org_owner"})
    assert escalation.status_code == 403 and escalation.get_json()["code"] == "escalation"
    with tx() as session:
        session.execute(sa.update(OrgApiToken).values(expires_at=utcnow() - timedelta(1)))
    expired = client.get("/api/v1/orgs/acme/members", headers=read_only)
    assert expired.status_code == 401 and expired.get_json()["code"] == "invalid_token"
    forged = client.get("/api/v1/orgs/acme/members", headers={"Authorization": "Bearer trt_x"})
    assert forged.status_code == 401
    nothing = client.get("/api/v1/orgs/acme/members")
    assert nothing.status_code == 401 and "reference" in nothing.get_json()


def test_revoked_token_stops_at_once(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    assert client.get("/api/v1/orgs/acme/members", headers=auth).status_code == 200
    owner = as_user(app, "alice@acme.test")
    with tx() as session:
        token_id = session.scalar(sa.select(OrgApiToken.id))
    owner.post(f"/o/acme/admin/tokens/{token_id}/revoke",
               data={"csrf_token": csrf_token(owner, "/")})
    assert client.get("/api/v1/orgs/acme/members", headers=auth).status_code == 401


def test_session_callers_need_the_csrf_header_for_changes(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    assert uma.get("/api/v1/orgs/acme/members").status_code == 200
    path = f"/api/v1/orgs/acme/members/{two_orgs['max@acme.test']}/suspend"
    assert uma.post(path, json={}).status_code == 400
    assert member_status(tx, two_orgs["max@acme.test"]).value == "active"
    token = csrf_token(uma, "/")
    assert uma.post(path, json={}, headers={"X-CSRFToken": token}).status_code == 200


def test_owner_creates_a_token_in_the_page(app, tx, two_orgs):
    owner = as_user(app, "alice@acme.test")
    page = owner.post("/o/acme/admin/tokens", data={
        "csrf_token": csrf_token(owner, "/"), "name": "HR sync", "scopes": ["members:read"],
        "days": "30"}).get_data(as_text=True)
    secret = re.search(r'id="token-secret" type="text" readonly value="(trt_[^"]+)"',
                       page).group(1)
    listed = app.test_client().get("/api/v1/orgs/acme/members",
                                   headers={"Authorization": f"Bearer {secret}"})
    assert listed.status_code == 200
    with tx() as session:
        assert secret not in session.scalar(sa.select(OrgApiToken.token_hash))
    uma = as_user(app, "uma@acme.test")
    assert uma.get("/o/acme/admin/tokens").status_code == 403


# -- the document ------------------------------------------------------------------------

def spec(app):
    return app.test_client().get("/api/v1/openapi.json").get_json()


def test_openapi_document_is_valid_and_complete(app):
    document = spec(app)
    validate_spec(document)
    documented = {(method.upper(), path) for path, ops in document["paths"].items()
                  for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("adminapi.", "appsapi.", "api.", "consentapi.")):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routed |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    assert "GET /api/v1/orgs/{slug}/members" in app.test_client().get(
        "/api/v1/docs").get_data(as_text=True)


def test_answers_match_the_document(app, tx, two_orgs):
    document, client = spec(app), app.test_client()
    auth = token_for(tx, "alice@acme.test")
    resolver = {"components": document["components"]}

    def check(response, path, method):
        op = document["paths"][path][method]
        status = str(response.status_code)
        assert status in op["responses"], (path, method, status)
        schema = op["responses"][status]["content"]
        schema = next(iter(schema.values()))["schema"]
        jsonschema.validate(response.get_json(), {**schema, **resolver})

    max_id = two_orgs["max@acme.test"]
    for method, url, path, body in (
            ("get", "/api/v1/orgs/acme/members", "/api/v1/orgs/{slug}/members", None),
            ("get", f"/api/v1/orgs/acme/members/{max_id}",
             "/api/v1/orgs/{slug}/members/{user_id}", None),
            ("post", "/api/v1/orgs/acme/invitations", "/api/v1/orgs/{slug}/invitations",
             {"email": "new@acme.test"}),
            ("get", "/api/v1/orgs/acme/invitations", "/api/v1/orgs/{slug}/invitations", None),
            ("get", "/api/v1/orgs/acme/connections", "/api/v1/orgs/{slug}/connections", None),
            ("post", f"/api/v1/orgs/acme/members/{max_id}/identity-verification",
             "/api/v1/orgs/{slug}/members/{user_id}/identity-verification",
             {"method": "document", "note": "passport"}),
            ("post", f"/api/v1/orgs/acme/members/{max_id}/identity-verification",
             "/api/v1/orgs/{slug}/members/{user_id}/identity-verification",
             {"method": "selfie", "note": "x"}),
            ("get", "/api/v1/orgs/acme/members/999999",
             "/api/v1/orgs/{slug}/members/{user_id}", None)):
        response = client.open(url, method=method.upper(), headers=auth, json=body)
        check(response, path, method)


def test_connection_allowed_domains_over_the_api(app, tx, two_orgs, oidc_provider):
    from portal.services import connections
    from tests.conftest import services_of
    with tx() as session:
        row = connections.create_oidc(session, CLI_CTX, services_of(app).secrets,
                                      org_slug="acme", name="Acme SSO", client_id="c",
                                      client_secret="s", issuer=oidc_provider.issuer)
        connection_id = row.id
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    url = f"/api/v1/orgs/acme/connections/{connection_id}/allowed-domains"
    done = client.put(url, headers=auth, json={"allowed_domains": ["acme.test"]})
    assert done.status_code == 200 and done.get_json()["allowed_domains"] == ["acme.test"]
    wrong = client.put(url, headers=auth, json={"allowed_domains": "acme.test"})
    assert wrong.status_code == 422 and wrong.get_json()["field"] == "allowed_domains"
    read_only = token_for(tx, "alice@acme.test", scopes=["connections:read"])
    assert client.put(url, headers=read_only, json={"allowed_domains": []}).status_code == 403
    assert client.get(f"/api/v1/orgs/acme/connections/{connection_id}",
                      headers=auth).get_json()["allowed_domains"] == ["acme.test"]


@pytest.fixture
def fuzz_target(app, tx, two_orgs):
    return spec(app), app.test_client(), token_for(tx, "alice@acme.test")


def from_schema(schema):
    """Values a JSON schema allows (the subset the document uses), with realistic edges."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -2**40),
                           max_value=schema.get("maximum", 2**40))
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 60))
    if kind == "boolean":
        return st.booleans()
    if kind == "object":
        properties = schema.get("properties", {})
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in properties.items() if k in schema.get("required", [])},
            optional={k: from_schema(v) for k, v in properties.items()
                      if k not in schema.get("required", [])})
    return st.none()


def _operations(document):
    return [(path, method, op) for path, ops in document["paths"].items()
            for method, op in ops.items()]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_request_the_document_allows_gets_a_server_error(fuzz_target, data):
    """Generated from the document itself: any path parameters, query and body it allows
    (and bodies it does not) get a 2xx or a 4xx problem, never a 5xx."""
    document, client, auth = fuzz_target
    path, method, op = data.draw(st.sampled_from(_operations(document)))
    url = path.replace("{slug}", data.draw(st.sampled_from(["acme", "globex", "nope"])))
    for parameter in op["parameters"]:
        if parameter["in"] == "path" and parameter["name"] != "slug":
            value = data.draw(from_schema(parameter["schema"]) if parameter["schema"].get(
                "type") == "integer" else st.text("abcz_-", min_size=1, max_size=12))
            url = url.replace("{" + parameter["name"] + "}", str(value))
    query = {}
    for parameter in op["parameters"]:
        if parameter["in"] == "query" and data.draw(st.booleans()):
            query[parameter["name"]] = str(data.draw(from_schema(parameter["schema"])))
    body = None
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        body = data.draw(st.one_of(from_schema(schema), st.none(), st.integers(),
                                   st.lists(st.integers(), max_size=2)))
    response = client.open(url, method=method.upper(), headers=auth, query_string=query,
                           json=body)
    assert response.status_code < 500, (method, url, query, body, response.get_data()[:300])
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json"
        assert "reference" in response.get_json()


# -- tenant isolation over the API ------------------------------------------------------

def test_every_api_route_refuses_another_organizations_ids(app, tx, two_orgs):
    with app.app_context():
        values = foreign_values(tx, two_orgs)
    values["role"] = "member"
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    before = _globex_state(tx)
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("adminapi."):
            continue
        unknown = set(rule.arguments) - set(values)
        assert not unknown, f"{rule.rule}: cannot fill {unknown}; extend foreign_values"
        for slug in ("acme", "globex"):
            path = rule.build({**values, "slug": slug}, append_unknown=False)[1]
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                if slug == "acme" and set(rule.arguments) == {"slug"}:
                    continue  # Acme's own lists: allowed, and checked to hold only Acme
                response = client.open(path, method=method, headers=auth,
                                       json={"role": "member", "email": "x@globex.test"})
                assert response.status_code in (403, 404), (method, path,
                                                             response.status_code)
                assert "carol" not in response.get_data(as_text=True)
    for path in ("/api/v1/orgs/acme/members", "/api/v1/orgs/acme/invitations",
                 "/api/v1/orgs/acme/connections"):
        body = client.get(path, headers=auth).get_data(as_text=True).lower()
        assert "globex" not in body and "carol" not in body
    assert _globex_state(tx) == before
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Membership)) >= 6
        assert session.scalar(sa.select(sa.func.count()).select_from(RoleGrant)) >= 3


def test_invitations_over_the_api_are_emailed(app, tx, two_orgs):
    from portal.models import OutboxMessage
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    made = client.post("/api/v1/orgs/acme/invitations", headers=auth,
                       json={"email": "Nina@Acme.test", "role": "member"})
    assert made.status_code == 201
    link = made.get_json()["link"]
    resent = client.post(f"/api/v1/orgs/acme/invitations/{made.get_json()['id']}/resend",
                         headers=auth)
    new_link = resent.get_json()["link"]
    with tx() as session:
        mails = session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(m.to_address, m.template) for m in mails] == [
            ("nina@acme.test", "invitation"), ("nina@acme.test", "invitation")]
        assert link in mails[0].text_body and new_link in mails[1].text_body
        assert "Acme Supplies" in mails[0].html_body


# -- identity verification --------------------------------------------------------------

def identity(tx, user_id):
    from portal.models import User
    with tx() as session:
        user = session.get(User, user_id)
        return user.identity_level, user.identity_method


def verify_url(user_id, slug="acme"):
    return f"/api/v1/orgs/{slug}/members/{user_id}/identity-verification"


def test_admins_record_an_identity_check_over_the_api(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "uma@acme.test")  # a user manager
    max_id = two_orgs["max@acme.test"]
    before = client.get(f"/api/v1/orgs/acme/members/{max_id}", headers=auth).get_json()
    assert (before["identity_level"], before["identity_method"],
            before["identity_verified_at"]) == (0, None, None)
    done = client.post(verify_url(max_id), headers=auth,
                       json={"method": "document", "note": "  passport, checked by Uma  "})
    assert done.status_code == 200, done.get_json()
    body = done.get_json()
    assert (body["user_id"], body["identity_level"], body["identity_method"]) == (
        max_id, 3, "document") and body["identity_verified_at"]
    assert identity(tx, max_id) == (3, "document")
    event = audit_events(app, "user.identity_verify")[-1]
    assert event.actor_id == two_orgs["uma@acme.test"]  # the token acts for its creator
    assert event.target == "user:max@acme.test" and event.reason == "passport, checked by Uma"
    assert event.details == {"before": [0, ""], "after": [3, "document"]}
    assert event.organization_id is not None
    # The member detail shows it from then on; a later check replaces the method.
    shown = client.get(f"/api/v1/orgs/acme/members/{max_id}", headers=auth).get_json()
    assert (shown["identity_level"], shown["identity_method"]) == (3, "document")
    again = client.post(verify_url(max_id), headers=auth,
                        json={"method": "in_person", "note": "met at the Lyon office"})
    assert again.get_json()["identity_method"] == "in_person"
    assert audit_events(app, "user.identity_verify")[-1].details["before"] == [3, "document"]


def test_identity_verification_refuses_bad_input(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    max_id = two_orgs["max@acme.test"]
    unknown = client.post(verify_url(max_id), headers=auth,
                          json={"method": "selfie", "note": "looked fine"})
    assert unknown.status_code == 400 and unknown.mimetype == "application/problem+json"
    problem = unknown.get_json()
    assert problem["code"] == "unknown_method" and problem["field"] == "method"
    assert problem["allowed"] == ["in_person", "document"] and "selfie" in problem["title"]
    for body, field in (({"note": "x"}, "method"), ({"method": 3, "note": "x"}, "method"),
                        ({"method": "in_person"}, "note"),
                        ({"method": "in_person", "note": "   "}, "note"),
                        ({"method": "in_person", "note": "x" * 301}, "note"),
                        (["in_person"], "body")):
        refused = client.post(verify_url(max_id), headers=auth, json=body)
        assert refused.status_code == 422 and refused.get_json()["field"] == field, body
    # Nobody vouches for themselves: a level 3 may be what a policy grants on.
    own = client.post(verify_url(two_orgs["alice@acme.test"]), headers=auth,
                      json={"method": "in_person", "note": "it is me"})
    assert own.status_code == 403 and own.get_json()["code"] == "self_change"
    missing = client.post(verify_url(999999), headers=auth,
                          json={"method": "in_person", "note": "x"})
    assert missing.status_code == 404 and missing.get_json()["code"] == "unknown_member"
    assert identity(tx, max_id) == (0, "")
    assert identity(tx, two_orgs["alice@acme.test"]) == (0, "")
    assert audit_events(app, "user.identity_verify") == []


def test_identity_verification_needs_the_manage_member_permission(app, tx, two_orgs):
    client, max_id = app.test_client(), two_orgs["max@acme.test"]
    grant(tx, "mia@acme.test", "acme", "auditor")  # reads members, does not manage them
    auditor = token_for(tx, "mia@acme.test")
    assert client.get(f"/api/v1/orgs/acme/members/{max_id}", headers=auditor).status_code == 200
    refused = client.post(verify_url(max_id), headers=auditor,
                          json={"method": "in_person", "note": "x"})
    assert refused.status_code == 403 and refused.get_json()["code"] == "forbidden"
    read_only = token_for(tx, "alice@acme.test", scopes=["members:read"])
    refused = client.post(verify_url(max_id), headers=read_only,
                          json={"method": "in_person", "note": "x"})
    assert refused.status_code == 403 and refused.get_json()["code"] == "scope_missing"
    assert identity(tx, max_id) == (0, "")
    assert audit_events(app, "user.identity_verify") == []


def test_identity_verification_stays_in_its_organization(app, tx, two_orgs):
    client = app.test_client()
    acme_owner, globex_owner = token_for(tx, "alice@acme.test"), token_for(
        tx, "bob@globex.test", slug="globex")
    max_id, carol_id = two_orgs["max@acme.test"], two_orgs["carol@globex.test"]
    body = {"method": "in_person", "note": "x"}
    # Globex's owner: neither through Acme's path nor by naming Acme's member in Globex's.
    assert client.post(verify_url(max_id), headers=globex_owner, json=body).status_code == 404
    assert client.post(verify_url(max_id, "globex"), headers=globex_owner,
                       json=body).status_code == 404
    assert client.get(f"/api/v1/orgs/globex/members/{max_id}",
                      headers=globex_owner).status_code == 404
    # Acme's owner: Globex's member is no member of Acme, and Globex's path is closed.
    assert client.post(verify_url(carol_id), headers=acme_owner, json=body).status_code == 404
    assert client.post(verify_url(carol_id, "globex"), headers=acme_owner,
                       json=body).status_code == 404
    # A signed-in Globex admin (session with CSRF) gets the same 404.
    bob = as_user(app, "bob@globex.test")
    assert bob.post(verify_url(max_id), json=body,
                    headers={"X-CSRFToken": csrf_token(bob, "/")}).status_code == 404
    assert identity(tx, max_id) == (0, "") and identity(tx, carol_id) == (0, "")
    assert audit_events(app, "user.identity_verify") == []
