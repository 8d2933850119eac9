"""The decision API as a vendor app uses it."""

import pytest

from portal.services import api_clients
from tests.conftest import CLI_CTX, audit_events, services_of


@pytest.fixture
def world(app, tx, make_org, make_user):
    make_org("acme", "Acme")
    make_org("globex", "Globex")
    alice = make_user("alice@acme.test", org="acme")
    with tx() as session:
        services_of(app).role_grants.grant(session, alice.id, 1, "buyer", "manual")
        _, key = api_clients.create(session, CLI_CTX, "Supplier portal", ["acme"])
    return {"alice": str(alice.id), "key": key}


def call(client, key, path, body=None, method="post"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return getattr(client, method)(f"/api/v1{path}", json=body, headers=headers)


def order(amount):
    return {"type": "purchase_order", "owner_org": "acme", "amount": amount}


def test_check_allows_and_denies_with_the_rule_and_version(client, world):
    allowed = call(client, world["key"], "/authz/check", {
        "subject": world["alice"], "organization": "acme", "object": order(100),
        "action": "approve", "context": {"assurance": 2}})
    body = allowed.get_json()
    assert allowed.status_code == 200 and body["allowed"] is True
    assert body["matched_rule"][:4] == ["buyer", "*", "purchase_order", "approve"]
    assert body["policy_version"] and len(body["decision_id"]) == 16
    assert allowed.headers["Cache-Control"] == "no-store"  # no proxy keeps a decision
    denied = call(client, world["key"], "/authz/check", {
        "subject": {"id": world["alice"]}, "organization": "acme", "object": order(100),
        "action": "approve", "context": {"assurance": 1}}).get_json()
    assert denied["allowed"] is False and denied["matched_rule"][-1] == "deny"


def test_batch_and_its_limit(client, world):
    item = {"subject": world["alice"], "organization": "acme", "object": "purchase_order",
            "action": "read"}
    results = call(client, world["key"], "/authz/batch",
                   {"checks": [item, {**item, "action": "delete"}]}).get_json()["results"]
    assert [r["allowed"] for r in results] == [False, False]  # read needs owner_org == acme
    ok = {**item, "object": {"type": "purchase_order", "owner_org": "acme"}}
    assert call(client, world["key"], "/authz/batch", {"checks": [ok]}).get_json()[
        "results"][0]["allowed"]
    too_many = call(client, world["key"], "/authz/batch", {"checks": [item] * 1001})
    assert too_many.status_code == 422 and too_many.get_json()["field"] == "checks"


@pytest.mark.parametrize(("body", "field"), [
    ({"organization": "acme", "object": "x", "action": "read"}, "subject"),
    ({"subject": "1", "object": "x", "action": "read"}, "organization"),
    ({"subject": "1", "organization": "acme", "object": {"kind": "x"}, "action": "read"},
     "object"),
    ({"subject": "1", "organization": "acme", "object": "x", "action": 3}, "action"),
    ({"subject": "1", "organization": "acme", "object": "x", "action": "r", "context": []},
     "context"),
])
def test_malformed_requests_name_the_field(client, world, body, field):
    response = call(client, world["key"], "/authz/check", body)
    problem = response.get_json()
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert problem["field"] == field and problem["title"].startswith(f"{field}: ")


def test_batch_errors_name_the_item(client, world):
    response = call(client, world["key"], "/authz/batch", {"checks": [
        {"subject": "1", "organization": "acme", "object": "x", "action": "read"},
        {"subject": "1", "organization": "acme", "object": "x"}]})
    assert response.get_json()["field"] == "checks[1].action"


@pytest.mark.parametrize("key", [None, "wrong", "trk_not-a-real-key"])
def test_unauthenticated_callers_are_refused(client, world, key):
    response = call(client, key, "/authz/check", {"subject": "1", "organization": "acme",
                                                  "object": "x", "action": "read"})
    assert response.status_code == 401 and response.get_json()["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_app_may_only_ask_about_its_organizations(client, world):
    for org in ("globex", "no-such-org"):
        response = call(client, world["key"], "/authz/check", {
            "subject": world["alice"], "organization": org, "object": "x", "action": "read"})
        assert response.status_code == 403
        assert response.get_json()["code"] == "organization_not_granted"
    listing = call(client, world["key"], f"/authz/subjects/{world['alice']}/permissions?org="
                   "globex", method="get")
    assert listing.status_code == 403


def test_explain_and_permissions(client, world):
    explained = call(client, world["key"], "/authz/explain", {
        "subject": world["alice"], "organization": "acme", "object": order(10),
        "action": "approve", "context": {"assurance": 2}}).get_json()
    assert explained["allowed"] and set(explained["roles"]) == {"buyer", "member"}
    listing = call(client, world["key"], f"/authz/subjects/{world['alice']}/permissions?org="
                   "acme", method="get").get_json()
    actions = {(p["object"], p["action"]) for p in listing["permissions"]}
    assert {("purchase_order", "approve"), ("organization", "read")} <= actions
    assert listing["policy_version"]
    missing = call(client, world["key"], "/authz/subjects/1/permissions", method="get")
    assert missing.status_code == 422 and missing.get_json()["field"] == "org"


def test_api_client_cli_shows_the_key_once(app, tx, make_org, monkeypatch, settings):
    from click.testing import CliRunner

    from portal.cli import main
    from portal.models import ApiClient
    make_org("acme", "Acme")
    for name, value in {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
                        "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
                        "SECRET_KEY": settings["SECRET_KEY"]}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["api-client", "create", "Portal", "--org", "acme"])
    assert result.exit_code == 0, result.output
    key = result.output.split("key (shown once): ")[1].strip()
    with tx() as session:
        stored = session.query(ApiClient).one()
        assert key not in (stored.key_hash, stored.key_prefix) and stored.organizations == [
            "acme"]
    assert app.test_client().post("/api/v1/authz/check", headers={
        "Authorization": f"Bearer {key}"}, json={"subject": "1", "organization": "acme",
                                                 "object": "x", "action": "r"}).status_code == 200


def test_a_rotated_key_works_with_the_old_one_until_the_grace_period_ends(app, client, world):
    """The app rolls out its new key while the old one still works; then the old one stops
    (the operator ends the grace period, or it runs out)."""
    import datetime as dt
    import re

    import sqlalchemy as sa

    from portal.cli import main
    from portal.models import ApiClient
    body = {"subject": world["alice"], "organization": "acme", "object": "organization",
            "action": "read"}
    runner = app.test_cli_runner()
    result = runner.invoke(main, ["api-client", "rotate", "1", "--grace-hours", "1"])
    assert result.exit_code == 0, result.output
    new_key = re.search(r"(trk_\S+)", result.output).group(1)
    assert "previous key works until" in result.output
    app.extensions["trellis_api_keys"] = api_clients.KeyCache()  # no 5 s wait in the test
    for key in (world["key"], new_key):
        assert call(client, key, "/authz/check", body).status_code == 200
    listed = runner.invoke(main, ["api-client", "list"]).output
    assert "previous key until" in listed and new_key[:12] in listed

    # The grace period runs out: the old key stops, the new one goes on.
    with services_of(app).db.transaction() as session:
        session.execute(sa.update(ApiClient).values(
            previous_key_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    app.extensions["trellis_api_keys"] = api_clients.KeyCache()
    assert call(client, world["key"], "/authz/check", body).status_code == 401
    assert call(client, new_key, "/authz/check", body).status_code == 200

    # Rotating again with an explicit early revocation: only the newest key works.
    newest = re.search(r"(trk_\S+)", runner.invoke(
        main, ["api-client", "rotate", "1"]).output).group(1)
    app.extensions["trellis_api_keys"] = api_clients.KeyCache()
    assert call(client, new_key, "/authz/check", body).status_code == 200
    assert runner.invoke(main, ["api-client", "revoke-previous", "1"]).exit_code == 0
    app.extensions["trellis_api_keys"] = api_clients.KeyCache()
    assert call(client, new_key, "/authz/check", body).status_code == 401
    assert call(client, newest, "/authz/check", body).status_code == 200
    again = runner.invoke(main, ["api-client", "revoke-previous", "1"])
    assert again.exit_code == 1 and "no previous key" in again.output
    bad = runner.invoke(main, ["api-client", "rotate", "1", "--grace-hours", "-1"])
    assert bad.exit_code == 1 and "grace period" in bad.output
    actions = [e.action for e in audit_events(app) if e.action.startswith("api_client.")]
    assert actions[-3:] == ["api_client.rotate", "api_client.rotate",
                            "api_client.revoke_previous"]


def test_explain_gives_the_role_chain_the_rule_source_and_the_overridden_allow(
        client, world):
    """A buyer at password assurance: the approve-up-to-50,000 allow matched through
    alice -> buyer, but the no-MFA deny decided; both are named with file and line."""
    body = call(client, world["key"], "/authz/explain", {
        "subject": world["alice"], "organization": "acme", "object": order(100),
        "action": "approve", "context": {"assurance": 1}}).get_json()
    assert body["allowed"] is False and body["matched_rule"][-1] == "deny"
    assert body["rule_source"].startswith("kinds/partner.csv:")
    assert body["chain"] == ["*"]  # the deny applies to everyone
    by_effect = {m["effect"]: m for m in body["matched_rules"]}
    assert by_effect["allow"]["chain"] == [world["alice"], "buyer"]
    assert by_effect["allow"]["source"].startswith("kinds/partner.csv:")
    assert by_effect["allow"]["decided"] is False and by_effect["deny"]["decided"] is True
    assert body["chains"] == [[world["alice"], "buyer"], [world["alice"], "member"]]
    assert body["policy_version"] and len(body["decision_id"]) == 16


def test_trellis_policy_explain_prints_the_chain(app, world):
    from portal.cli import main
    runner = app.test_cli_runner()
    result = runner.invoke(main, ["policy", "explain", "alice@acme.test", "acme",
                                  "purchase_order", "approve", "--object", "owner_org=acme",
                                  "--object", "amount=900", "--context", "assurance=2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "ALLOW"
    assert "decided by: buyer, *, purchase_order, approve" in lines[1]
    assert "[kinds/partner.csv:" in lines[1]
    assert lines[2] == f"  role chain: {world['alice']} -> buyer"
    denied = runner.invoke(main, ["policy", "explain", world["alice"], "acme",
                                  "purchase_order", "approve", "--object", "owner_org=acme",
                                  "--object", "amount=900"])
    assert denied.output.startswith("DENY (denied by rule)")
    assert "overridden by the deny: buyer, *, purchase_order, approve" in denied.output
    as_json = runner.invoke(main, ["policy", "explain", "alice@acme.test", "acme", "member",
                                   "manage", "--json"])
    assert '"allowed": false' in as_json.output and '"chain": []' in as_json.output
    bad = runner.invoke(main, ["policy", "explain", "alice@acme.test", "acme", "member",
                               "manage", "--object", "not a pair"])
    assert bad.exit_code == 1 and "name=value" in bad.output
    unknown = runner.invoke(main, ["policy", "explain", "nobody@acme.test", "acme", "member",
                                   "manage"])
    assert unknown.exit_code == 1 and "There is no user" in unknown.output
