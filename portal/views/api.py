"""The decision API for vendor apps: may this user do this here?

Apps authenticate with an API key (``Authorization: Bearer trk_...``) or an access token with
the ``authz`` scope from Trellis's token endpoint (client credentials), and may only ask about
the organizations they were granted. Every answer carries the policy version it was made
with, so an app can tell when its cached decisions are stale.
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
