"""Delegated administration: an organization's own admins manage its members, roles and
invitations under ``/o/<slug>/admin/``. Every route names the organization in its path and
asks the policy about that organization; every lookup is scoped to it (``services.members``),
so another organization's ids answer 404."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from portal.extensions import audit_context, db_session, services
from portal.models import Organization, User
from portal.permissions import current_subject, require, signed_in
from portal.services import members, organizations
from portal.views import use_branding

bp = Blueprint("orgadmin", __name__, url_prefix="/o/<slug>/admin")
invites = Blueprint("invites", __name__)

SECTIONS = (  # (endpoint, label, action, object type): the nav shows what the admin may use
    ("orgadmin.users", "Members", "read", "member"),
    ("orgadmin.invitations", "Invitations", "manage", "invitation"),
)


def _org(slug: str) -> Organization:
    org = organizations.get(db_session(), slug)
    use_branding(org)
    return org


def _actor(org: Organization) -> members.Actor:
    roles = services().policy.held_roles(current_subject(), org.slug)
    return members.Actor(current_user.id, roles, bool(current_user.is_operator))


def _known_roles(org: Organization) -> list[str]:
    return members.assignable_roles(services().policy.files, org)


def allowed_sections(org: Organization) -> list[tuple[str, str]]:
    engine, subject = services().policy, current_subject()
    return [(endpoint, label) for endpoint, label, action, kind in SECTIONS
            if engine.decide(subject, org.slug, {"type": kind}, action,
                             {"org_status": org.status.value}).allowed]


def _render(template: str, org: Organization, **values):
    return render_template(template, org=org, sections=allowed_sections(org), **values)


def _version() -> int | None:
    raw = request.form.get("version", "")
    return int(raw) if raw.isdigit() else None


# -- members -----------------------------------------------------------------------------

@bp.get("/")
@require("read", "member", org_arg="slug")
def index(slug: str):
    return redirect(url_for("orgadmin.users", slug=slug))


@bp.get("/users")
@require("read", "member", org_arg="slug")
def users(slug: str):
    org = _org(slug)
    args = request.args
    page = members.list_members(db_session(), org, query=args.get("q", "")[:200],
                                status=args.get("status", ""), role=args.get("role", ""),
                                after=args.get("after") or None)
    return _render("orgadmin/users.html", org, page=page, roles=_known_roles(org),
                   query=args.get("q", ""), status=args.get("status", ""),
                   role=args.get("role", ""))


@bp.get("/users/<int:user_id>")
@require("read", "member", org_arg="slug")
def user(slug: str, user_id: int):
    org = _org(slug)
    info = members.detail(db_session(), org, user_id)
    actor = _actor(org)
    return _render("orgadmin/user.html", org, info=info, roles=_known_roles(org), actor=actor)


def _change(slug: str, user_id: int, change, done: str):
    org = _org(slug)
    with services().db.transaction() as tx:
        change(tx, audit_context(), tx.get(Organization, org.id), _actor(org))
    flash(done, "info")
    return redirect(url_for("orgadmin.user", slug=slug, user_id=user_id)
                    if "removed" not in done else url_for("orgadmin.users", slug=slug))


@bp.post("/users/<int:user_id>/suspend")
@require("manage", "member", org_arg="slug")
def suspend(slug: str, user_id: int):
    version = _version()
    return _change(slug, user_id, lambda tx, ctx, org, actor: members.suspend(
        tx, ctx, org, actor, user_id, version), "Member suspended; their sessions have ended.")


@bp.post("/users/<int:user_id>/resume")
@require("manage", "member", org_arg="slug")
def resume(slug: str, user_id: int):
    version = _version()
    return _change(slug, user_id, lambda tx, ctx, org, actor: members.resume(
        tx, ctx, org, actor, user_id, version), "Member resumed.")


@bp.post("/users/<int:user_id>/remove")
@require("manage", "member", org_arg="slug")
def remove(slug: str, user_id: int):
    version = _version()
    return _change(slug, user_id, lambda tx, ctx, org, actor: members.remove(
        tx, ctx, org, actor, user_id, version), "Member removed from the organization.")


@bp.post("/users/<int:user_id>/roles")
@require("grant", "role", org_arg="slug")
def roles(slug: str, user_id: int):
    role, version = request.form.get("role", ""), _version()
    known = _known_roles(_org(slug))
    if request.form.get("change") == "revoke":
        return _change(slug, user_id, lambda tx, ctx, org, actor: members.revoke(
            tx, ctx, org, actor, user_id, role, version), f"Role {role} revoked.")
    return _change(slug, user_id, lambda tx, ctx, org, actor: members.grant(
        tx, ctx, org, actor, user_id, role, known, version), f"Role {role} granted.")


# -- invitations -------------------------------------------------------------------------

@bp.get("/invitations")
@require("manage", "invitation", org_arg="slug")
def invitations(slug: str):
    org = _org(slug)
    return _render("orgadmin/invitations.html", org, roles=_known_roles(org),
                   pending=members.pending_invitations(db_session(), org), link=None)


@bp.post("/invitations")
@require("manage", "invitation", org_arg="slug")
def invite(slug: str):
    org = _org(slug)
    with services().db.transaction() as tx:
        invitation, token = members.invite(
            tx, audit_context(), tx.get(Organization, org.id), _actor(org),
            request.form.get("email", ""), request.form.get("role", "member"),
            _known_roles(org))
        email = invitation.email
    return _show_link(org, email, token)


@bp.post("/invitations/<int:invitation_id>/resend")
@require("manage", "invitation", org_arg="slug")
def resend(slug: str, invitation_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        invitation, token = members.resend(tx, audit_context(), tx.get(Organization, org.id),
                                           invitation_id)
        email = invitation.email
    return _show_link(org, email, token)


@bp.post("/invitations/<int:invitation_id>/revoke")
@require("manage", "invitation", org_arg="slug")
def revoke_invitation(slug: str, invitation_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        members.revoke_invitation(tx, audit_context(), tx.get(Organization, org.id),
                                  invitation_id)
    flash("Invitation revoked; its link no longer works.", "info")
    return redirect(url_for("orgadmin.invitations", slug=slug))


def _show_link(org: Organization, email: str, token: str):
    """The link is shown once, to the admin who created it (only its hash is stored)."""
    link = url_for("invites.accept", token=token, _external=True)
    flash(f"Invitation for {email} created. Send them this link; it works once, for seven "
          "days, and only for that address.", "info")
    return _render("orgadmin/invitations.html", org, roles=_known_roles(org),
                   pending=members.pending_invitations(db_session(), org), link=link)


@invites.route("/invite/<token>", methods=["GET", "POST"])
@signed_in
def accept(token: str):
    """The invited person, signed in (with any method), accepts for their own address."""
    if len(token) > 100:
        abort(404)
    invitation = members.open_invitation(db_session(), token)
    org = db_session().get(Organization, invitation.organization_id)
    use_branding(org)
    if request.method == "POST":
        with services().db.transaction() as tx:
            joined = members.accept(tx, audit_context(), token, tx.get(User, current_user.id))
            slug = joined.slug
        flash(f"Welcome to {org.name}.", "info")
        return redirect(url_for("home.organization", slug=slug))
    return render_template("orgadmin/accept.html", org=org, invitation=invitation)
