"""The OpenAPI 3.1 document of the admin API, built from the routes' own ``OPERATIONS`` table,
and a plain HTML page that lists it (no third-party script: the CSP stays strict)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, render_template

from portal.permissions import public
from portal.services.org_tokens import SCOPES

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")
CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
PROBLEM = {"type": "object", "required": ["title", "status", "reference"], "properties": {
    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
    "detail": {"type": "string"}, "code": {"type": "string"}, "reference": {"type": "string"}}}


CREATED = {"create_invitation", "add_domain", "create_role"}
REQUIRED_BODY = {"grant_role", "verify_identity", "create_invitation", "add_domain",
                 "create_role", "update_role", "set_branding", "set_logo", "set_registration"}


def document() -> dict[str, Any]:
    from portal.views import apps_api
    from portal.views.admin_api import OPERATIONS, SCHEMAS
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = "/api/v1/orgs/{slug}" + CONVERTER.sub(r"{\2}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op)
    paths.update(apps_api.openapi_paths(_problem()))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trellis admin API", "version": "1",
                 "description": "What an organization's admins do in the portal, for scripts. "
                                "Every call under /api/v1/orgs is limited to the "
                                "organization in the path; /api/v1/admin/apps is the "
                                "operators' app registry."},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **apps_api.SCHEMAS, "Problem": PROBLEM},
            "securitySchemes": {
                "orgToken": {"type": "http", "scheme": "bearer",
                             "description": "An organization API token (trt_...). Scopes: "
                                            + "; ".join(f"{k}: {v}" for k, v in SCOPES.items())},
                "appsToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A client-credentials access token of an app "
                                             "registered with the apps:manage scope "
                                             "(operators' automation; /api/v1/admin/apps "
                                             "only)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "trellis",
                            "description": "A signed-in admin's session; changes also need "
                                           "the X-CSRFToken header."}}},
        "security": [{"orgToken": []}, {"session": []}],
    }


def _problem() -> dict[str, Any]:
    return {"description": "Refused; the body says why and carries a reference.",
            "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}}


def _operation(op) -> dict[str, Any]:
    parameters = [{"name": "slug", "in": "path", "required": True,
                   "schema": {"type": "string"}}]
    for converter, name in CONVERTER.findall(op.path):
        parameters.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "integer", "minimum": 1,
                                      "maximum": 2**31 - 1}
                           if converter == "int" else {"type": "string"}})
    if op.name == "list_members":
        parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in (
            ("q", {"type": "string", "maxLength": 200}),
            ("status", {"enum": ["active", "suspended"]}), ("role", {"type": "string"}),
            ("after", {"type": "string"}), ("limit", {"type": "integer", "minimum": 1,
                                                      "maximum": 500}))]
    parameters += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in op.query]
    problem = _problem()
    result: dict[str, Any] = {
        "operationId": op.name, "summary": op.summary,
        "description": f"Needs the scope `{op.scope}` and the permission "
                       f"`{op.action} {op.object_type}` in the organization.",
        "parameters": parameters,
        "responses": {"201" if op.name in CREATED else "200": {
            "description": "Done.", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.response}"}}}},
            **{code: problem for code in ("400", "401", "403", "404", "409", "422", "503")}},
    }
    if op.body is not None:
        result["requestBody"] = {"required": op.name in REQUIRED_BODY,
                                 "content": {"application/json": {"schema": op.body}}}
    return result


@bp.get("/openapi.json")
@public
def openapi_json():
    return jsonify(document())


@bp.get("/docs")
@public
def docs():
    return render_template("api_docs.html", doc=document())
