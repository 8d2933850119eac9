"""Delegated administration: an organization's own admins manage its members, roles and
invitations under ``/o/<slug>/admin/``. Every route names the organization in its path and
asks the policy about that organization; every lookup is scoped to it (``services.members``),
so another organization's ids answer 404."""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user

from federation.errors import FederationError
from policies.custom import REFINEMENTS
from portal import audit
from portal.errors import Conflict, Forbidden, NotFound, ValidationError
from portal.extensions import audit_context, db_session, services
from portal.models import Connection, Organization, Protocol, User
from portal.permissions import current_subject, require, signed_in
from portal.services import branding as branding_service
from portal.services import connections as connections_service
from portal.services import (
    custom_roles,
    identity_links,
    member_import,
    members,
    org_audit,
    org_tokens,
    organizations,
)
from portal.services import domains as domains_service
from portal.services import saml as saml_connections
from portal.views import connection_forms, use_branding

bp = Blueprint("orgadmin", __name__, url_prefix="/o/<slug>/admin")
invites = Blueprint("invites", __name__)

SECTIONS = (  # (endpoint, label, action, object type): the nav shows what the admin may use
    ("orgadmin.users", "Members", "read", "member"),
    ("orgadmin.invitations", "Invitations", "manage", "invitation"),
    ("orgadmin.connections", "Single sign-on", "read", "connection"),
    ("orgadmin.domains", "Domains", "manage", "domain"),
    ("orgadmin.roles_page", "Roles", "manage", "organization"),
    ("orgadmin.branding", "Branding", "manage", "branding"),
    ("orgadmin.audit_trail", "Audit trail", "read", "audit"),
    ("orgadmin.tokens", "API tokens", "manage", "organization"),
    ("orgadmin.security", "Security", "read", "risk"),
    ("orgadmin.registration", "Sign-up", "manage", "organization"),
    ("orgadmin.siem_streams", "Event streams", "manage", "organization"),
    ("orgadmin.simulate", "Policy simulator", "simulate", "policy"),
)


def _org(slug: str) -> Organization:
    org = organizations.get(db_session(), slug)
    use_branding(org)
    return org


def _actor(org: Organization) -> members.Actor:
    return members.actor_for(services().policy, db_session(), org, current_user.id,
                             bool(current_user.is_operator))


def _known_roles(org: Organization) -> list[str]:
    return members.known_roles(services().policy.files, db_session(), org)


def _may(org: Organization, action: str, kind: str) -> bool:
    """What the page shows besides what its route requires (a read-only view for auditors)."""
    return services().policy.decide(current_subject(), org.slug, {"type": kind}, action,
                                    {"org_status": org.status.value}).allowed


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
    links = identity_links.pending(db_session(), org, user_id, info["user"].email)
    return _render("orgadmin/user.html", org, info=info, roles=_known_roles(org), actor=actor,
                   links=links)


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


@bp.post("/users/<int:user_id>/links")
@require("manage", "member", org_arg="slug")
def link_identity(slug: str, user_id: int):
    event_id = request.form.get("event_id", "")
    if not event_id.isdigit():
        raise NotFound("There is no such sign-in waiting for a link.",
                       code="unknown_link_request")
    return _change(slug, user_id, lambda tx, ctx, org, actor: identity_links.link(
        tx, ctx, org, actor, user_id, int(event_id)),
        "Linked: this identity now signs in to this account.")


@bp.post("/users/<int:user_id>/verify-identity")
@require("manage", "member", org_arg="slug")
def verify_identity(slug: str, user_id: int):
    method, note = request.form.get("method", ""), request.form.get("note", "")[:1000]
    return _change(slug, user_id, lambda tx, ctx, org, actor: members.verify_identity(
        tx, ctx, org, actor, user_id, method, note),
        "Identity recorded as verified by an administrator.")


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


# -- bulk: CSV import and export ---------------------------------------------------------

IMPORT_MAX_BYTES = 20 * 1024 * 1024


@bp.route("/users/import", methods=["GET", "POST"])
@require("manage", "member", org_arg="slug")
def import_members(slug: str):
    """Dry run first (nothing written, every row's problem listed), then the import."""
    org = _org(slug)
    if request.method == "GET":
        return _render("orgadmin/import.html", org, report=None, dry_run=True)
    upload = request.files.get("file")
    data = upload.read(IMPORT_MAX_BYTES + 1) if upload else b""
    if not data:
        raise ValidationError("Choose a CSV file to import.", code="csv_missing")
    dry_run = request.form.get("dry_run") == "1"
    rows, report = member_import.validate(db_session(), org, _actor(org), _known_roles(org),
                                          data)
    if not dry_run:
        ctx = audit_context()
        member_import.run(services().db, ctx, org.id, rows, report)
    return _render("orgadmin/import.html", org, report=report, dry_run=dry_run)


@bp.get("/users/export.csv")
@require("read", "member", org_arg="slug")
def export_members(slug: str):
    org = _org(slug)
    session = services().db.sessions()

    def lines():
        try:
            yield from member_import.export_rows(session, org)
        finally:
            session.close()
    return Response(stream_with_context(lines()), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{org.slug}-members.csv"'})


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
        message_id = _mail_invitation(tx, invitation, token)
    return _show_link(org, email, token, message_id)


@bp.post("/invitations/<int:invitation_id>/resend")
@require("manage", "invitation", org_arg="slug")
def resend(slug: str, invitation_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        invitation, token = members.resend(tx, audit_context(), tx.get(Organization, org.id),
                                           invitation_id)
        email = invitation.email
        message_id = _mail_invitation(tx, invitation, token)
    return _show_link(org, email, token, message_id)


@bp.post("/invitations/<int:invitation_id>/revoke")
@require("manage", "invitation", org_arg="slug")
def revoke_invitation(slug: str, invitation_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        members.revoke_invitation(tx, audit_context(), tx.get(Organization, org.id),
                                  invitation_id)
    flash("Invitation revoked; its link no longer works.", "info")
    return redirect(url_for("orgadmin.invitations", slug=slug))


def _mail_invitation(tx, invitation, token: str) -> int:
    """The invitation email, written in the invitation's own transaction."""
    from portal.services import outbox
    inviter = current_user.display_name or current_user.email
    message = outbox.enqueue(
        tx, to=invitation.email, template="invitation",
        org=tx.get(Organization, invitation.organization_id),
        context={"link": url_for("invites.accept", token=token, _external=True),
                 "inviter": inviter, "role": invitation.role,
                 "expires": invitation.expires_at.strftime("%Y-%m-%d %H:%M")})
    return message.id


def _show_link(org: Organization, email: str, token: str, message_id: int):
    """The link is emailed, and shown once to the admin who created it (only its hash is
    stored), for when the email does not reach the person."""
    from portal.views.mail import deliver_now
    link = url_for("invites.accept", token=token, _external=True)
    sent = deliver_now([message_id]).sent
    flash(f"Invitation for {email} created and " + (
        "emailed to them." if sent else "will be emailed to them shortly (the mail server "
        "did not take it yet).") + " You can also send them this link yourself; it works "
        "once, for seven days, and only for that address.", "info")
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


# -- single sign-on setup ----------------------------------------------------------------

def _connection(org: Organization, connection_id: int) -> Connection:
    """A connection of this organization; any other id is "not found"."""
    found = db_session().get(Connection, connection_id)
    if found is None or found.organization_id != org.id:
        raise NotFound("There is no such connection.", code="unknown_connection")
    return found


def _group_roles(org: Organization, text: str) -> dict[str, str]:
    """``group = role`` lines; only roles this organization defines and the admin holds."""
    mapping, actor, known = {}, _actor(org), _known_roles(org)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        group, sep, role = (part.strip() for part in line.rpartition("="))
        if not sep or not group or not role:
            raise ValidationError(f"Line {number}: write it as group = role.",
                                  code="invalid_mapping")
        if role not in known:
            raise ValidationError(f"Line {number}: this organization has no role {role!r}.",
                                  code="unknown_role")
        if not actor.may_grant(role):
            raise Forbidden(f"Line {number}: you can only map groups to roles you hold "
                            f"yourself; you do not hold {role!r}.", code="escalation")
        mapping[group] = role
    return mapping


@bp.get("/connections")
@require("read", "connection", org_arg="slug")
def connections(slug: str):
    org = _org(slug)
    rows = db_session().scalars(sa.select(Connection).where(
        Connection.organization_id == org.id).order_by(Connection.id)).all()
    return _render("orgadmin/connections.html", org, rows=rows)


@bp.route("/connections/new", methods=["GET", "POST"])
@require("manage", "connection", org_arg="slug")
def new_connection(slug: str):
    org = _org(slug)
    if request.method == "GET":
        return _render("orgadmin/connection_new.html", org, form={}, error=None,
                       kinds=connection_forms.choices(connection_forms.ORG_KINDS))
    form = request.form
    try:
        connection_id = connection_forms.create_from_form(
            form, request.files.get("metadata_file"), org_slug=org.slug,
            default_name=f"{org.name} single sign-on", kinds=connection_forms.ORG_KINDS,
            group_roles=_group_roles(org, form.get("group_roles", "")))
    except (ValidationError, FederationError) as error:
        return _render("orgadmin/connection_new.html", org, form=form,
                       kinds=connection_forms.choices(connection_forms.ORG_KINDS),
                       error=getattr(error, "safe_message", None) or error.message), 400
    flash("Connection created, switched off. Give your identity provider the values below, "
          "run a test sign-in, then enable it.", "info")
    return redirect(url_for("orgadmin.connection", slug=slug, connection_id=connection_id))


@bp.get("/connections/<int:connection_id>")
@require("read", "connection", org_arg="slug")
def connection(slug: str, connection_id: int):
    org = _org(slug)
    row = _connection(org, connection_id)
    return _render("orgadmin/connection.html", org, row=row,
                   give=connection_forms.give_values(row),
                   mapping="\n".join(f"{g} = {r}" for g, r in row.group_roles.items()))


def _change_connection(slug: str, connection_id: int, change, done: str):
    org = _org(slug)
    _connection(org, connection_id)
    with services().db.transaction() as tx:
        change(tx, audit_context(), tx.get(Connection, connection_id))
    flash(done, "info")
    return redirect(url_for("orgadmin.connection", slug=slug, connection_id=connection_id))


@bp.post("/connections/<int:connection_id>/enable")
@require("manage", "connection", org_arg="slug")
def enable_connection(slug: str, connection_id: int):
    return _change_connection(slug, connection_id, lambda tx, ctx, row: (
        connections_service.set_enabled(tx, ctx, row.id, True, require_test=True)),
        "Single sign-on is on: your users now sign in through your identity provider.")


@bp.post("/connections/<int:connection_id>/disable")
@require("manage", "connection", org_arg="slug")
def disable_connection(slug: str, connection_id: int):
    return _change_connection(slug, connection_id, lambda tx, ctx, row: (
        connections_service.set_enabled(tx, ctx, row.id, False)), "Single sign-on is off.")


@bp.post("/connections/<int:connection_id>/mapping")
@require("manage", "connection", org_arg="slug")
def connection_mapping(slug: str, connection_id: int):
    mapping = _group_roles(_org(slug), request.form.get("group_roles", ""))

    def change(tx, ctx, row):
        row.group_roles = mapping
        connections_service.mark_changed(row)
        audit.record(tx, ctx, "connection.update", target=f"connection:{row.id}",
                     organization_id=row.organization_id, details={"group_roles": mapping})
    return _change_connection(slug, connection_id, change, "Group mapping saved.")


@bp.post("/connections/<int:connection_id>/domains")
@require("manage", "connection", org_arg="slug")
def connection_domains(slug: str, connection_id: int):
    domains = request.form.get("allowed_domains", "").replace(",", " ").split()
    return _change_connection(slug, connection_id, lambda tx, ctx, row: (
        connections_service.set_allowed_domains(tx, ctx, row, domains)),
        "Allowed domains saved." if domains else "Any email domain may sign in.")


@bp.post("/connections/<int:connection_id>/secret")
@require("manage", "connection", org_arg="slug")
def connection_secret(slug: str, connection_id: int):
    secret = request.form.get("client_secret", "")
    return _change_connection(slug, connection_id, lambda tx, ctx, row: (
        connections_service.set_client_secret(tx, ctx, services().secrets, row.id, secret)),
        "Client secret replaced. Run a test sign-in, then delete the old secret at your "
        "identity provider.")


@bp.post("/connections/<int:connection_id>/metadata")
@require("manage", "connection", org_arg="slug")
def connection_metadata(slug: str, connection_id: int):
    upload = request.files.get("metadata_file")
    xml = upload.read(saml_connections.METADATA_MAX_BYTES + 1) if upload else b""

    if xml:
        return _change_connection(slug, connection_id, lambda tx, ctx, row: (
            saml_connections.replace_metadata(tx, ctx, row, xml)),
            "Identity provider metadata updated; every signing certificate in it is accepted.")
    org = _org(slug)
    _connection(org, connection_id)
    with services().db.transaction() as tx:
        row = tx.get(Connection, connection_id)
        ok = saml_connections.refresh_metadata(tx, audit_context(), row)
        error = row.settings["metadata"]["error"]
    if ok:
        flash("Identity provider metadata fetched again; every signing certificate in it is "
              "accepted.", "info")
    else:
        flash(f"The metadata could not be fetched ({error}); the last good copy stays in "
              "use.", "error")
    return redirect(url_for("orgadmin.connection", slug=slug, connection_id=connection_id))


# -- admin API tokens --------------------------------------------------------------------

@bp.get("/tokens")
@require("manage", "organization", org_arg="slug")
def tokens(slug: str):
    org = _org(slug)
    return _render("orgadmin/tokens.html", org, rows=org_tokens.list_tokens(db_session(), org),
                   scopes=org_tokens.SCOPES, secret=None)


@bp.post("/tokens")
@require("manage", "organization", org_arg="slug")
def create_token(slug: str):
    org = _org(slug)
    days = request.form.get("days", "90")
    with services().db.transaction() as tx:
        _, secret = org_tokens.create(tx, audit_context(), tx.get(Organization, org.id),
                                      current_user.id, request.form.get("name", ""),
                                      request.form.getlist("scopes"),
                                      int(days) if days.isdigit() else 0)
    flash("Token created. Copy it now: it is shown only once.", "info")
    return _render("orgadmin/tokens.html", org, rows=org_tokens.list_tokens(db_session(), org),
                   scopes=org_tokens.SCOPES, secret=secret)


@bp.post("/tokens/<int:token_id>/revoke")
@require("manage", "organization", org_arg="slug")
def revoke_token(slug: str, token_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        org_tokens.revoke(tx, audit_context(), tx.get(Organization, org.id), token_id)
    flash("Token revoked.", "info")
    return redirect(url_for("orgadmin.tokens", slug=slug))


# -- security: the organization's MFA policy -------------------------------------------

@bp.get("/security")
@require("read", "risk", org_arg="slug")
def security(slug: str):
    """Owners change the MFA policy and risk thresholds here; whoever may read sign-in risk
    (auditors, by the kind templates) sees the members' recent sign-ins and the settings in
    effect, without the form."""
    from portal.services import mfa
    org = _org(slug)
    config = current_app.config
    return _render("orgadmin/security.html", org, policies=MFA_POLICIES,
                   may_manage=_may(org, "manage", "organization"),
                   connections=_federated_connections(org),
                   defaults=(config["RISK_STEP_UP_AT"], config["RISK_DENY_AT"]),
                   sign_ins=mfa.recent_risk(db_session(), org.id))


MFA_POLICIES = (("off", "Off: members choose for themselves"),
                ("admins", "Required for administrators (owners, user and SSO managers, "
                           "auditors)"),
                ("all", "Required for every member"),
                ("risk", "When a sign-in looks risky (new device or network, recent failed "
                         "attempts, a common password, an unusual hour...); risky sign-ins "
                         "of members without one are stopped"))


def _federated_connections(org: Organization) -> list[Connection]:
    return list(db_session().scalars(
        sa.select(Connection).where(Connection.organization_id == org.id,
                                    Connection.protocol != Protocol.LDAP)
        .order_by(Connection.id)))


@bp.post("/security")
@require("manage", "organization", org_arg="slug")
def update_security(slug: str):
    """Save the MFA policy, the risk thresholds and which connections' multi-factor
    sign-ins are trusted (all or nothing: a bad value saves none of them)."""
    from portal.services import mfa
    org = _org(slug)
    trusted = set(request.form.getlist("trust_idp_mfa"))
    ctx, config = audit_context(), current_app.config
    with services().db.transaction() as tx:
        row = tx.get(Organization, org.id)
        mfa.set_policy(tx, ctx, row, request.form.get("policy", ""))
        if "risk_step_up_at" in request.form or "risk_deny_at" in request.form:
            mfa.set_risk_thresholds(tx, ctx, row, request.form.get("risk_step_up_at"),
                                    request.form.get("risk_deny_at"),
                                    (config["RISK_STEP_UP_AT"], config["RISK_DENY_AT"]))
        for connection in _federated_connections(org):
            mfa.set_idp_mfa_trust(tx, ctx, tx.get(Connection, connection.id),
                                  str(connection.id) in trusted)
    flash("Security settings saved. They apply from each member's next sign-in.", "info")
    return redirect(url_for("orgadmin.security", slug=slug))


# -- sign-up: who may create an account in this organization ---------------------------

@bp.get("/registration")
@require("manage", "organization", org_arg="slug")
def registration(slug: str):
    from portal.services import registration as registration_service
    org = _org(slug)
    return _render("orgadmin/registration.html", org, modes=registration_service.MODES,
                   domains=registration_service.verified_domains(db_session(), org),
                   signup_url=url_for("account.org_register", slug=org.slug, _external=True))


@bp.post("/registration")
@require("manage", "organization", org_arg="slug")
def update_registration(slug: str):
    """Owners choose invitation only, open to verified domains, or open; audited."""
    from portal.services import registration as registration_service
    org = _org(slug)
    with services().db.transaction() as tx:
        registration_service.set_mode(tx, audit_context(), org.slug,
                                      request.form.get("mode", ""))
    flash("Sign-up setting saved. It applies to the next sign-up.", "info")
    return redirect(url_for("orgadmin.registration", slug=slug))


# -- domains -----------------------------------------------------------------------------

@bp.get("/domains")
@require("manage", "domain", org_arg="slug")
def domains(slug: str):
    org = _org(slug)
    return _render("orgadmin/domains.html", org,
                   rows=domains_service.list_for(db_session(), org),
                   state=domains_service.state, record=domains_service.record_value)


@bp.post("/domains")
@require("manage", "domain", org_arg="slug")
def add_domain(slug: str):
    org = _org(slug)
    domains_service.add_audited(services().db, audit_context(), org.id,
                                request.form.get("name", "")[:300])
    flash("Domain added. Publish the TXT record shown for it, then verify it.", "info")
    return redirect(url_for("orgadmin.domains", slug=slug))


@bp.post("/domains/<int:domain_id>/verify")
@require("manage", "domain", org_arg="slug")
def verify_domain(slug: str, domain_id: int):
    org = _org(slug)
    result = domains_service.verify(services().db, audit_context(), org.id, domain_id,
                                    domains_service.dns_settings(current_app.config))
    flash(result.message, "info" if result.ok else "error")
    return redirect(url_for("orgadmin.domains", slug=slug))


@bp.post("/domains/<int:domain_id>/remove")
@require("manage", "domain", org_arg="slug")
def remove_domain(slug: str, domain_id: int):
    org = _org(slug)
    with services().db.transaction() as tx:
        name = domains_service.remove(tx, audit_context(), tx.get(Organization, org.id),
                                      domain_id)
    flash(f"{name} removed; it no longer routes sign-ins to {org.name}.", "info")
    return redirect(url_for("orgadmin.domains", slug=slug))


# -- the organization's audit trail ------------------------------------------------------

@bp.get("/audit")
@require("read", "audit", org_arg="slug")
def audit_trail(slug: str):
    org = _org(slug)
    filters = org_audit.parse_filters(request.args)
    before = request.args.get("before", "")
    found = org_audit.page(db_session(), org, filters,
                           before=int(before) if before.isdigit() else None)
    return _render("orgadmin/audit.html", org, page=found, filters=filters,
                   args=filters.as_args())


@bp.get("/audit/export.csv")
@require("read", "audit", org_arg="slug")
def export_audit_csv(slug: str):
    return _export_audit(slug, "csv")


@bp.get("/audit/export.jsonl")
@require("read", "audit", org_arg="slug")
def export_audit_jsonl(slug: str):
    return _export_audit(slug, "jsonl")


def _export_audit(slug: str, fmt: str):
    org = _org(slug)
    filters = org_audit.parse_filters(request.args)
    session = services().db.sessions()

    def lines():
        try:
            yield from org_audit.export(session, org, filters, fmt)
        finally:
            session.close()
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(lines()), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="{org.slug}-audit.{fmt}"'})


# -- policy simulator ----------------------------------------------------------------------

@bp.route("/policy/simulate", methods=["GET", "POST"])
@require("simulate", "policy", org_arg="slug")
def simulate(slug: str):
    """Try a decision for one of this organization's members."""
    from portal.views import simulation
    org = _org(slug)
    values = simulation.form_values(org.slug)
    result = error = None
    if request.method == "POST":
        result, error = simulation.simulate(values, members_of=org)
    return _render("orgadmin/simulate.html", org, values=values, result=result,
                   error=error), 422 if error else 200


# -- custom roles ------------------------------------------------------------------------

def _role_context(org: Organization) -> dict:
    engine = services().policy
    subject = current_subject()
    offered = custom_roles.catalogue(engine.files, org)
    held = custom_roles.held_permissions(engine, subject, org)
    return {"offered": offered, "held": held, "operator": bool(current_user.is_operator),
            "held_keys": {o.key for o in offered
                          if custom_roles.holds(held, [o.object, o.action, {"when": o.when}])},
            "describe": custom_roles.describe, "refinement_labels": REFINEMENTS}


def _form_permissions() -> tuple[list[str], dict[str, dict]]:
    """The ticked permissions and, for each, the conditions entered beside it (fields named
    ``<condition>:<permission key>``)."""
    keys = request.form.getlist("permissions")[:200]
    conditions: dict[str, dict] = {}
    for key in keys:
        chosen: dict = {name: True for name in ("own_org", "mfa")
                        if request.form.get(f"{name}:{key}") == "1"}
        raw = request.form.get(f"amount_max:{key}", "").strip().replace(",", "")
        if raw:
            if not raw.isdigit() or len(raw) > 13:
                raise ValidationError(f"The amount limit of {key} must be a whole number.",
                                      code="invalid_condition")
            chosen["amount_max"] = int(raw)
        if chosen:
            conditions[key] = chosen
    return keys, conditions


def reserved_role_names(org: Organization) -> set[str]:
    """Names a custom role may not take: every role the policy files define anywhere, and
    the platform's roles."""
    files = services().policy.files
    return {*files.roles(), *members.assignable_roles(files, org), "member",
            "platform_operator", "platform_auditor"}


@bp.get("/roles")
@require("manage", "organization", org_arg="slug")
def roles_page(slug: str):
    org = _org(slug)
    rows = custom_roles.list_for(db_session(), org)
    used = {row.id: custom_roles.usage(db_session(), org, row.name) for row in rows}
    return _render("orgadmin/roles.html", org, rows=rows, used=used, form={},
                   **_role_context(org))


@bp.post("/roles")
@require("manage", "organization", org_arg="slug")
def create_role(slug: str):
    org = _org(slug)
    context = _role_context(org)
    keys, conditions = _form_permissions()
    with services().db.transaction() as tx:
        role = custom_roles.create(
            tx, audit_context(), tx.get(Organization, org.id),
            name=request.form.get("name", "")[:100],
            description=request.form.get("description", "")[:1000],
            permissions=keys, conditions=conditions,
            offered=context["offered"], built_in=reserved_role_names(org),
            held=context["held"], actor_id=current_user.id, operator=context["operator"])
        name = role.name
    flash(f"Role {name} created. Grant it from a member's page.", "info")
    return redirect(url_for("orgadmin.roles_page", slug=slug))


@bp.route("/roles/<int:role_id>", methods=["GET", "POST"])
@require("manage", "organization", org_arg="slug")
def role(slug: str, role_id: int):
    org = _org(slug)
    context = _role_context(org)
    if request.method == "POST":
        custom_roles.get(db_session(), org, role_id)  # another organization's id: 404 first
        keys, conditions = _form_permissions()
        with services().db.transaction() as tx:
            custom_roles.update(tx, audit_context(), tx.get(Organization, org.id), role_id,
                                description=request.form.get("description", "")[:1000],
                                permissions=keys, conditions=conditions,
                                offered=context["offered"], held=context["held"],
                                operator=context["operator"])
        flash("Role saved; it applies at once.", "info")
        return redirect(url_for("orgadmin.role", slug=slug, role_id=role_id))
    row = custom_roles.get(db_session(), org, role_id)
    return _render("orgadmin/role.html", org, row=row,
                   used=custom_roles.usage(db_session(), org, row.name),
                   chosen={custom_roles.entry_key(p): custom_roles.refinements_of(p)
                           for p in row.permissions}, **context)


@bp.post("/roles/<int:role_id>/delete")
@require("manage", "organization", org_arg="slug")
def delete_role(slug: str, role_id: int):
    org = _org(slug)
    context = _role_context(org)
    with services().db.transaction() as tx:
        used = custom_roles.delete(tx, audit_context(), tx.get(Organization, org.id), role_id,
                                   held=context["held"],
                                   revoke=request.form.get("revoke") == "1",
                                   operator=context["operator"])
    flash("Role deleted" + (f"; revoked from {used.grants} member(s) and "
                            f"{used.invitations} invitation(s)." if used.in_use else "."),
          "info")
    return redirect(url_for("orgadmin.roles_page", slug=slug))


# -- branding ----------------------------------------------------------------------------

def _branding_page(org: Organization, values: dict, previewing: bool, status: int = 200,
                   error: str | None = None):
    from portal.views.branding import css_for
    shown = {**(org.branding or {}), **values}
    return _render("orgadmin/branding.html", org, values=shown, previewing=previewing,
                   preview_css=url_for("orgadmin.branding_preview_css", slug=org.slug,
                                       **{k: v for k, v in shown.items()
                                          if k in ("primary_color", "accent_color") and v}),
                   has_css=bool(css_for(shown)), error=error,
                   max_kib=branding_service.LOGO_MAX_BYTES // 1024), status


@bp.route("/branding", methods=["GET", "POST"])
@require("manage", "branding", org_arg="slug")
def branding(slug: str):
    """Colours and texts; *Preview* shows them without saving, *Save* applies them."""
    org = _org(slug)
    if request.method == "GET":
        return _branding_page(org, {}, previewing=False)
    values = {key: request.form.get(key, "")[:1000] for key in branding_service.EDITABLE}
    try:
        cleaned = branding_service.clean(values)
    except ValidationError as error:
        return _branding_page(org, values, previewing=True, status=400, error=error.message)
    if request.form.get("action") == "preview":
        return _branding_page(org, {k: cleaned.get(k, "") for k in branding_service.EDITABLE},
                              previewing=True)
    with services().db.transaction() as tx:
        branding_service.update(tx, audit_context(), tx.get(Organization, org.id), values)
    flash("Branding saved: your sign-in page and portal now wear it.", "info")
    return redirect(url_for("orgadmin.branding", slug=slug))


@bp.get("/branding/preview.css")
@require("manage", "branding", org_arg="slug")
def branding_preview_css(slug: str):
    """The colours being previewed, as custom properties of the preview box only."""
    from portal.views.branding import css_for
    values = {"primary_color": request.args.get("primary_color", ""),
              "accent_color": request.args.get("accent_color", "")}
    css = css_for(values, ".preview").replace("--brand:", "--preview-brand:").replace(
        "--accent:", "--preview-accent:")
    return Response(css, mimetype="text/css")


@bp.post("/branding/logo")
@require("manage", "branding", org_arg="slug")
def upload_logo(slug: str):
    org = _org(slug)
    upload = request.files.get("logo")
    data = upload.read(branding_service.LOGO_MAX_BYTES + 1) if upload else b""
    try:
        with services().db.transaction() as tx:
            branding_service.set_logo(tx, audit_context(), tx.get(Organization, org.id), data,
                                      base_url=_public_base_url())
    except ValidationError as error:
        with services().db.transaction() as tx:
            audit.record(tx, audit_context(), "org.logo", outcome="failure",
                         target=f"org:{org.slug}", organization_id=org.id, reason=error.code,
                         details={"bytes": len(data),
                                  "file_name": (upload.filename or "")[:100] if upload else ""})
        return _branding_page(org, {}, previewing=False, status=400, error=error.message)
    flash("Logo uploaded.", "info")
    return redirect(url_for("orgadmin.branding", slug=slug))


def _public_base_url() -> str:
    return current_app.config.get("BASE_URL") or request.url_root.rstrip("/")


@bp.post("/branding/logo/remove")
@require("manage", "branding", org_arg="slug")
def remove_logo(slug: str):
    org = _org(slug)
    with services().db.transaction() as tx:
        branding_service.remove_logo(tx, audit_context(), tx.get(Organization, org.id))
    flash("Logo removed.", "info")
    return redirect(url_for("orgadmin.branding", slug=slug))


# -- the organization's event stream to its SIEM -----------------------------------------

def _siem_page(org: Organization, secret: str = "", error: str = "", status: int = 200):
    from portal.services import siem
    session = db_session()
    return _render("orgadmin/siem.html", org, rows=siem.listing(session, org), secret=secret,
                   error=error, backlog=lambda s: siem.backlog(session, s),
                   paused_since=lambda s: siem.paused_since(session, s),
                   shown=siem.shown_target), status


@bp.get("/siem")
@require("manage", "organization", org_arg="slug")
def siem_streams(slug: str):
    return _siem_page(_org(slug))


@bp.post("/siem")
@require("manage", "organization", org_arg="slug")
def siem_add(slug: str):
    """An HTTPS webhook carrying this organization's events only; its signing secret is
    shown once, on this answer."""
    from portal.services import siem
    from portal.views.siem_forms import stream_values
    org = _org(slug)
    try:
        with services().db.transaction() as tx:
            _, secret = siem.create(tx, audit_context(), services().secrets,
                                    org=tx.get(Organization, org.id),
                                    **stream_values(request.form, operator=False))
    except (ValidationError, Conflict) as error:
        return _siem_page(org, error=error.message, status=error.status)
    flash("Stream added. Copy its signing secret now: it is shown only once.", "info")
    return _siem_page(org, secret=secret)


@bp.post("/siem/<int:stream_id>/remove")
@require("manage", "organization", org_arg="slug")
def siem_remove(slug: str, stream_id: int):
    from portal.services import siem
    org = _org(slug)
    with services().db.transaction() as tx:
        siem.remove(tx, audit_context(), siem.get(tx, stream_id, tx.get(Organization, org.id)))
    flash("Stream removed.", "info")
    return redirect(url_for("orgadmin.siem_streams", slug=slug))


@bp.post("/siem/<int:stream_id>/replay")
@require("manage", "organization", org_arg="slug")
def siem_replay(slug: str, stream_id: int):
    from portal.services import siem
    org = _org(slug)
    since = request.form.get("since", "")
    with services().db.transaction() as tx:
        siem.replay(tx, audit_context(), siem.get(tx, stream_id, tx.get(Organization, org.id)),
                    int(since) if since.isdigit() else 0)
    flash(f"Events from {since} on will be sent again, in order.", "info")
    return redirect(url_for("orgadmin.siem_streams", slug=slug))


@bp.post("/siem/<int:stream_id>/pause")
@require("manage", "organization", org_arg="slug")
def siem_pause(slug: str, stream_id: int):
    """Stop sending this organization's stream; its events wait until it is resumed."""
    return _siem_set_enabled(slug, stream_id, False)


@bp.post("/siem/<int:stream_id>/resume")
@require("manage", "organization", org_arg="slug")
def siem_resume(slug: str, stream_id: int):
    """Send again, starting with the events recorded while the stream was paused."""
    return _siem_set_enabled(slug, stream_id, True)


def _siem_set_enabled(slug: str, stream_id: int, enabled: bool):
    from portal.services import siem
    from portal.views.siem_forms import state_message
    org = _org(slug)
    with services().db.transaction() as tx:
        # Scoped to this organization: another organization's stream id answers 404.
        stream = siem.get(tx, stream_id, tx.get(Organization, org.id))
        changed = siem.set_enabled(tx, audit_context(), stream, enabled)
        name = stream.name
    flash(state_message(name, enabled, changed), "info")
    return redirect(url_for("orgadmin.siem_streams", slug=slug))
