"""The portal home: the user's organizations and the apps they may open."""

from __future__ import annotations

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
                           apps=[], admin_sections=_admin_sections(current))


@bp.get("/o/<slug>/")
@require("read", "organization", org_arg="slug")
def organization(slug: str):
    memberships = users.active_memberships(db_session(), current_user.id)
    match = [m for m in memberships if m.organization.slug == slug]
    if not match:
        raise NotFound()  # the same answer whether the org exists or not
    use_branding(match[0].organization)
    return render_template("home/index.html", memberships=memberships,
                           current=match[0].organization, apps=[],
                           admin_sections=_admin_sections(match[0].organization))


def _admin_sections(org) -> list[tuple[str, str]]:
    """The organization's admin pages this user may open (none for plain members)."""
    from portal.views.org_admin import allowed_sections
    return allowed_sections(org) if org is not None else []
