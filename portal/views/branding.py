"""Per-organization stylesheets: branding reaches pages as CSS from validated values only,
so the CSP can forbid inline styles and no branding field can break out into markup."""

from __future__ import annotations

from flask import Blueprint, Response

from portal.errors import NotFound
from portal.extensions import db_session
from portal.permissions import public
from portal.services import organizations
from portal.validation import COLOR

bp = Blueprint("branding", __name__)


@bp.get("/branding/<slug>.css")
@public
def stylesheet(slug: str):
    try:
        org = organizations.get(db_session(), slug)
    except NotFound:
        raise NotFound() from None
    color = org.branding.get("primary_color", "")
    css = f":root {{ --brand: {color}; }}\n" if COLOR.match(color) else ""
    response = Response(css, mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
