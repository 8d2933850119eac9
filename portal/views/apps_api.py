"""The operators' JSON API for the app registry, under ``/api/v1/admin/apps``: the same
operations as the apps pages (register, read, change, rotate the secret, stop or resume),
through the same service, so validation and audit are identical.

Callers are a signed-in operator (changes need the page's CSRF token in ``X-CSRFToken``) or
an operator's automation: an app registered with the ``apps:manage`` scope, calling with an
access token from the client-credentials grant. Audit events then name that app.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError as CsrfInvalid

from policies.engine import PLATFORM
from portal import audit
from portal.errors import InvalidRequest, TrellisError
from portal.extensions import audit_context, csrf, db_session, services
from portal.models import OAuthApp
from portal.permissions import ACCESS, authorize
from portal.services import apps

bp = Blueprint("appsapi", __name__, url_prefix="/api/v1/admin/apps")
csrf.exempt(bp)  # checked below for session callers; token callers send no cookie
SCOPE = "apps:manage"


class Unauthorized(TrellisError):
    status = 401


def operator_only(action: str) -> Callable:
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            _authenticate(action)
            return view(*args, **kwargs)
        setattr(guarded, ACCESS, f"require:{action}:app")
        return guarded
    return decorate


def _authenticate(action: str) -> None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        from portal import oauth
        caller = oauth.scoped_app(header[7:].strip(), SCOPE)
        if caller is None:
            raise Unauthorized("The access token is not valid or lacks the apps:manage scope.",
                               code="invalid_token")
        base = audit_context()
        g.apps_ctx = audit.Context(actor=f"app:{caller}", ip=base.ip,
                                   user_agent=base.user_agent, request_id=base.request_id)
        return
    if not current_user.is_authenticated:
        raise Unauthorized("Send an access token with the apps:manage scope or sign in.",
                           code="unauthenticated")
    authorize(action, "app", PLATFORM)
    if request.method not in ("GET", "HEAD"):
        try:
            validate_csrf(request.headers.get("X-CSRFToken", ""))
        except (CsrfInvalid, CSRFError):
            raise TrellisError("Send the page's CSRF token in the X-CSRFToken header.",
                               code="csrf_failed", status=400) from None
    g.apps_ctx = audit_context()


def app_json(app: OAuthApp) -> dict[str, Any]:
    """Everything about an app except its secret (never shown after registration)."""
    return {
        "client_id": app.client_id, "name": app.name, "client_type": app.client_type.value,
        "token_endpoint_auth_method": app.auth_method, "enabled": app.enabled,
        "redirect_uris": app.redirect_uris, "grant_types": app.grant_types,
        "scopes": app.scopes, "organizations": app.organizations,
        "access_token_seconds": app.access_token_seconds,
        "refresh_token_seconds": app.refresh_token_seconds,
        "consent_required": app.consent_required, "logo_url": app.logo_url,
        "post_logout_redirect_uris": app.post_logout_redirect_uris,
        "backchannel_logout_uri": app.backchannel_logout_uri,
        "frontchannel_logout_uri": app.frontchannel_logout_uri,
        "initiate_login_uri": app.initiate_login_uri,
        "id_token_signed_response_alg": app.id_token_signed_response_alg,
        "subject_type": app.subject_type, "sector_identifier": app.sector_identifier,
        "sector_identifier_uri": app.sector_identifier_uri,
        "access_token_signed_response_alg": app.access_token_signed_response_alg,
        "secret_prefix": app.secret_prefix or None,
        "previous_secret_valid_until": (app.previous_secret_expires_at.isoformat()
                                        if app.previous_secret_expires_at else None),
    }


# JSON names as in OpenID Connect Dynamic Client Registration where one exists.
FIELDS = {"name": str, "redirect_uris": list, "client_type": str,
          "token_endpoint_auth_method": str, "grant_types": list, "scopes": list,
          "organizations": list, "access_token_seconds": int, "refresh_token_seconds": int,
          "consent_required": bool, "logo_url": str, "post_logout_redirect_uris": list,
          "backchannel_logout_uri": str, "frontchannel_logout_uri": str,
          "initiate_login_uri": str, "id_token_signed_response_alg": str,
          "subject_type": str, "sector_identifier": str, "jwks": dict,
          "sector_identifier_uri": str, "access_token_signed_response_alg": str}
RENAMED = {"token_endpoint_auth_method": "auth_method"}


def _fields(data: Any, editing: bool = False) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest("body", "send a JSON object")
    values = {}
    for key, value in data.items():
        kind = FIELDS.get(key)
        if kind is None:
            raise InvalidRequest(key, "is not a field of an app")
        if editing and RENAMED.get(key, key) not in apps.EDITABLE:
            raise InvalidRequest(key, "cannot be changed after registration")
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise InvalidRequest(key, f"must be a {kind.__name__}")
        if kind is list and not all(isinstance(item, str) for item in value):
            raise InvalidRequest(key, "must be a list of strings")
        values[RENAMED.get(key, key)] = value
    return values


@bp.get("")
@operator_only("read")
def list_apps():
    return jsonify({"apps": [app_json(a) for a in apps.list_all(db_session())]})


@bp.post("")
@operator_only("create")
def create_app():
    values = _fields(request.get_json(silent=True))
    if "name" not in values:
        raise InvalidRequest("name", "is required")
    spec = apps.AppSpec(**values)
    with services().db.transaction() as tx:
        app, secret = apps.create(tx, g.apps_ctx, spec,
                                  allow_insecure_loopback=_loopback_allowed())
        body = app_json(app)
    body["client_secret"] = secret  # shown this once
    response = jsonify(body)
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<client_id>")
@operator_only("read")
def get_app(client_id: str):
    return jsonify(app_json(apps.get(db_session(), client_id)))


@bp.patch("/<client_id>")
@operator_only("update")
def update_app(client_id: str):
    changes = _fields(request.get_json(silent=True), editing=True)
    with services().db.transaction() as tx:
        body = app_json(apps.update(tx, g.apps_ctx, client_id, changes,
                                    allow_insecure_loopback=_loopback_allowed()))
    _forget(client_id)
    return jsonify(body)


@bp.post("/<client_id>/secret")
@operator_only("update")
def rotate_secret(client_id: str):
    data = request.get_json(silent=True) or {}
    if not isinstance(data, dict):
        raise InvalidRequest("body", "send a JSON object or nothing")
    grace = data.get("grace_seconds", apps.DEFAULT_GRACE_SECONDS)
    if isinstance(grace, bool) or not isinstance(grace, int):
        raise InvalidRequest("grace_seconds", "must be a whole number of seconds")
    with services().db.transaction() as tx:
        secret = apps.rotate_secret(tx, g.apps_ctx, client_id, grace)
        body = app_json(apps.get(tx, client_id))
    _forget(client_id)
    body["client_secret"] = secret
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.put("/<client_id>/enabled")
@operator_only("update")
def set_enabled(client_id: str):
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("enabled"), bool):
        raise InvalidRequest("enabled", "must be true or false")
    with services().db.transaction() as tx:
        body = app_json(apps.set_enabled(tx, g.apps_ctx, client_id, data["enabled"]))
    _forget(client_id)
    return jsonify(body)


def _loopback_allowed() -> bool:
    """A sector identifier document may be fetched over plain HTTP from loopback outside
    production (development and tests)."""
    from flask import current_app
    return current_app.config["ENV"] != "production"


def _forget(client_id: str) -> None:
    from portal.views.admin import forget_client
    forget_client(client_id)


# --- the OpenAPI description (merged into /api/v1/openapi.json by portal.openapi) ----------

_URIS = {"type": "array", "items": {"type": "string", "format": "uri"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}
# What ``app_json`` answers: every field, always present.
APP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["client_id", "name", "client_type", "token_endpoint_auth_method", "enabled",
                 "redirect_uris", "grant_types", "scopes", "organizations",
                 "access_token_seconds", "refresh_token_seconds", "consent_required",
                 "logo_url", "post_logout_redirect_uris", "backchannel_logout_uri",
                 "frontchannel_logout_uri", "initiate_login_uri",
                 "id_token_signed_response_alg", "subject_type", "sector_identifier",
                 "sector_identifier_uri", "access_token_signed_response_alg",
                 "secret_prefix", "previous_secret_valid_until"],
    "properties": {
        "client_id": {"type": "string"}, "name": {"type": "string"},
        "client_type": {"enum": ["confidential", "public"]},
        "token_endpoint_auth_method": {"enum": list(apps.AUTH_METHODS)},
        "enabled": {"type": "boolean"}, "redirect_uris": _STRINGS,
        "grant_types": {"type": "array", "items": {"enum": list(apps.GRANT_TYPES)}},
        "scopes": {"type": "array", "items": {"enum": list(apps.SCOPES)}},
        "organizations": _STRINGS,
        "access_token_seconds": {"type": "integer"},
        "refresh_token_seconds": {"type": "integer"},
        "consent_required": {"type": "boolean"}, "logo_url": {"type": "string"},
        "post_logout_redirect_uris": _STRINGS, "backchannel_logout_uri": {"type": "string"},
        "frontchannel_logout_uri": {"type": "string"},
        "initiate_login_uri": {"type": "string"},
        "id_token_signed_response_alg": {"enum": list(apps.ID_TOKEN_ALGORITHMS)},
        "subject_type": {"enum": list(apps.SUBJECT_TYPES)},
        "sector_identifier": {"type": "string"},
        "sector_identifier_uri": {"type": "string"},
        "access_token_signed_response_alg": {"enum": list(apps.ACCESS_TOKEN_ALGORITHMS)},
        "secret_prefix": {"type": ["string", "null"]},
        "previous_secret_valid_until": {"type": ["string", "null"], "format": "date-time"},
    },
}
_INPUT_TYPES = {str: {"type": "string"}, list: _STRINGS, int: {"type": "integer"},
                bool: {"type": "boolean"}, dict: {"type": "object"}}
# What a registration or a change may send (``FIELDS``); unknown fields are refused.
APP_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {key: dict(_INPUT_TYPES[kind]) for key, kind in FIELDS.items()},
}
APP_INPUT_SCHEMA["properties"]["jwks"]["description"] = (
    "The app's public JWK set (private_key_jwt apps; also checks their request objects).")
SCHEMAS: dict[str, Any] = {
    "App": APP_SCHEMA,
    "AppWithSecret": {"allOf": [{"$ref": "#/components/schemas/App"}, {
        "type": "object", "required": ["client_secret"], "properties": {
            "client_secret": {"type": ["string", "null"],
                              "description": "Shown this once; null for public and "
                                             "private_key_jwt apps."}}}]},
    "AppList": {"type": "object", "required": ["apps"], "properties": {
        "apps": {"type": "array", "items": {"$ref": "#/components/schemas/App"}}}},
    "AppInput": APP_INPUT_SCHEMA,
}
_CLIENT_ID = {"name": "client_id", "in": "path", "required": True,
              "schema": {"type": "string", "maxLength": 64}}
# (method, path under the prefix, view, summary, body schema or None, response, status)
OPERATIONS: list[tuple[str, str, str, str, dict[str, Any] | None, str, str]] = [
    ("get", "", "list_apps", "Every registered app (never a secret).", None, "AppList", "200"),
    ("post", "", "create_app", "Register an app; the answer holds its secret, once.",
     {"allOf": [{"$ref": "#/components/schemas/AppInput"}, {"required": ["name"]}]},
     "AppWithSecret", "201"),
    ("get", "/{client_id}", "get_app", "One app.", None, "App", "200"),
    ("patch", "/{client_id}", "update_app", "Change the fields that may change after "
     "registration (not client_type, token_endpoint_auth_method, subject_type, "
     "sector_identifier); the audit event holds each old and new value.",
     {"$ref": "#/components/schemas/AppInput"}, "App", "200"),
    ("post", "/{client_id}/secret", "rotate_secret", "A new secret, shown once; the old one "
     "works for grace_seconds more (default one day, at most 30 days).",
     {"type": "object", "properties": {"grace_seconds": {
         "type": "integer", "minimum": 0, "maximum": apps.MAX_GRACE_SECONDS}}},
     "AppWithSecret", "200"),
    ("put", "/{client_id}/enabled", "set_enabled", "Stop (false) or resume (true) an app; a "
     "stopped app's tokens stop working at once.",
     {"type": "object", "required": ["enabled"], "additionalProperties": False,
      "properties": {"enabled": {"type": "boolean"}}}, "App", "200"),
]


def openapi_paths(problem: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """This blueprint's operations as OpenAPI path items."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, view, summary, body, response, status in OPERATIONS:
        op: dict[str, Any] = {
            "operationId": f"apps_{view}", "summary": summary, "tags": ["apps"],
            "description": "Operators only: a signed-in operator (changes need "
                           "X-CSRFToken) or a client-credentials token with the "
                           "apps:manage scope.",
            "security": [{"appsToken": []}, {"session": []}],
            "parameters": [_CLIENT_ID] if "{client_id}" in path else [],
            "responses": {status: {"description": "Done.", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{response}"}}}},
                **{code: problem for code in ("400", "401", "403", "404", "409", "422",
                                              "503")}}}
        if body is not None:
            op["requestBody"] = {"required": view in ("create_app", "update_app",
                                                      "set_enabled"),
                                 "content": {"application/json": {"schema": body}}}
        paths.setdefault(bp.url_prefix + path, {})[method] = op
    return paths
