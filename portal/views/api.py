"""The decision API for vendor apps: may this user do this here?

Apps authenticate with an API key (``Authorization: Bearer trk_...``) or an access token with
the ``authz`` scope from Trellis's token endpoint (client credentials), and may only ask about
the organizations they were granted. Every answer carries the policy version it was made
with, so an app can tell when its cached decisions are stale.

Described in the OpenAPI document (``/api/v1/openapi.json``, tag ``authz``): the tables at the
end of this module, plain data built once at import and merged by ``portal.openapi``. Nothing
of it runs while a decision is made: the document is for clients, not a validator in the
request path (see docs/performance.md, ``bench/authz_api.py``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from policies.engine import PolicyEngine
from portal.authz import explanation_dict
from portal.errors import Forbidden, InvalidRequest
from portal.extensions import csrf, db_session, services
from portal.permissions import ACCESS
from portal.services import api_clients

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # no cookies here: every call carries its API key
MAX_BATCH = 1000


def api_key_required(view: Callable) -> Callable:
    @wraps(view)
    def authenticated(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.startswith("Bearer ") else None
        if key and not key.startswith(api_clients.PREFIX):  # an access token from Trellis
            from portal.oauth import api_caller
            g.api_client = api_caller(key)
            if g.api_client is None:
                raise api_clients.Unauthenticated()
        else:  # a recently seen key is answered from the cache, without a database session
            cache = _key_cache()
            g.api_client = api_clients.cached(key, cache) or api_clients.authenticate(
                db_session(), key, cache)
        return view(*args, **kwargs)

    setattr(authenticated, ACCESS, "api_key")
    return authenticated


@bp.post("/authz/check")
@api_key_required
def check():
    return _json(_decide(_check_request(_body(), "")))


@bp.post("/authz/batch")
@api_key_required
def batch():
    checks = _body().get("checks")
    if not isinstance(checks, list) or not checks:
        raise InvalidRequest("checks", "must be a non-empty list")
    if len(checks) > MAX_BATCH:
        raise InvalidRequest("checks", f"at most {MAX_BATCH} checks per call")
    parsed = [_check_request(item, f"checks[{n}].") for n, item in enumerate(checks)]
    return _json({"results": [_decide(item) for item in parsed]})


@bp.post("/authz/explain")
@api_key_required
def explain():
    item = _check_request(_body(), "")
    answer = explanation_dict(_engine().explain(*item))
    answer["decision_id"] = secrets.token_hex(8)
    return jsonify(answer)


@bp.get("/authz/subjects/<subject_id>/permissions")
@api_key_required
def permissions(subject_id: str):
    org = request.args.get("org", "")
    if not org:
        raise InvalidRequest("org", "is required")
    _check_org(org)
    rules = _engine().permissions({"id": subject_id}, org)
    return jsonify(subject=subject_id, organization=org, permissions=rules,
                   policy_version=_engine().version(org))


def _key_cache() -> api_clients.KeyCache:
    return current_app.extensions.setdefault("trellis_api_keys", api_clients.KeyCache())


def _json(answer: dict[str, Any]) -> Response:
    """Decisions as compact JSON, encoded directly: the answers hold only strings, numbers,
    booleans, lists and None, so Flask's provider (key sorting, a fallback for dates and
    dataclasses) only added cost to the API's most frequent call."""
    return current_app.response_class(_ENCODE(answer) + "\n", mimetype="application/json")


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def _engine() -> PolicyEngine:
    return services().policy


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True, cache=False)
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return body


def _check_request(item: Any, prefix: str) -> tuple:
    if not isinstance(item, dict):
        raise InvalidRequest(prefix.rstrip(".") or "body", "must be an object")
    subject = item.get("subject")
    if isinstance(subject, str | int):
        subject = {"id": str(subject)}
    if not isinstance(subject, dict) or not isinstance(subject.get("id"), str | int) or \
            subject.get("id") in ("", None):
        raise InvalidRequest(f"{prefix}subject", "must be a user id or an object with an id")
    org = item.get("organization")
    if not isinstance(org, str) or not org:
        raise InvalidRequest(f"{prefix}organization", "must be an organization slug")
    obj = item.get("object")
    if isinstance(obj, str):
        obj = {"type": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise InvalidRequest(f"{prefix}object", "must be a type or an object with a type")
    action = item.get("action")
    if not isinstance(action, str) or not action:
        raise InvalidRequest(f"{prefix}action", "must be a string")
    context = item.get("context", {})
    if not isinstance(context, dict):
        raise InvalidRequest(f"{prefix}context", "must be an object")
    _check_org(org)
    return {**subject, "id": str(subject["id"])}, org, obj, action, context


def _check_org(org: str) -> None:
    if org not in (g.api_client.organizations or []):
        raise Forbidden("This app may not ask about that organization.",
                        code="organization_not_granted")


def _decide(item: tuple) -> dict[str, Any]:
    decision = _engine().decide(*item)
    answer = _answer(decision)
    decisions = services().decisions
    if decisions.enabled and decisions.wants(decision.allowed):
        decisions.add(answer["decision_id"], *item, decision, _caller_name())
    return answer


def _caller_name() -> str:
    """API keys have positive ids, OAuth apps (client credentials) negative ones."""
    caller_id = g.api_client.id
    return f"api_client:{caller_id}" if caller_id > 0 else f"oauth_app:{-caller_id}"


def _answer(decision) -> dict[str, Any]:
    return {"allowed": decision.allowed, "decision_id": secrets.token_hex(8),
            "matched_rule": list(decision.rule) if decision.rule else None,
            "reason": decision.reason or None, "policy_version": decision.version}


# --- the OpenAPI description (merged into /api/v1/openapi.json by portal.openapi) ----------
# What ``_check_request`` accepts and ``_answer``/``explanation_dict`` return, written out by
# hand: a test checks real answers against it, and schemathesis calls every route with it.

SECURITY_SCHEMES: dict[str, Any] = {
    "apiClientKey": {"type": "http", "scheme": "bearer", "bearerFormat": "trk_...",
                     "description": "An API key (trk_...) an operator created with "
                                    "`trellis api-client create NAME --org SLUG...`; the "
                                    "same key for the decision API and the consents API."},
    "appAccessToken": {"type": "oauth2", "description": "An access token of an app "
                                                       "registered with the authz scope, "
                                                       "from the client-credentials grant; "
                                                       "sent as Authorization: Bearer.",
                       "flows": {"clientCredentials": {
                           "tokenUrl": "/oauth/token",
                           "scopes": {"authz": "The decision API and the consents API, "
                                               "for the app's organizations."}}}},
}
SECURITY = [{"apiClientKey": []}, {"appAccessToken": ["authz"]}]
# A user id is text, as in every answer. A JSON whole number (42) is read as its text too, but
# is not documented: JSON Schema's integer also admits 42.0, which is refused.
_ID = {"type": "string", "minLength": 1, "description": "A user id."}
_RULE = {"type": "array", "items": {"type": "string"}, "minItems": 6, "maxItems": 6,
         "description": "The policy row: role (or *), domain, object type, action, condition, "
                        "effect (allow or deny)."}
_REF = "#/components/schemas/"
SCHEMAS: dict[str, Any] = {
    "AuthzCheck": {
        "type": "object", "required": ["subject", "organization", "object", "action"],
        "description": "One question: may this subject do this action on this object in this "
                       "organization, in this context? Attributes beyond id and type are "
                       "the caller's, for the policy's conditions (r.sub, r.obj, r.ctx); a "
                       "missing one reads as null. Other members are ignored.",
        "properties": {
            "subject": {"oneOf": [
                _ID,
                {"type": "object", "required": ["id"], "properties": {"id": _ID},
                 "additionalProperties": True,
                 "description": "The user id and attributes, e.g. assigned_partners."}]},
            "organization": {"type": "string", "minLength": 1,
                             "description": "The organization's slug, one the app was "
                                            "given; the domain of the decision."},
            "object": {"oneOf": [
                {"type": "string", "description": "The object type."},
                {"type": "object", "required": ["type"],
                 "properties": {"type": {"type": "string"}}, "additionalProperties": True,
                 "description": "The type (matched against the rules) and attributes, e.g. "
                                "owner_org, amount."}]},
            "action": {"type": "string", "minLength": 1,
                       "description": "A verb: read, manage, approve..."},
            "context": {"type": "object", "additionalProperties": True, "default": {},
                        "description": "The situation, e.g. assurance (1 password, 2 "
                                       "second factor), org_status, hour."}}},
    "AuthzBatch": {
        "type": "object", "required": ["checks"],
        "properties": {"checks": {
            "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
            "items": {"$ref": _REF + "AuthzCheck"},
            "description": f"1 to {MAX_BATCH:,} checks, answered in order. One malformed "
                           "check or organization not granted refuses the whole call."}}},
    "AuthzDecision": {
        "type": "object",
        "required": ["allowed", "decision_id", "matched_rule", "reason", "policy_version"],
        "properties": {
            "allowed": {"type": "boolean"},
            "decision_id": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                            "description": "Names this decision in the decision log."},
            "matched_rule": {"oneOf": [_RULE, {"type": "null"}],
                             "description": "The rule that decided: the allow that "
                                            "allowed, or the deny that denied; null when "
                                            "no rule matched."},
            "reason": {"type": ["string", "null"],
                       "description": "null when allowed; else denied by rule, no rule "
                                      "allows it, unknown organization, or condition "
                                      "error: ... (a condition could not be evaluated, "
                                      "which denies)."},
            "policy_version": {"type": "string",
                               "description": "Changes whenever the policy files or the "
                                              "organization's grants change: drop cached "
                                              "decisions when it does."}}},
    "AuthzBatchResults": {
        "type": "object", "required": ["results"],
        "properties": {"results": {"type": "array", "items": {"$ref": _REF + "AuthzDecision"},
                                   "description": "One answer per check, in order."}}},
    "AuthzExplanation": {
        "type": "object",
        "required": ["allowed", "decision_id", "matched_rule", "rule_source", "reason",
                     "policy_version", "roles", "platform_roles", "chain", "chains",
                     "matched_rules"],
        "properties": {
            "allowed": {"type": "boolean"},
            "decision_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "matched_rule": {"oneOf": [_RULE, {"type": "null"}]},
            "rule_source": {"type": ["string", "null"],
                            "description": "Where the deciding rule is written, e.g. "
                                           "kinds/partner.csv:29."},
            "reason": {"type": ["string", "null"]},
            "policy_version": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"},
                      "description": "Held in the organization, inherited ones too."},
            "platform_roles": {"type": "array", "items": {"type": "string"}},
            "chain": {"type": "array", "items": {"type": "string"},
                      "description": "User, granted role, inherited role... to the deciding "
                                     "rule's role; [\"*\"] for a rule for everyone, [] "
                                     "when none decided."},
            "chains": {"type": "array", "items": {"type": "array",
                                                  "items": {"type": "string"}},
                       "description": "The shortest path to every role held."},
            "matched_rules": {"type": "array", "description": "Every rule that matched, "
                                                              "deciding or not.",
                              "items": {"type": "object",
                                        "required": ["rule", "effect", "source", "chain",
                                                     "decided"],
                                        "properties": {
                                            "rule": _RULE,
                                            "effect": {"enum": ["allow", "deny"]},
                                            "source": {"type": ["string", "null"]},
                                            "chain": {"type": "array",
                                                      "items": {"type": "string"}},
                                            "decided": {"type": "boolean"}}}}}},
    "AuthzPermissions": {
        "type": "object", "required": ["subject", "organization", "permissions",
                                       "policy_version"],
        "properties": {
            "subject": {"type": "string"}, "organization": {"type": "string"},
            "permissions": {"type": "array", "description": "The allow rules reaching the "
                                                            "subject through its roles; "
                                                            "denies are not listed but "
                                                            "still apply at check time.",
                            "items": {"type": "object",
                                      "required": ["object", "action", "condition"],
                                      "properties": {
                                          "object": {"type": "string"},
                                          "action": {"type": "string"},
                                          "condition": {"type": ["string", "null"],
                                                        "description": "null: always."}}}},
            "policy_version": {"type": "string"}}},
}


def openapi_paths() -> dict[str, dict[str, Any]]:
    """This blueprint's operations as OpenAPI path items (called once, by the document)."""
    from portal.openapi import refusal
    responses = {
        "401": refusal("No valid API key or access token with the authz scope (code "
                       "unauthenticated).",
                       headers={"WWW-Authenticate": {"schema": {"type": "string"},
                                                     "description": 'Bearer realm="trellis"'}}),
        "403": refusal("The app was not given that organization, whether it exists or not "
                       "(code organization_not_granted)."),
        "413": refusal("The body is larger than TRELLIS_MAX_REQUEST_KIB (1 MiB unless "
                       "configured; code too_large)."),
        "422": refusal("The request is malformed (code invalid_request); field names the "
                       "part at fault, e.g. checks[3].action in a batch."),
        "503": refusal("The database is unavailable for a moment (a key not seen in the "
                       "last seconds is looked up there); try again (code unavailable)."),
    }
    common = {"tags": ["authz"], "security": SECURITY}

    def answer(schema: str, description: str = "The decision.") -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {
            "schema": {"$ref": _REF + schema}}}}

    def post(operation: str, summary: str, description: str, body: str,
             result: str) -> dict[str, Any]:
        return {"post": {
            **common, "operationId": operation, "summary": summary, "description": description,
            "parameters": [], "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF + body}}}},
            "responses": {"200": answer(result), **responses}}}
    prefix = bp.url_prefix + "/authz"
    return {
        prefix + "/check": post(
            "authz_check", "May this subject do this action here?",
            "One decision. A denial is an answer (200, allowed false), not an error.",
            "AuthzCheck", "AuthzDecision"),
        prefix + "/batch": post(
            "authz_batch", f"Up to {MAX_BATCH:,} decisions in one call.",
            "The answers in the order of the checks. A refusal names the check at fault "
            "(checks[N].field) and answers none of them.", "AuthzBatch", "AuthzBatchResults"),
        prefix + "/explain": post(
            "authz_explain", "A decision and why.",
            "The decision, the deciding rule with the file and line it is written on, the "
            "role chain to it, every rule that matched and the roles held. Slower than "
            "check: for people debugging a policy, not for every request.",
            "AuthzCheck", "AuthzExplanation"),
        prefix + "/subjects/{subject_id}/permissions": {"get": {
            **common, "operationId": "authz_permissions",
            "summary": "What a subject may do in an organization.",
            "description": "The (object, action, condition) allow rules reaching the subject "
                           "through its roles there. Deny rules (no second factor, a "
                           "suspended organization) still apply at check time and are not "
                           "listed.",
            "parameters": [
                {"name": "subject_id", "in": "path", "required": True,
                 "description": "Trellis's user id.",
                 "schema": {"type": "string", "pattern": "^[^/]+$"}},
                {"name": "org", "in": "query", "required": True,
                 "description": "The organization's slug, one the app was given.",
                 "schema": {"type": "string", "minLength": 1}}],
            "responses": {"200": answer("AuthzPermissions", "The permissions."),
                          **{k: v for k, v in responses.items() if k != "413"}}}},
    }
