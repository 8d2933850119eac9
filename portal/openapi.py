"""The OpenAPI 3.1 document of Trellis's JSON APIs for scripts and apps (the organizations'
admin API, the operators' app registry, the decision API, the consents API), built from each
blueprint's own table of operations, and a plain HTML page that lists it (no third-party
script: the CSP stays strict). One document, one tag and security scheme per audience: a
generated client gets every API, and the shared pieces (the problem document) are defined
once. The document is built once per process, on its first request, and served from there:
it describes code, which does not change while the process runs."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from flask import Blueprint, current_app, render_template

from portal.permissions import public
from portal.services.org_tokens import SCOPES

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")
CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
# A database id in a path (``<int:...>``): ids are 32-bit serials.
ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
PROBLEM = {"type": "object", "required": ["title", "status", "reference"], "properties": {
    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
    "detail": {"type": "string"}, "code": {"type": "string"}, "reference": {"type": "string"},
    "field": {"type": "string", "description": "The parameter or field at fault (422)."}}}
TAGS = [
    {"name": "orgs", "description": "An organization's administration (members, "
                                    "invitations, SSO, domains, roles...), with an "
                                    "organization API token."},
    {"name": "apps", "description": "The operators' app registry."},
    {"name": "authz", "description": "The decision API for apps: may this subject do this "
                                     "action on this object in this organization? Single "
                                     "and batched checks, explanations and a subject's "
                                     "permissions, for the app's organizations only."},
    {"name": "consents", "description": "The consent ledger for apps: a user's current "
                                        "consents and a feed of every change, limited to "
                                        "members of the app's organizations."},
]


def refusal(description: str = "Refused; the body says why and carries a reference.",
            headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response object for an error: an RFC 9457 problem document (``code`` is stable)."""
    found: dict[str, Any] = {"description": description, "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    if headers:
        found["headers"] = headers
    return found


CREATED = {"create_invitation", "add_domain", "create_role"}
REQUIRED_BODY = {"grant_role", "verify_identity", "create_invitation", "add_domain",
                 "create_role", "update_role", "set_branding", "set_logo", "set_registration"}


@functools.cache
def document() -> dict[str, Any]:
    """The whole document, built on first use (treat it as read-only)."""
    from portal.views import api, apps_api, consent_api
    from portal.views.admin_api import OPERATIONS, SCHEMAS
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = "/api/v1/orgs/{slug}" + CONVERTER.sub(r"{\2}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op)
    paths.update(apps_api.openapi_paths(refusal()))
    paths.update(api.openapi_paths())
    paths.update(consent_api.openapi_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trellis API", "version": "1",
                 "description": "What an organization's admins do in the portal, for scripts, "
                                "and what apps read. Every call under /api/v1/orgs is "
                                "limited to the organization in the path; "
                                "/api/v1/admin/apps is the operators' app registry; "
                                "/api/v1/authz answers apps' authorization questions; "
                                "/api/v1/users/{user_id}/consents and "
                                "/api/v1/consents/changes answer apps about the members "
                                "of their organizations."},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **apps_api.SCHEMAS, **api.SCHEMAS, **consent_api.SCHEMAS,
                        "Problem": PROBLEM},
            "securitySchemes": {
                "orgToken": {"type": "http", "scheme": "bearer",
                             "description": "An organization API token (trt_...). Scopes: "
                                            + "; ".join(f"{k}: {v}" for k, v in SCOPES.items())},
                "appsToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A client-credentials access token of an app "
                                             "registered with the apps:manage scope "
                                             "(operators' automation; /api/v1/admin/apps "
                                             "only)."},
                **api.SECURITY_SCHEMES,
                "session": {"type": "apiKey", "in": "cookie", "name": "trellis",
                            "description": "A signed-in admin's session; changes also need "
                                           "the X-CSRFToken header."}}},
        "security": [{"orgToken": []}, {"session": []}],
    }


def _operation(op) -> dict[str, Any]:
    parameters = [{"name": "slug", "in": "path", "required": True,
                   "schema": {"type": "string"}}]
    for converter, name in CONVERTER.findall(op.path):
        parameters.append({"name": name, "in": "path", "required": True,
                           "schema": dict(ID) if converter == "int" else {"type": "string"}})
    if op.name == "list_members":
        parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in (
            ("q", {"type": "string", "maxLength": 200}),
            ("status", {"enum": ["active", "suspended"]}), ("role", {"type": "string"}),
            ("after", {"type": "string"}), ("limit", {"type": "integer", "minimum": 1,
                                                      "maximum": 500}))]
    parameters += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in op.query]
    problem = refusal()
    result: dict[str, Any] = {
        "operationId": op.name, "summary": op.summary, "tags": ["orgs"],
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


@functools.cache
def _encoded() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


@bp.get("/openapi.json")
@public
def openapi_json():
    return current_app.response_class(_encoded(), mimetype="application/json")


@bp.get("/docs")
@public
def docs():
    return render_template("api_docs.html", doc=document())
