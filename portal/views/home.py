"""The portal home: the user's organizations and the apps they may open."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, render_template
from flask_login import current_user

from portal.errors import NotFound
from portal.extensions import db_session
from portal.permissions import require, signed_in
from portal.services import users
from portal.views import use_branding

bp = Blueprint("home", __name__)


@bp.get("/")
@signed_in
def index():
    memberships = users.active_memberships(db_session(), current_user.id)
    current = memberships[0].organization if len(memberships) == 1 else None
    use_branding(current)
    return render_template("home/index.html", memberships=memberships, current=current,
                           apps=_tiles(current.slug if current else None),
                           admin_sections=_admin_sections(current))


@bp.get("/o/<slug>/")
@require("read", "organization", org_arg="slug")
def organization(slug: str):
    memberships = users.active_memberships(db_session(), current_user.id)
    match = [m for m in memberships if m.organization.slug == slug]
    if not match:
        raise NotFound()  # the same answer whether the org exists or not
    use_branding(match[0].organization)
    return render_template("home/index.html", memberships=memberships,
                           current=match[0].organization, apps=_tiles(slug),
                           admin_sections=_admin_sections(match[0].organization))


@dataclass(frozen=True)
class Tile:
    name: str
    url: str
    logo_url: str
    organizations: tuple[str, ...]


def _tiles(slug: str | None) -> list[Tile]:
    """The apps this member may open (offered to one of their organizations; on an
    organization's page, to that one). A tile starts the app's own login (OpenID Connect
    third-party initiated login): the app then sends the user to Trellis, whose session
    signs them straight in."""
    from authlib.common.urls import add_params_to_uri

    from portal import oauth
    from portal.services import apps
    found = []
    for app, offered in apps.tiles(db_session(), current_user.id):
        if slug and slug not in offered:
            continue
        url = add_params_to_uri(app.initiate_login_uri, [("iss", oauth.issuer())])
        found.append(Tile(app.name, url, app.logo_url, tuple(offered)))
    return found


def _admin_sections(org) -> list[tuple[str, str]]:
    """The organization's admin pages this user may open (none for plain members)."""
    from portal.views.org_admin import allowed_sections
    return allowed_sections(org) if org is not None else []
