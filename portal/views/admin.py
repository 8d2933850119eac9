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


@bp.get("/apps")
@require("read", "app")
def apps_page():
    from portal.services import apps
    return render_template("admin/apps.html", rows=apps.list_all(db_session()))


@bp.post("/apps/<client_id>/enabled")
@require("update", "app")
def app_enabled(client_id: str):
    """Stop or resume an app from the page; the form's CSRF token was checked already."""
    from flask import flash, redirect, request, url_for

    from portal.extensions import audit_context, services
    from portal.services import apps
    enable = request.form.get("enabled") == "1"
    with services().db.transaction() as tx:
        app = apps.set_enabled(tx, audit_context(), client_id, enable)
        name = app.name
    flash(f"{name} is {'enabled' if enable else 'disabled'}.", "info")
    return redirect(url_for("admin.apps_page"))


@bp.route("/policy/simulate", methods=["GET", "POST"])
@require("simulate", "policy")
def simulate():
    """Operators try a decision in any organization (or the platform domain)."""
    from flask import request

    from portal.models import Organization
    from portal.views import simulation
    values = simulation.form_values()
    result = error = None
    if request.method == "POST":
        result, error = simulation.simulate(values)
    orgs = db_session().scalars(sa.select(Organization.slug).order_by(Organization.slug)).all()
    return render_template("admin/simulate.html", values=values, result=result, error=error,
                           orgs=orgs), 422 if error else 200


@bp.get("/outbox")
@require("read", "outbox")
def outbox_page():
    """What the mail server has not taken yet, and why."""
    from flask import current_app, request

    from portal.services import outbox
    status = request.args.get("status", "")
    session = db_session()
    configured = bool(current_app.config["SMTP_HOST"]) or current_app.config["ENV"] != \
        "production"
    return render_template("admin/outbox.html", rows=outbox.listing(session, status),
                           counts=outbox.counts(session), status=status,
                           configured=configured)


@bp.post("/outbox/<int:message_id>/retry")
@require("update", "outbox")
def outbox_retry(message_id: int):
    from flask import flash, redirect, url_for

    from portal.extensions import audit_context, services
    from portal.services import outbox
    from portal.views.mail import deliver_now
    with services().db.transaction() as tx:
        outbox.retry(tx, audit_context(), message_id)
    report = deliver_now([message_id])
    flash("Sent." if report.sent else "The mail server did not take it yet; it stays in the "
          "outbox and will be tried again.", "info")
    return redirect(url_for("admin.outbox_page"))


@bp.get("/consents")
@require("read", "consent")
def consents_page():
    """How many people grant each purpose now, for the privacy team."""
    from flask import current_app

    from portal.services import consent
    rows = consent.statistics(db_session(), current_app.extensions["trellis_purposes"])
    return render_template("admin/consents.html", rows=rows)
