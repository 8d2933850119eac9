"""Per-organization stylesheets: branding reaches pages as CSS from validated values only,
so the CSP can forbid inline styles and no branding field can break out into markup."""

from __future__ import annotations

from flask import Blueprint, Response, request

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
    response = Response(css_for(org.branding), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def css_for(branding: dict, selector: str = ":root") -> str:
    """Custom properties from validated colours only (anything else is left out)."""
    rules = [f"--{name}: {branding.get(key, '')};" for key, name in (
        ("primary_color", "brand"), ("accent_color", "accent"))
        if COLOR.match(branding.get(key, "") or "")]
    return f"{selector} {{ {' '.join(rules)} }}\n" if rules else ""


@bp.get("/branding/<slug>/logo/<version>.img")
@public
def logo_versioned(slug: str, version: str):
    """The same logo at a path without a query string: the absolute URL emails carry."""
    return logo(slug)


@bp.get("/branding/<slug>/logo")
@public
def logo(slug: str):
    """The uploaded logo, with the type sniffed at upload (and nosniff on every response)."""
    from portal.services import branding
    try:
        org = organizations.get(db_session(), slug)
    except NotFound:
        raise NotFound() from None
    found = branding.logo_of(db_session(), org.id)
    if found is None:
        raise NotFound()
    etag = found.sha256[:32]
    if request.if_none_match.contains(etag):
        return Response(status=304)
    response = Response(found.data, mimetype=found.content_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Content-Disposition"] = "inline"
    return response
