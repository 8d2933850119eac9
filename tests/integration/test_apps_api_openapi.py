"""The operators' apps API (/api/v1/admin/apps) is described in the OpenAPI document, and
every answer it gives (successes and refusals) matches that description."""

from __future__ import annotations

import jsonschema
from openapi_spec_validator import validate as validate_spec

from tests.conftest import csrf_token, sign_in
from tests.integration.provider_helpers import backend_token


def _operator(app, make_user):
    make_user("root@ops.test", operator=True)
    client = app.test_client()
    sign_in(client, "root@ops.test")
    return client


def _document(app):
    return app.test_client().get("/api/v1/openapi.json").get_json()


def test_apps_api_is_in_the_document(app):
    document = _document(app)
    validate_spec(document)
    ops = {(method, path) for path, items in document["paths"].items() for method in items
           if path.startswith("/api/v1/admin/apps")}
    assert ops == {("get", "/api/v1/admin/apps"), ("post", "/api/v1/admin/apps"),
                   ("get", "/api/v1/admin/apps/{client_id}"),
                   ("patch", "/api/v1/admin/apps/{client_id}"),
                   ("post", "/api/v1/admin/apps/{client_id}/secret"),
                   ("put", "/api/v1/admin/apps/{client_id}/enabled")}
    assert "appsToken" in document["components"]["securitySchemes"]
    assert "POST /api/v1/admin/apps" in app.test_client().get(
        "/api/v1/docs").get_data(as_text=True)


def _checker(document):
    resolver = {"components": document["components"]}

    def check(response, path: str, method: str, body=None) -> dict:
        op = document["paths"][path][method]
        if body is not None:  # what we sent is what the document allows
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            jsonschema.validate(body, {**schema, **resolver})
        status = str(response.status_code)
        assert status in op["responses"], (method, path, status, response.get_json())
        content = op["responses"][status]["content"]
        assert response.mimetype in content, (response.mimetype, list(content))
        schema = content[response.mimetype]["schema"]
        jsonschema.validate(response.get_json(), {**schema, **resolver})
        return response.get_json()
    return check


def test_operator_answers_match_the_document(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    operator = _operator(app, make_user)
    check = _checker(_document(app))
    csrf = {"X-CSRFToken": csrf_token(operator, "/admin/apps")}
    one, many = "/api/v1/admin/apps/{client_id}", "/api/v1/admin/apps"

    body = {"name": "Ticketing", "redirect_uris": ["https://tickets.example/cb"],
            "organizations": ["acme"], "subject_type": "pairwise",
            "id_token_signed_response_alg": "ES256"}
    created = check(operator.post(many, headers=csrf, json=body), many, "post", body)
    client_id = created["client_id"]
    assert created["client_secret"].startswith("trs_")
    listed = check(operator.get(many), many, "get")
    assert [a["client_id"] for a in listed["apps"]] == [client_id]
    url = f"/api/v1/admin/apps/{client_id}"
    assert check(operator.get(url), one, "get")["sector_identifier"] == "tickets.example"
    change = {"name": "Ticketing 2", "consent_required": False}
    assert check(operator.patch(url, headers=csrf, json=change), one, "patch",
                 change)["name"] == "Ticketing 2"
    grace = {"grace_seconds": 60}
    rotated = check(operator.post(url + "/secret", headers=csrf, json=grace),
                    one + "/secret", "post", grace)
    assert rotated["client_secret"] != created["client_secret"]
    assert rotated["previous_secret_valid_until"]
    off = {"enabled": False}
    assert check(operator.put(url + "/enabled", headers=csrf, json=off), one + "/enabled",
                 "put", off)["enabled"] is False

    # Refusals are problem documents with the status the document lists.
    refused = check(operator.patch(url, headers=csrf, json={"subject_type": "public"}),
                    one, "patch")
    assert refused["status"] == 422 and refused["field"] == "subject_type"
    bad = check(operator.post(many, headers=csrf, json={"name": "X",
                                                        "redirect_uris": ["http://x.example/"]}),
                many, "post")
    assert bad["field"] == "redirect_uris"
    assert check(operator.get("/api/v1/admin/apps/app_nope"), one, "get")["status"] == 404
    assert check(operator.post(many, json={"name": "No CSRF"}), many, "post")["status"] == 400
    assert check(app.test_client().get(many), many, "get")["status"] == 401


def test_automation_answers_match_the_document(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    client = app.test_client()
    auth = {"Authorization": "Bearer " + backend_token(app, client, "Ops automation",
                                                       "apps:manage")}
    check = _checker(_document(app))
    body = {"name": "Fleet", "client_type": "public", "scopes": ["openid"],
            "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
            "organizations": ["acme"]}
    created = check(client.post("/api/v1/admin/apps", headers=auth, json=body),
                    "/api/v1/admin/apps", "post", body)
    assert created["client_secret"] is None and created["client_type"] == "public"
    assert len(check(client.get("/api/v1/admin/apps", headers=auth), "/api/v1/admin/apps",
                     "get")["apps"]) == 2
    # An org admin's session: 403, as documented.
    make_user("olivia@acme.test", org="acme")
    member = app.test_client()
    sign_in(member, "olivia@acme.test")
    assert check(member.get("/api/v1/admin/apps"), "/api/v1/admin/apps",
                 "get")["status"] == 403
