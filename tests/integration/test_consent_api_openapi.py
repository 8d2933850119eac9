"""The consents API for apps (/api/v1/users/{user_id}/consents, /api/v1/consents/changes) is
described in the OpenAPI document, with its own tag and security schemes, and every answer it
gives a real app (successes and refusals) matches that description."""

from __future__ import annotations

from openapi_spec_validator import validate as validate_spec

from tests.integration.provider_helpers import backend_token
from tests.integration.test_apps_api_openapi import _checker, _document
from tests.integration.test_consent_api import _choose, _get, crm  # noqa: F401

USER, FEED = "/api/v1/users/{user_id}/consents", "/api/v1/consents/changes"


def test_consents_api_is_in_the_document(app):
    document = _document(app)
    validate_spec(document)
    routed = {(method.lower(), rule.rule.replace("<int:user_id>", "{user_id}"))
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("consentapi.")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    tagged = {(method, path) for path, items in document["paths"].items()
              for method, op in items.items() if "consents" in op.get("tags", ())}
    assert routed == tagged == {("get", USER), ("get", FEED)}
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiClientKey"]["scheme"] == "bearer"
    assert schemes["appAccessToken"]["flows"]["clientCredentials"]["scopes"].keys() == {"authz"}
    for path in (USER, FEED):
        op = document["paths"][path]["get"]
        assert op["security"] == [{"apiClientKey": []}, {"appAccessToken": ["authz"]}]
        assert {"200", "401", "503"} <= op["responses"].keys()
    assert "404" in document["paths"][USER]["get"]["responses"]
    feed_params = {p["name"]: p["schema"] for p in document["paths"][FEED]["get"]["parameters"]}
    assert feed_params["since"]["minimum"] == 0 and feed_params["limit"]["maximum"] == 500
    assert "consents" in {tag["name"] for tag in document["tags"]}
    page = app.test_client().get("/api/v1/docs").get_data(as_text=True)
    assert f"GET {USER}" in page and f"GET {FEED}" in page and "trellis api-client" in page


def test_api_key_answers_match_the_document(app, client, crm, tx):  # noqa: F811
    _choose(app, "alice@acme.test", ["product_news"])
    _choose(app, "bob@globex.test", ["product_news"])
    check = _checker(_document(app))
    key = crm["key"]

    state = check(_get(client, f"/api/v1/users/{crm['alice']}/consents", key), USER, "get")
    statuses = {c["purpose"]: c["status"] for c in state["consents"]}
    assert statuses["product_news"] == "granted" and statuses["terms"] == "never"

    _choose(app, "alice@acme.test", [])  # a withdrawal: a second record in the feed
    first = check(_get(client, f"{FEED}?since=0&limit=1", key), FEED, "get")
    assert first["more"] is True and len(first["changes"]) == 1
    rest = check(_get(client, f"{FEED}?since={first['next']}", key), FEED, "get")
    assert [c["status"] for c in rest["changes"]] == ["withdrawn"] and rest["more"] is False
    empty = check(_get(client, f"{FEED}?since={rest['next']}", key), FEED, "get")
    assert empty == {"changes": [], "next": rest["next"], "more": False}

    # Refusals are problem documents with the status and code the document lists.
    hidden = check(_get(client, f"/api/v1/users/{crm['bob']}/consents", key), USER, "get")
    assert hidden["status"] == 404 and hidden["code"] == "unknown_user"
    assert check(_get(client, "/api/v1/users/999999/consents", key), USER,
                 "get")["code"] == "unknown_user"
    wrong = _get(client, f"/api/v1/users/{crm['alice']}/consents", "trk_wrong")
    assert check(wrong, USER, "get")["code"] == "unauthenticated"
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="trellis"'
    assert check(client.get(FEED), FEED, "get")["status"] == 401
    for query, field in (("since=abc", "since"), ("since=-1", "since"),
                         ("limit=abc", "limit"), ("limit=0", "limit"), ("limit=501", "limit")):
        refused = check(_get(client, f"{FEED}?{query}", key), FEED, "get")
        assert (refused["status"], refused["field"]) == (422, field), query


def test_access_token_answers_match_the_document(app, client, crm):  # noqa: F811
    token = backend_token(app, client, "Newsletter", "authz", ["acme"])
    _choose(app, "alice@acme.test", ["product_news", "usage_analytics"])
    check = _checker(_document(app))
    state = check(_get(client, f"/api/v1/users/{crm['alice']}/consents", token), USER, "get")
    assert {c["purpose"] for c in state["consents"] if c["status"] == "granted"} == \
        {"product_news", "usage_analytics"}
    feed = check(_get(client, FEED, token), FEED, "get")
    assert {c["user_id"] for c in feed["changes"]} == {crm["alice"]}
    assert check(_get(client, f"/api/v1/users/{crm['bob']}/consents", token), USER,
                 "get")["status"] == 404
