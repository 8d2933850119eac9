"""The consent ledger for apps: a user's current consents, and a feed of every change so a
CRM can keep its opt-ins in step. Same credentials as the decision API (an API key or a
client-credentials access token), limited to users of the organizations the app was given;
any other user is "not found", whether they exist or not."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from portal.errors import InvalidRequest, NotFound
from portal.extensions import csrf, db_session
from portal.services import consent
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
    try:
        since = int(request.args.get("since", "0"))
        limit = int(request.args.get("limit", str(consent.FEED_PAGE)))
    except ValueError:
        raise InvalidRequest("since", "must be a whole number") from None
    if since < 0 or not 1 <= limit <= consent.FEED_PAGE:
        raise InvalidRequest("limit", f"must be 1 to {consent.FEED_PAGE}; since ≥ 0")
    rows = consent.changes_since(db_session(), frozenset(g.api_client.organizations), since,
                                 limit)
    return jsonify(changes=[consent.record_dict(r) for r in rows],
                   next=rows[-1].id if rows else since, more=len(rows) == limit)
