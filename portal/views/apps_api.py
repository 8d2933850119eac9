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
          "subject_type": str, "sector_identifier": str, "jwks": dict}
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
        app, secret = apps.create(tx, g.apps_ctx, spec)
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
        body = app_json(apps.update(tx, g.apps_ctx, client_id, changes))
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


def _forget(client_id: str) -> None:
    from portal.views.admin import forget_client
    forget_client(client_id)
