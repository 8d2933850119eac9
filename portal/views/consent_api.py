"""The consent ledger for apps: a user's current consents, and a feed of every change so a
CRM can keep its opt-ins in step. Same credentials as the decision API (an API key or a
client-credentials access token), limited to users of the organizations the app was given;
any other user is "not found", whether they exist or not.

Described in the OpenAPI document (``/api/v1/openapi.json``, tag ``consents``): the tables at
the end of this module, merged by ``portal.openapi``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from portal.errors import InvalidRequest, NotFound
from portal.extensions import csrf, db_session
from portal.services import consent
from portal.views import api
from portal.views.api import api_key_required

bp = Blueprint("consentapi", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


@bp.get("/users/<int:user_id>/consents")
@api_key_required
def user_consents(user_id: int):
    found = consent.for_user(db_session(), user_id, frozenset(g.api_client.organizations),
                             current_app.extensions["trellis_purposes"])
    if found is None:
        raise NotFound("There is no such user among your organizations' members.",
                       code="unknown_user")
    return jsonify(found)


@bp.get("/consents/changes")
@api_key_required
def changes():
    """``since``: the ``next`` of the previous page (0 the first time)."""
    since = _whole("since", "0", 0, MAX_CURSOR)
    limit = _whole("limit", str(consent.FEED_PAGE), 1, consent.FEED_PAGE)
    rows = consent.changes_since(db_session(), frozenset(g.api_client.organizations), since,
                                 limit)
    return jsonify(changes=[consent.record_dict(r) for r in rows],
                   next=rows[-1].id if rows else since, more=len(rows) == limit)


MAX_CURSOR = 2**63 - 1  # a cursor must fit a bigint; ids are far below


def _whole(name: str, default: str, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; a refusal names the parameter."""
    raw = request.args.get(name, default)
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(name, "must be a whole number") from None
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be {low} to {high}")
    return value


# --- the OpenAPI description (merged into /api/v1/openapi.json by portal.openapi) ----------

# The decision API's schemes (same credentials), listed under this name too.
SECURITY_SCHEMES = api.SECURITY_SCHEMES
_SECURITY = api.SECURITY
_STATE = {"enum": ["granted", "withdrawn"], "description": "The newest record's verdict."}
SCHEMAS: dict[str, Any] = {
    # What ``consent.record_dict`` answers: one ledger entry, never changed once written.
    "ConsentRecord": {
        "type": "object",
        "required": ["id", "user_id", "purpose", "version", "status", "method",
                     "recorded_at"],
        "properties": {
            "id": {"type": "integer", "minimum": 1,
                   "description": "Grows with every record: the change feed's cursor."},
            "user_id": {"type": "integer"},
            "purpose": {"type": "string", "description": "terms, privacy, or a purpose "
                                                         "key from the purposes file."},
            "version": {"type": "string", "description": "The document or purpose "
                                                         "version granted or withdrawn."},
            "status": _STATE,
            "method": {"type": "string", "description": "How it was given, e.g. "
                                                        "registration, account_page."},
            "recorded_at": {"type": "string", "format": "date-time"}}},
    "ConsentNever": {
        "type": "object", "required": ["purpose", "status", "version", "recorded_at"],
        "properties": {"purpose": {"type": "string"}, "status": {"const": "never"},
                       "version": {"type": "null"}, "recorded_at": {"type": "null"}},
        "description": "A purpose this person never answered (no record)."},
    "UserConsents": {
        "type": "object", "required": ["user_id", "consents"],
        "properties": {
            "user_id": {"type": "integer"},
            "consents": {"type": "array", "description": "The terms, the privacy notice, "
                                                        "every configured purpose, then "
                                                        "any purpose since removed.",
                         "items": {"oneOf": [{"$ref": "#/components/schemas/ConsentRecord"},
                                             {"$ref": "#/components/schemas/ConsentNever"}]}}}},
    "ConsentChanges": {
        "type": "object", "required": ["changes", "next", "more"],
        "properties": {
            "changes": {"type": "array", "description": "Oldest first.",
                        "items": {"$ref": "#/components/schemas/ConsentRecord"}},
            "next": {"type": "integer", "minimum": 0,
                     "description": "The since of the next call (unchanged when empty)."},
            "more": {"type": "boolean",
                     "description": "Another page is waiting: ask again at once."}}},
}


def openapi_paths() -> dict[str, dict[str, Any]]:
    """This blueprint's operations as OpenAPI path items."""
    from portal.openapi import ID, refusal
    unauthenticated = refusal(
        "No valid API key or access token with the authz scope (code unauthenticated).",
        headers={"WWW-Authenticate": {"schema": {"type": "string"},
                                      "description": 'Bearer realm="trellis"'}})
    unavailable = refusal("The database is unavailable for a moment; try again.")
    common = {"tags": ["consents"], "security": _SECURITY}

    def ok(schema: str) -> dict[str, Any]:
        return {"description": "Done.", "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    return {
        bp.url_prefix + "/users/{user_id}/consents": {"get": {
            **common, "operationId": "consents_user_consents",
            "summary": "A user's current consents.",
            "description": "The newest record of the terms, the privacy notice and every "
                           "purpose, or status never. Only for members of the "
                           "organizations the app was given.",
            "parameters": [{"name": "user_id", "in": "path", "required": True,
                            "schema": dict(ID), "description": "Trellis's user id."}],
            "responses": {
                "200": ok("UserConsents"), "401": unauthenticated,
                "404": refusal("No such user among the members of the app's organizations, "
                               "whether the id exists or not (code unknown_user)."),
                "503": unavailable}}},
        bp.url_prefix + "/consents/changes": {"get": {
            **common, "operationId": "consents_changes",
            "summary": "Every ledger record after a cursor, oldest first.",
            "description": "Start with since=0, keep next and ask again with it; more says "
                           "another page is waiting. Records are never changed, so a "
                           "client applying the feed in order ends in Trellis's state. "
                           "Only records about members of the app's organizations.",
            "parameters": [
                {"name": "since", "in": "query", "required": False,
                 "description": "The next of the previous page; 0 the first time.",
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR,
                            "default": 0}},
                {"name": "limit", "in": "query", "required": False,
                 "description": "Records per page.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": consent.FEED_PAGE,
                            "default": consent.FEED_PAGE}}],
            "responses": {
                "200": ok("ConsentChanges"), "401": unauthenticated,
                "422": refusal("since or limit is not a whole number in range (code "
                               "invalid_request; field names it)."),
                "503": unavailable}}},
    }
