"""The decision API for apps (/api/v1/authz/...) is described in the OpenAPI document, with
its own tag, the API key and client-credentials schemes and the batch limit, and every answer
it gives a real app (allowed, denied, refused) matches that description. The document is
built once and plays no part in answering a decision."""

from __future__ import annotations

from openapi_spec_validator import validate as validate_spec

from portal import openapi
from portal.views import api
from tests.integration.provider_helpers import backend_token
from tests.integration.test_apps_api_openapi import _checker, _document
from tests.integration.test_decision_api import call, order, world  # noqa: F401

CHECK, BATCH, EXPLAIN = "/api/v1/authz/check", "/api/v1/authz/batch", "/api/v1/authz/explain"
PERMISSIONS = "/api/v1/authz/subjects/{subject_id}/permissions"


def test_decision_api_is_in_the_document(app):
    document = _document(app)
    validate_spec(document)
    routed = {(method.lower(), rule.rule.replace("<subject_id>", "{subject_id}"))
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api.")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    tagged = {(method, path) for path, items in document["paths"].items()
              for method, op in items.items() if "authz" in op.get("tags", ())}
    assert routed == tagged == {("post", CHECK), ("post", BATCH), ("post", EXPLAIN),
                                ("get", PERMISSIONS)}
    assert "authz" in {tag["name"] for tag in document["tags"]}
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiClientKey"]["bearerFormat"] == "trk_..."
    assert schemes["appAccessToken"]["flows"]["clientCredentials"]["scopes"].keys() == {"authz"}
    for method, path in tagged:
        op = document["paths"][path][method]
        assert op["security"] == [{"apiClientKey": []}, {"appAccessToken": ["authz"]}]
        assert {"200", "401", "403", "422", "503"} <= op["responses"].keys(), path
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    schemas = document["components"]["schemas"]
    checks = schemas["AuthzBatch"]["properties"]["checks"]
    assert (checks["minItems"], checks["maxItems"]) == (1, api.MAX_BATCH) == (1, 1000)
    assert set(schemas["AuthzCheck"]["required"]) == {"subject", "organization", "object",
                                                      "action"}
    assert "context" in schemas["AuthzCheck"]["properties"]
    page = app.test_client().get("/api/v1/docs").get_data(as_text=True)
    assert f"POST {CHECK}" in page and f"GET {PERMISSIONS}" in page


def test_api_key_answers_match_the_document(app, client, world):  # noqa: F811
    check = _checker(_document(app))
    key = world["key"]

    def ask(path, body):
        return check(call(client, key, path.removeprefix("/api/v1"), body), path, "post",
                     body)

    allowed = {"subject": world["alice"], "organization": "acme", "object": order(100),
               "action": "approve", "context": {"assurance": 2}}
    assert ask(CHECK, allowed)["allowed"] is True
    denied = ask(CHECK, {**allowed, "context": {"assurance": 1}})
    assert denied["allowed"] is False and denied["reason"] == "denied by rule"
    nothing = ask(CHECK, {"subject": {"id": world["alice"], "assigned_partners": ["x"]},
                          "organization": "acme", "object": "spaceship", "action": "fly"})
    assert (nothing["matched_rule"], nothing["reason"]) == (None, "no rule allows it")
    broken = ask(CHECK, {**allowed, "object": order("lots")})
    assert broken["allowed"] is False and broken["reason"].startswith("condition error")

    results = ask(BATCH, {"checks": [allowed, {**allowed, "context": {}}]})["results"]
    assert [r["allowed"] for r in results] == [True, False]
    explained = ask(EXPLAIN, allowed)
    assert explained["rule_source"] and explained["matched_rules"][0]["decided"] is True
    assert ask(EXPLAIN, {**allowed, "context": {}})["allowed"] is False

    listing = check(call(client, key, f"/authz/subjects/{world['alice']}/permissions?org=acme",
                         method="get"), PERMISSIONS, "get")
    assert {"object": "purchase_order", "action": "approve"}.items() <= \
        next(p for p in listing["permissions"] if p["action"] == "approve").items()

    # Refusals are problem documents with the status and code the document lists.
    bad = check(call(client, key, "/authz/check", {**allowed, "action": ""}), CHECK, "post")
    assert (bad["status"], bad["code"], bad["field"]) == (422, "invalid_request", "action")
    not_json = client.post(CHECK, data="subject=1", headers={"Authorization": f"Bearer {key}"})
    assert check(not_json, CHECK, "post")["field"] == "body"
    bad = check(call(client, key, "/authz/batch", {"checks": [allowed, {**allowed,
                                                                        "object": 3}]}),
                BATCH, "post")
    assert bad["field"] == "checks[1].object"
    assert check(call(client, key, "/authz/batch", {"checks": [allowed] * 1001}), BATCH,
                 "post")["field"] == "checks"
    assert check(call(client, key, "/authz/batch", {"checks": []}), BATCH,
                 "post")["status"] == 422
    other = check(call(client, key, "/authz/check", {**allowed, "organization": "globex"}),
                  CHECK, "post")
    assert other["code"] == "organization_not_granted"
    assert check(call(client, key, "/authz/subjects/1/permissions?org=globex", method="get"),
                 PERMISSIONS, "get")["status"] == 403
    assert check(call(client, key, "/authz/subjects/1/permissions", method="get"),
                 PERMISSIONS, "get")["field"] == "org"
    wrong = call(client, "trk_wrong", "/authz/check", allowed)
    assert check(wrong, CHECK, "post")["code"] == "unauthenticated"
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="trellis"'
    assert check(call(client, None, "/authz/explain", allowed), EXPLAIN, "post")["status"] \
        == 401
    huge = {"checks": [{**allowed, "context": {"pad": "x" * 2000}}] * 600}  # > 1 MiB
    assert check(call(client, key, "/authz/batch", huge), BATCH, "post")["code"] == \
        "too_large"


def test_access_token_answers_match_the_document(app, client, world):  # noqa: F811
    token = backend_token(app, client, "Supplier portal", "authz", ["acme"])
    check = _checker(_document(app))
    body = {"subject": world["alice"], "organization": "acme", "object": order(10),
            "action": "approve", "context": {"assurance": 2}}
    assert check(call(client, token, "/authz/check", body), CHECK, "post", body)["allowed"]
    batch = {"checks": [body, {**body, "organization": "globex"}]}
    assert check(call(client, token, "/authz/batch", batch), BATCH, "post",
                 batch)["code"] == "organization_not_granted"


def test_decisions_never_build_the_document(app, client, world, monkeypatch):  # noqa: F811
    """Built once per process (the same object every time), and the decision routes answer
    without it: nothing of the description is in their per-request path."""
    assert openapi.document() is openapi.document()

    def refuse(*args, **kwargs):
        raise AssertionError("the document was built while deciding")
    monkeypatch.setattr(openapi, "document", refuse)
    monkeypatch.setattr(api, "openapi_paths", refuse)
    body = {"subject": world["alice"], "organization": "acme", "object": order(10),
            "action": "approve"}
    for path, payload in (("/authz/check", body), ("/authz/batch", {"checks": [body]}),
                          ("/authz/explain", body)):
        assert call(client, world["key"], path, payload).status_code == 200, path
    assert call(client, world["key"], f"/authz/subjects/{world['alice']}/permissions?org=acme",
                method="get").status_code == 200
