"""The operator pages."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, render_template

from portal.extensions import db_session
from portal.models import Connection, Domain, Membership, Organization
from portal.permissions import require

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/")
@require("read", "organization")
def organizations():
    session = db_session()
    members = (sa.select(Membership.organization_id, sa.func.count().label("n"))
               .group_by(Membership.organization_id).subquery())
    domains = (sa.select(Domain.organization_id, sa.func.count().label("n"))
               .group_by(Domain.organization_id).subquery())
    rows = session.execute(
        sa.select(Organization, sa.func.coalesce(members.c.n, 0),
                  sa.func.coalesce(domains.c.n, 0))
        .outerjoin(members, members.c.organization_id == Organization.id)
        .outerjoin(domains, domains.c.organization_id == Organization.id)
        .order_by(Organization.name)).all()
    return render_template("admin/organizations.html", rows=rows)


@bp.get("/connections")
@require("read", "connection")
def connections():
    rows = db_session().scalars(sa.select(Connection).order_by(Connection.id)).all()
    return render_template("admin/connections.html", rows=rows)
