"""The operator pages."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for

from portal.errors import TrellisError, ValidationError
from portal.extensions import audit_context, db_session, services
from portal.models import Connection, Domain, Membership, Organization
from portal.permissions import require
from portal.services import apps
from portal.services import organizations as organizations_service

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


@bp.route("/connections/new", methods=["GET", "POST"])
@require("manage", "connection")
def connection_new():
    """Add a connection for the whole platform (a sign-in button on /login) or for one
    organization; it is created switched off, like on the organization's own pages, and is
    switched on after a test sign-in passed."""
    from federation.errors import FederationError
    from portal.views import connection_forms
    if request.method == "GET":
        return _connection_form({})
    form = request.form
    owner = form.get("owner", "")
    try:
        org = organizations_service.get(db_session(), owner) if owner else None
        if org is None and form.get("protocol") == "saml":
            raise ValidationError("A SAML connection belongs to an organization: choose the "
                                  "organization its users are provisioned into.",
                                  code="invalid_protocol")
        connection_id = connection_forms.create_from_form(
            form, request.files.get("metadata_file"), org_slug=org.slug if org else None,
            default_name=f"{org.name} single sign-on" if org else
            connection_forms.KINDS.get(form.get("protocol", ""), "Single sign-on"),
            kinds=connection_forms.OPERATOR_ORG_KINDS if org else
            connection_forms.PLATFORM_KINDS)
    except (TrellisError, FederationError) as error:
        message = getattr(error, "safe_message", None) or error.message
        return _connection_form(form, error=message, status=error.status)
    flash("Connection created, switched off. Give the identity provider the values below, "
          "run a test sign-in, then switch it on.", "info")
    return redirect(url_for("admin.connection", connection_id=connection_id))


def _connection_form(form, error: str | None = None, status: int = 200):
    from portal.views import connection_forms
    orgs = db_session().scalars(sa.select(Organization).order_by(Organization.name)).all()
    return render_template("admin/connection_new.html", form=form, error=error, orgs=orgs,
                           kinds=connection_forms.choices(
                               connection_forms.OPERATOR_ORG_KINDS)), status


@bp.get("/connections/<int:connection_id>")
@require("read", "connection")
def connection(connection_id: int):
    """One connection: what to give the identity provider, the test, switching it on."""
    from portal.services import connections as connections_service
    from portal.views import connection_forms
    row = connections_service.get(db_session(), connection_id)
    return render_template("admin/connection.html", row=row,
                           give=connection_forms.give_values(row))


@bp.post("/connections/<int:connection_id>/enable")
@require("manage", "connection")
def connection_enable(connection_id: int):
    """Only a configuration that passed a test sign-in is switched on, as on an
    organization's own pages."""
    return _set_connection_enabled(connection_id, True)


@bp.post("/connections/<int:connection_id>/disable")
@require("manage", "connection")
def connection_disable(connection_id: int):
    return _set_connection_enabled(connection_id, False)


def _set_connection_enabled(connection_id: int, enabled: bool):
    from portal.services import connections as connections_service
    with services().db.transaction() as tx:
        row = connections_service.set_enabled(tx, audit_context(), connection_id, enabled,
                                              require_test=True)
        name = row.name
    flash(f"{name} is {'on' if enabled else 'off'}.", "info")
    return redirect(url_for("admin.connection", connection_id=connection_id))


@bp.get("/apps")
@require("read", "app")
def apps_page():
    return render_template("admin/apps.html", rows=apps.list_all(db_session()))


@bp.post("/apps/<client_id>/enabled")
@require("update", "app")
def app_enabled(client_id: str):
    """Stop or resume an app from the page; the form's CSRF token was checked already."""
    enable = request.form.get("enabled") == "1"
    with services().db.transaction() as tx:
        app = apps.set_enabled(tx, audit_context(), client_id, enable)
        name = app.name
    forget_client(client_id)
    flash(f"{name} is {'enabled' if enable else 'disabled'}.", "info")
    return redirect(url_for("admin.apps_page"))


@bp.route("/apps/new", methods=["GET", "POST"])
@require("create", "app")
def app_new():
    """Register an app from the page; its secret is shown once, on the answer to this POST
    (never stored in the session or a redirect)."""
    if request.method == "GET":
        return _app_form(apps.AppSpec(name=""), new=True)
    try:
        spec = spec_from_form(request.form)
        with services().db.transaction() as tx:
            app, secret = apps.create(tx, audit_context(), spec,
                                      allow_insecure_loopback=_loopback_allowed())
            client_id, name = app.client_id, app.name
    except TrellisError as error:
        return _app_form(_form_spec(request.form), new=True, error=error.message,
                         status=error.status)
    return render_template("admin/app_secret.html", client_id=client_id, name=name,
                           secret=secret, created=True)


@bp.route("/apps/<client_id>", methods=["GET", "POST"])
@require("update", "app")
def app_edit(client_id: str):
    """Change an app's redirect URIs, grants, scopes, organizations, lifetimes and logout
    URIs; the audit event names every changed field."""
    app = apps.get(db_session(), client_id)
    if request.method == "GET":
        return _app_form(apps.spec_of(app), app=app)
    try:
        changes = changes_from_form(request.form, app.auth_method)
        with services().db.transaction() as tx:
            apps.update(tx, audit_context(), client_id, changes,
                        allow_insecure_loopback=_loopback_allowed())
    except TrellisError as error:
        return _app_form(_form_spec(request.form, apps.spec_of(app)), app=app,
                         error=error.message, status=error.status)
    forget_client(client_id)
    flash(f"{app.name} was saved.", "info")
    return redirect(url_for("admin.app_edit", client_id=client_id))


@bp.post("/apps/<client_id>/secret")
@require("update", "app")
def app_rotate_secret(client_id: str):
    """A new client secret, shown once; the old one works for the chosen grace period."""
    try:
        grace = int(request.form.get("grace_seconds", apps.DEFAULT_GRACE_SECONDS))
    except ValueError:
        grace = -1  # refused by the service with the allowed range
    with services().db.transaction() as tx:
        secret = apps.rotate_secret(tx, audit_context(), client_id, grace)
        name = apps.get(tx, client_id).name
    forget_client(client_id)
    return render_template("admin/app_secret.html", client_id=client_id, name=name,
                           secret=secret, created=False, grace_seconds=grace)


def forget_client(client_id: str) -> None:
    """This worker sees a changed app at once (others within the client cache's seconds)."""
    from flask import current_app
    current_app.extensions.get("trellis_oauth_clients", {}).pop(client_id, None)


def _lines(value: str) -> list[str]:
    return [part for part in value.replace(",", " ").split() if part]


def spec_from_form(form) -> apps.AppSpec:
    spec = _form_spec(form)
    spec.access_token_seconds = _int(form, "access_token_seconds", 600)
    spec.refresh_token_seconds = _int(form, "refresh_token_seconds", 30 * 86_400)
    if spec.auth_method == "private_key_jwt":
        spec.jwks = _jwks_field(form)
    return spec


def _jwks_field(form) -> dict[str, Any]:
    from portal.errors import InvalidRequest
    try:
        value = json.loads(form.get("jwks") or "{}")
    except ValueError:
        raise InvalidRequest("jwks", "is not JSON") from None
    return value if isinstance(value, dict) else {}


def _int(form, name: str, default: int) -> int:
    from portal.errors import InvalidRequest
    try:
        return int(form.get(name) or default)
    except ValueError:
        raise InvalidRequest(name, "must be a whole number of seconds") from None


def _form_spec(form, base: apps.AppSpec | None = None) -> apps.AppSpec:
    """The form's values as a registration (also to show the form again after an error)."""
    base = base or apps.AppSpec(name="")
    public = form.get("client_type", base.client_type) == "public"
    try:
        access = _int(form, "access_token_seconds", base.access_token_seconds)
        refresh = _int(form, "refresh_token_seconds", base.refresh_token_seconds)
    except TrellisError:
        access, refresh = base.access_token_seconds, base.refresh_token_seconds
    return apps.AppSpec(
        name=form.get("name", ""), client_type="public" if public else "confidential",
        auth_method=form.get("auth_method", base.auth_method) if not public else "none",
        redirect_uris=_lines(form.get("redirect_uris", "")),
        grant_types=form.getlist("grant_types"), scopes=form.getlist("scopes"),
        organizations=_lines(form.get("organizations", "")),
        access_token_seconds=access, refresh_token_seconds=refresh,
        consent_required=form.get("consent_required") == "1",
        logo_url=form.get("logo_url", "").strip(),
        post_logout_redirect_uris=_lines(form.get("post_logout_redirect_uris", "")),
        backchannel_logout_uri=form.get("backchannel_logout_uri", "").strip(),
        frontchannel_logout_uri=form.get("frontchannel_logout_uri", "").strip(),
        initiate_login_uri=form.get("initiate_login_uri", "").strip(),
        id_token_signed_response_alg=form.get("id_token_signed_response_alg", "RS256"),
        subject_type=form.get("subject_type", base.subject_type),
        sector_identifier=form.get("sector_identifier", base.sector_identifier).strip(),
        sector_identifier_uri=form.get("sector_identifier_uri",
                                       base.sector_identifier_uri).strip(),
        access_token_signed_response_alg=form.get("access_token_signed_response_alg",
                                                  base.access_token_signed_response_alg))


def changes_from_form(form, auth_method: str) -> dict[str, Any]:
    spec = _form_spec(form)
    changes = {key: getattr(spec, key) for key in apps.EDITABLE if key != "jwks"}
    changes["access_token_seconds"] = _int(form, "access_token_seconds", 600)
    changes["refresh_token_seconds"] = _int(form, "refresh_token_seconds", 30 * 86_400)
    if auth_method == "private_key_jwt" and (form.get("jwks") or "").strip():
        changes["jwks"] = _jwks_field(form)
    return changes


def _app_form(spec: apps.AppSpec, new: bool = False, app=None, error: str | None = None,
              status: int = 200):
    return render_template("admin/app_form.html", spec=spec, new=new, app=app, error=error,
                           scopes=apps.SCOPES, grant_types=apps.GRANT_TYPES,
                           algorithms=apps.ID_TOKEN_ALGORITHMS,
                           graces=GRACE_CHOICES), status


GRACE_CHOICES = [(0, "none: the old secret stops now"), (3600, "1 hour"),
                 (86_400, "1 day"), (7 * 86_400, "7 days")]


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


@bp.get("/signin-protection")
@require("read", "signin_throttle")
def signin_protection_page():
    """What ``trellis throttle status`` shows: the global throttle, and the accounts and IPs
    locked now, each with a button to lift its lock."""
    from portal.errors import describe_wait
    from portal.services import signin_protection
    state = signin_protection.status(db_session(), services().throttle)
    return render_template("admin/signin_protection.html", state=state, wait=describe_wait,
                           at=signin_protection.utc_text)


@bp.post("/signin-protection/unlock")
@require("update", "signin_throttle")
def signin_protection_unlock():
    """Lift one lock (as Keycloak's brute-force page does); audited as ``throttle.unlock``.
    A lock that ran out meanwhile is said so, not treated as an error page."""
    from portal.errors import NotFound
    from portal.services import signin_protection
    key = request.form.get("key", "")[:200]
    try:
        with services().db.transaction() as tx:
            lifted = signin_protection.unlock(tx, audit_context(), services().throttle, key)
    except NotFound as error:
        flash(error.message, "error")
    else:
        flash(f"The lock on {lifted.label} was lifted: it may try to sign in again.", "info")
    return redirect(url_for("admin.signin_protection_page"))


@bp.get("/consents")
@require("read", "consent")
def consents_page():
    """How many people grant each purpose now, for the privacy team."""
    from flask import current_app

    from portal.services import consent
    rows = consent.statistics(db_session(), current_app.extensions["trellis_purposes"])
    return render_template("admin/consents.html", rows=rows)


@bp.get("/policy")
@require("manage", "policy")
def policies():
    """Organizations' uploaded policies: what is in force, upload a new one, remove one."""
    from portal.extensions import services
    from portal.models import Organization
    from portal.services import org_policies
    session = db_session()
    engine = services().policy
    return render_template(
        "admin/policies.html", rows=org_policies.listing(session),
        orgs=session.scalars(sa.select(Organization.slug).order_by(Organization.slug)).all(),
        errors=engine.org_errors, reload_error=engine.reload_error,
        fingerprint=engine.files.fingerprint, folder_orgs=sorted(engine.files.orgs))


@bp.post("/policy/upload")
@require("manage", "policy")
def policy_upload():
    """Upload an organization's policy file; a broken one is refused with line and reason."""
    from flask import flash, redirect, request, url_for

    from portal.errors import ValidationError
    from portal.extensions import audit_context, services
    from portal.services import org_policies
    slug = request.form.get("org", "")
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ValidationError("Choose a policy file to upload.", code="file_missing")
    try:
        text = upload.read(org_policies.MAX_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("The policy file is not UTF-8 text.", code="policy_invalid") \
            from None
    try:
        warnings = org_policies.upload_or_refuse(services().db, audit_context(),
                                                 services().policy.files, slug, text)
    except org_policies.PolicyRefused as refused:
        flash(refused.message, "error")
        return redirect(url_for("admin.policies"))
    flash(f"The policy of {slug} is in force." + "".join(f" Warning: {w}." for w in warnings),
          "info")
    return redirect(url_for("admin.policies"))


@bp.post("/policy/<slug>/remove")
@require("manage", "policy")
def policy_remove(slug: str):
    from flask import flash, redirect, url_for

    from portal.extensions import audit_context, services
    from portal.services import org_policies
    with services().db.transaction() as tx:
        org_policies.remove(tx, audit_context(), slug)
    flash(f"The uploaded policy of {slug} was removed.", "info")
    return redirect(url_for("admin.policies"))


# -- SIEM streams ------------------------------------------------------------------------

def _siem_page(secret: str = "", error: str = "", status: int = 200):
    from portal.services import siem
    session = db_session()
    rows = siem.listing(session, everything=True)
    names = {o.id: o.name for o in session.scalars(sa.select(Organization))}
    return render_template("admin/siem.html", rows=rows, orgs=names, secret=secret,
                           error=error, backlog=lambda s: siem.backlog(session, s),
                           paused_since=lambda s: siem.paused_since(session, s),
                           shown=siem.shown_target), status


@bp.get("/siem")
@require("read", "siem_stream")
def siem_page():
    """Every event stream: where it sends, how far it got, and its last error."""
    return _siem_page()


@bp.post("/siem")
@require("manage", "siem_stream")
def siem_add():
    """Add an operator stream; a webhook's signing secret is shown once, on this answer."""
    from portal.services import siem
    from portal.views.siem_forms import stream_values
    try:
        with services().db.transaction() as tx:
            _, secret = siem.create(tx, audit_context(), services().secrets,
                                    **stream_values(request.form, operator=True))
    except TrellisError as error:
        return _siem_page(error=error.message, status=error.status)
    flash("Stream added." + (" Copy its signing secret now: it is shown only once."
                             if secret else ""), "info")
    return _siem_page(secret=secret)


@bp.post("/siem/<int:stream_id>/remove")
@require("manage", "siem_stream")
def siem_remove(stream_id: int):
    from portal.services import siem
    with services().db.transaction() as tx:
        siem.remove(tx, audit_context(), siem.get(tx, stream_id, any_org=True))
    flash("Stream removed.", "info")
    return redirect(url_for("admin.siem_page"))


@bp.post("/siem/<int:stream_id>/replay")
@require("manage", "siem_stream")
def siem_replay(stream_id: int):
    from portal.services import siem
    since = request.form.get("since", "")
    with services().db.transaction() as tx:
        siem.replay(tx, audit_context(), siem.get(tx, stream_id, any_org=True),
                    int(since) if since.isdigit() else 0)
    flash(f"Events from {since} on will be sent again, in order.", "info")
    return redirect(url_for("admin.siem_page"))


@bp.post("/siem/<int:stream_id>/pause")
@require("manage", "siem_stream")
def siem_pause(stream_id: int):
    """Stop sending a stream's events; they wait after its cursor until it is resumed."""
    return _siem_set_enabled(stream_id, False)


@bp.post("/siem/<int:stream_id>/resume")
@require("manage", "siem_stream")
def siem_resume(stream_id: int):
    """Send again, starting with the events recorded while the stream was paused."""
    return _siem_set_enabled(stream_id, True)


def _siem_set_enabled(stream_id: int, enabled: bool):
    from portal.services import siem
    from portal.views.siem_forms import state_message
    with services().db.transaction() as tx:
        stream = siem.get(tx, stream_id, any_org=True)
        changed = siem.set_enabled(tx, audit_context(), stream, enabled)
        name = stream.name
    flash(state_message(name, enabled, changed), "info")
    return redirect(url_for("admin.siem_page"))


def _loopback_allowed() -> bool:
    """Plain HTTP to loopback for a sector identifier document, outside production only."""
    from flask import current_app
    return current_app.config["ENV"] != "production"
