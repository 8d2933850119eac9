"""Self-service for people, signed in or not: forgotten and changed passwords, registration
and email verification.

Pages that take an email address from someone not signed in answer the same whether an
account exists or not; what differs goes to the mailbox, after the response is sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user

from portal.errors import NotFound, TooManyAttempts, TrellisError
from portal.extensions import audit_context, db_session, services
from portal.forms import (
    ChangePasswordForm,
    ForgotPasswordForm,
    PostForm,
    RegisterForm,
    ResetPasswordForm,
)
from portal.permissions import public, recent_second_factor, signed_in
from portal.services import credentials, organizations, registration
from portal.views import use_branding
from portal.views.mail import deliver_after_response, deliver_now

bp = Blueprint("account", __name__)
MAX_TOKEN = 100


# -- forgotten password ------------------------------------------------------------------

@bp.route("/password/forgot", methods=["GET", "POST"])
@public
def forgot_password():
    org = _org_from_query()
    form = ForgotPasswordForm()
    if request.method in ("GET", "HEAD"):
        return render_template("account/forgot.html", form=form, org=org)
    if not form.validate_on_submit():
        return render_template("account/forgot.html", form=form, org=org,
                               error="Enter your email address."), 400
    try:  # during a credential-stuffing episode, reset mail is for known networks only
        services().throttle.check_global(audit_context().ip)
    except TooManyAttempts as exc:
        return render_template("account/forgot.html", form=form, org=org,
                               error=exc.message), exc.status, exc.headers
    try:
        with services().db.transaction() as tx:
            message = credentials.request_reset(
                tx, audit_context(), form.email.data, minutes=current_app.config[
                    "RESET_MINUTES"],
                reset_link=lambda token: url_for("account.reset_password", token=token,
                                                 _external=True),
                sign_in_link=url_for("auth.login", _external=True))
            message_id = message.id if message is not None else None
    except TrellisError as exc:
        if exc.code != "invalid_email":
            raise
        return render_template("account/forgot.html", form=form, org=org,
                               error=exc.message), 400
    deliver_after_response([message_id])
    return render_template("account/sent.html", org=org, title="Check your email",
                           email=form.email.data.strip(), what="reset")


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
@public
def reset_password(token: str):
    g.no_store = True
    if len(token) > MAX_TOKEN:
        abort(404)
    form = ResetPasswordForm()
    try:
        user = credentials.open_reset(db_session(), token)
    except credentials.InvalidToken as exc:
        _audit_bad_token("password.reset", token)
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.forgot_password")), 400
    org = credentials.home_organization(db_session(), user)
    use_branding(org)
    if request.method in ("GET", "HEAD"):
        return render_template("account/reset.html", form=form, email=user.email)
    error = None
    if form.validate_on_submit():
        try:
            with services().db.transaction() as tx:
                credentials.reset(tx, audit_context(), services().passwords, token,
                                  form.password.data, form.confirm.data,
                                  sign_in_link=url_for("auth.login", _external=True),
                                  reset_page=url_for("account.forgot_password",
                                                     _external=True),
                                  not_me=not_me_link)
        except credentials.InvalidToken as exc:
            return render_template("account/link_invalid.html", message=exc.message,
                                   again=url_for("account.forgot_password")), 400
        except TrellisError as exc:
            error = exc.message
        else:
            _deliver_pending_for(user.email)
            if current_user.is_authenticated:  # the session just ended with all the others
                session.clear()
            flash("Your password was changed and every session of your account was signed "
                  "out. Sign in with the new password.", "info")
            return redirect(url_for("auth.login"))
    return render_template("account/reset.html", form=form, email=user.email,
                           error=error or "Enter the new password twice."), 400


# -- "this wasn't me" ---------------------------------------------------------------------

def not_me_link(token: str) -> str:
    """The absolute address of a "this wasn't me" link, for the notices that carry one."""
    return url_for("account.not_me", token=token, _external=True)


def notify_new_device(tx, user, device_id: str, read) -> int | None:
    """Called by sign-in completion (``views.auth._remember_device``) in its transaction,
    before the device is remembered: a sign-in from a device the account has not used
    before mails the owner (delivered once the response is done, so after the commit). A
    failure here is logged and never breaks the sign-in. Returns the message id."""
    from portal import useragent
    from portal.services import takeover
    try:
        if not takeover.device_is_new(read, user.id, device_id):
            return None
        with tx.begin_nested():
            message_id = takeover.notify_new_device(
                tx, user, ip=request.remote_addr or "",
                browser=useragent.describe(request.user_agent.string),
                link_for=not_me_link)
    except Exception:
        current_app.logger.warning("new-device notice skipped", exc_info=True)
        read.rollback()
        return None
    _deliver_after_commit([message_id])
    return message_id


def _deliver_after_commit(ids: list[int]) -> None:
    """An attempt at delivery once the view returned (its transaction is committed by
    then): at once under the test client, else after the response is sent."""
    from flask import after_this_request
    app = current_app._get_current_object()

    @after_this_request
    def deliver(response):
        if app.testing and not app.config.get("MAIL_AFTER_RESPONSE"):
            deliver_now(ids)
        else:
            def attempt() -> None:
                with app.app_context():
                    deliver_now(ids)
            response.call_on_close(attempt)
        return response


@bp.route("/account/not-me/<token>", methods=["GET", "POST"])
@public
def not_me(token: str):
    """From a notice email, in any browser: GET only shows what will happen (mail scanners
    follow links), the button locks the account."""
    from portal.services import takeover
    g.no_store = True
    if len(token) > MAX_TOKEN:
        abort(404)
    try:
        _row, user = takeover.open_link(db_session(), token)
    except takeover.LockLinkInvalid as exc:
        _audit_bad_token("user.lock", token)
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("auth.login")), 400
    use_branding(credentials.home_organization(db_session(), user))
    form = PostForm()
    if request.method in ("GET", "HEAD") or not form.validate_on_submit():
        return render_template("account/not_me.html", form=form, email=user.email,
                               done=False)
    try:
        with services().db.transaction() as tx:
            takeover.lock(tx, audit_context(), token)
    except takeover.LockLinkInvalid as exc:
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("auth.login")), 400
    session.clear()  # if this browser was signed in to the account, it no longer is
    return render_template("account/not_me.html", form=form, email=user.email, done=True)


# -- changing the password while signed in -----------------------------------------------

@bp.route("/account/password", methods=["GET", "POST"])
@signed_in
@recent_second_factor
def change_password():
    g.no_store = True
    form = ChangePasswordForm()
    managed_by = None
    if current_user.password_hash is None:
        managed_by = credentials.managing_provider(db_session(), current_user.id)
    recent = recently_signed_in()
    if request.method in ("GET", "HEAD") or managed_by:
        return render_template("account/change.html", form=form, managed_by=managed_by,
                               recent=recent)
    if not form.validate_on_submit() or not (recent or form.current.data):
        return render_template("account/change.html", form=form, recent=recent,
                               error="Fill in every field."), 400
    s = services()
    try:
        ended = credentials.change(
            s.db, audit_context(), s.passwords, s.throttle, current_user.id,
            form.current.data, form.password.data, form.confirm.data,
            session_token=session.get("sid", ""),
            reset_page=url_for("account.forgot_password", _external=True),
            recent_sign_in=recent, not_me=not_me_link)
    except TooManyAttempts as exc:
        return render_template("account/change.html", form=form, error=exc.message,
                               recent=recent), exc.status, exc.headers
    except TrellisError as exc:
        return render_template("account/change.html", form=form, error=exc.message,
                               recent=recent), exc.status
    _deliver_pending_for(current_user.email)
    flash("Your password was changed." + (f" {ended} other session"
                                          f"{'s were' if ended != 1 else ' was'} signed out."
                                          if ended else ""), "info")
    return redirect(url_for("account.change_password"))


def recently_signed_in() -> bool:
    """Whether this session's sign-in is recent enough to stand in for the password
    (TRELLIS_RECENT_SIGN_IN_MINUTES)."""
    import time
    started = session.get("auth_time")
    limit = current_app.config["RECENT_SIGN_IN_MINUTES"] * 60
    return isinstance(started, int) and 0 <= time.time() - started <= limit


# -- the account page --------------------------------------------------------------------

@bp.get("/account/")
@signed_in
def index():
    from portal.services import account
    g.no_store = True
    read = db_session()
    from portal.services import consent
    consents = consent.current(read, current_user.id)
    return render_template(
        "account/index.html", profile=account.profile(read, current_user.id),
        purposes=current_app.extensions["trellis_purposes"],
        profile_fields=_schema(), profile_values=_profile_values(read),
        granted={key for key, row in consents.items() if row.granted},
        consents=consents,
        sessions=account.sessions(read, current_user.id, session.get("sid", "")),
        history=account.sign_in_history(read, current_user.email), form=PostForm(),
        erase_after=current_user.erase_after, recent=recently_signed_in(),
        grace_days=current_app.config["ERASURE_GRACE_DAYS"])


@bp.post("/account/profile")
@signed_in
def update_profile():
    from portal.services import account
    try:
        with services().db.transaction() as tx:
            account.update_name(tx, audit_context(), current_user.id,
                                request.form.get("display_name", ""))
    except TrellisError as exc:
        if exc.status >= 500:
            raise
        flash(exc.message, "error")
    else:
        flash("Your profile was saved.", "info")
    return redirect(url_for("account.index"))


@bp.post("/account/sessions/<int:session_id>/revoke")
@signed_in
def revoke_session(session_id: int):
    from portal.services import account
    with services().db.transaction() as tx:
        account.revoke_session(tx, audit_context(), current_user.id, session_id,
                               session.get("sid", ""))
    flash("That session was signed out.", "info")
    return redirect(url_for("account.index"))


@bp.post("/account/sessions/revoke-others")
@signed_in
def revoke_other_sessions():
    from portal.services import account
    with services().db.transaction() as tx:
        ended = account.revoke_others(tx, audit_context(), current_user.id,
                                      session.get("sid", ""))
    flash(f"{ended} other session{'s' if ended != 1 else ''} signed out.", "info")
    return redirect(url_for("account.index"))


@bp.post("/account/consents")
@signed_in
def update_consents():
    """Grant or withdraw each purpose; every change is a new row of the consent ledger."""
    from portal.services import consent
    wanted = set(request.form.getlist("purpose"))
    with services().db.transaction() as tx:
        changed = consent.change(tx, audit_context(), current_user.id,
                                 current_app.extensions["trellis_purposes"], wanted,
                                 method="account_page", key=current_app.config["SECRET_KEY"])
    flash("Your choices were saved." if changed else "Nothing changed.", "info")
    return redirect(url_for("account.index"))


@bp.post("/account/email")
@signed_in
@recent_second_factor
def change_email():
    """Ask for a new address: a link goes to it; the account's address changes when the
    link is used."""
    from portal.services import account
    new_email = request.form.get("new_email", "")[:320]
    try:
        with services().db.transaction() as tx:
            message_id = account.request_email_change(
                tx, audit_context(), services().passwords, current_user.id, new_email,
                request.form.get("password", "")[:1024],
                hours=current_app.config["VERIFY_HOURS"],
                confirm_link=lambda token: url_for("account.confirm_email", token=token,
                                                   _external=True))
    except TrellisError as exc:
        if exc.status >= 500:
            raise
        flash(exc.message, "error")
        return redirect(url_for("account.index"))
    deliver_after_response([message_id])
    flash(f"We are sending a link to {new_email.strip()}; if our mail server is busy, we will "
          "send it shortly. Your address changes when you open it; until then you keep "
          "signing in with the current one.", "info")
    return redirect(url_for("account.index"))


@bp.route("/account/email/confirm/<token>", methods=["GET", "POST"])
@public
def confirm_email(token: str):
    """Works from any browser (the link proves the new mailbox); GET shows a button only."""
    from portal.services import account
    g.no_store = True
    if len(token) > MAX_TOKEN:
        abort(404)
    try:
        pending = account.open_email_change(db_session(), token)
    except credentials.InvalidToken as exc:
        _audit_bad_token("user.email_change", token)
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.index")), 400
    form = PostForm()
    if request.method in ("GET", "HEAD") or not form.validate_on_submit():
        return render_template("account/confirm_email.html", form=form, email=pending.email)
    try:
        with services().db.transaction() as tx:
            _user, notice_id = account.confirm_email_change(tx, audit_context(), token,
                                                                not_me_link)
    except credentials.InvalidToken as exc:
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.index")), 400
    except TrellisError as exc:
        if exc.code != "duplicate_email":
            raise
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.index")), 409
    deliver_now([notice_id])
    flash(f"Your email address is now {pending.email}. Sign in with it from now on.", "info")
    if current_user.is_authenticated:
        return redirect(url_for("account.index"))
    return redirect(url_for("auth.login"))


@bp.get("/account/export")
@signed_in
def export():
    """A copy of everything held about the signed-in person, as a JSON download."""
    import json

    from flask import Response

    from portal.services import gdpr
    with services().db.transaction() as tx:
        data = gdpr.export(tx, audit_context(), current_user.id)
    g.no_store = True
    return Response(json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json",
                    headers={"Content-Disposition": 'attachment; filename="my-trellis-data.json"'})


# -- deleting the account ----------------------------------------------------------------

@bp.post("/account/delete")
@signed_in
def request_deletion():
    """Schedule the erasure of the account after the grace period. Confirmed by the current
    password, or for people who sign in elsewhere (no password here) by a recent sign-in."""
    from portal import audit
    from portal.services import gdpr
    form = PostForm()
    if not form.validate_on_submit():
        abort(400)
    s, ctx = services(), audit_context()
    email = current_user.email
    if current_user.password_hash is not None:
        s.throttle.check(email, ctx.ip)
        confirmed = s.passwords.verify(current_user.password_hash,
                                       request.form.get("password", "")[:1024])
        problem = "Your current password is not correct."
    else:
        confirmed = recently_signed_in()
        problem = (f"Sign out and sign in again, then delete the account within "
                   f"{current_app.config['RECENT_SIGN_IN_MINUTES']} minutes.")
    if not confirmed:
        if current_user.password_hash is not None:
            s.throttle.record_failure(email, ctx.ip)
        with s.db.transaction() as tx:
            audit.record(tx, ctx, "gdpr.erase_requested", outcome="failure",
                         target=f"user:{email}", reason="not_confirmed")
        flash(problem, "error")
        return redirect(url_for("account.index") + "#delete")
    try:
        with s.db.transaction() as tx:
            when = gdpr.request_erasure(tx, ctx, current_user.id, confirmed=True,
                                        grace_days=current_app.config["ERASURE_GRACE_DAYS"])
    except TrellisError as exc:
        if exc.status >= 500:
            raise
        flash(exc.message, "error")
        return redirect(url_for("account.index") + "#delete")
    flash(f"Your account will be deleted on {when.strftime('%Y-%m-%d %H:%M')} UTC. Until "
          "then you can cancel on this page, and signing in cancels it too.", "info")
    return redirect(url_for("account.index"))


@bp.post("/account/delete/cancel")
@signed_in
def cancel_deletion():
    from portal.services import gdpr
    with services().db.transaction() as tx:
        cancelled = gdpr.cancel_erasure(tx, audit_context(), current_user.id,
                                        how="account_page")
    flash("The deletion of your account is cancelled." if cancelled else
          "Your account was not scheduled for deletion.", "info")
    return redirect(url_for("account.index"))


def after_sign_in(user) -> None:
    """Called by every sign-in once the session exists: a sign-in during the grace period
    cancels a scheduled deletion (the person is evidently still using the account)."""
    if getattr(user, "erase_after", None) is None:
        return
    from portal.services import gdpr
    with services().db.transaction() as tx:
        cancelled = gdpr.cancel_erasure(tx, audit_context(), user.id, how="sign_in")
    if cancelled:
        user.erase_after = None
        flash("You signed in, so the deletion of your account is cancelled. You can ask for "
              "it again on your account page.", "info")


# -- progressive profiling ---------------------------------------------------------------

def _schema(only_orgs: list[str] | None = None):
    """The platform's fields and those of the signed-in person's organizations (all their
    active ones, or those among ``only_orgs``, e.g. the organizations an app is offered
    to; ``["*"]`` means all)."""
    from portal.services import profiling, users
    platform = current_app.extensions["trellis_profile_schema"]
    by_org = current_app.extensions.get("trellis_org_profile_schemas") or {}
    if not by_org:
        return platform
    slugs = users.active_organization_slugs(db_session(), current_user.id)
    if only_orgs is not None and "*" not in only_orgs:
        slugs = [slug for slug in slugs if slug in only_orgs]
    return profiling.schema_for(platform, by_org, slugs)


def _profile_values(read):
    from portal.services import profiling
    return profiling.values(read, current_user.id)


def profile_fields_needed():
    """Before an app opens (the authorization endpoint): the fields it needs that the person
    has not given, or None."""
    from portal.models import OAuthApp
    from portal.services import profiling
    client_id = request.args.get("client_id", "")[:100]
    if not client_id or not (current_app.extensions["trellis_profile_schema"] or
                             current_app.extensions.get("trellis_org_profile_schemas")):
        return None
    app_row = db_session().scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id))
    if app_row is None:
        return None  # the authorization endpoint explains the error itself
    scopes = set(request.args.get("scope", "").split())
    schema = _schema(list(app_row.organizations or []))
    fields = profiling.missing(db_session(), schema, current_user.id, client_id, scopes,
                               set(session.get("profile_skipped", [])))
    if not fields:
        return None
    return redirect(url_for("account.complete_profile", app=client_id,
                            fields=",".join(f.key for f in fields),
                            next=request.full_path.rstrip("?")))


@bp.route("/account/profile/complete", methods=["GET", "POST"])
@signed_in
def complete_profile():
    """Exactly the fields asked for (by an app, or all of them from the account page)."""
    from portal.models import OAuthApp
    from portal.security import safe_next
    from portal.services import profiling
    g.no_store = True
    by_key = {f.key: f for f in _schema()}
    keys = [k for k in request.values.get("fields", "").split(",") if k in by_key] or \
        list(by_key)
    client_id = request.values.get("app", "")[:100]
    app_row = db_session().scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id)) \
        if client_id else None
    next_url = safe_next(request.values.get("next"), url_for("account.index"))
    fields = [by_key[k] for k in keys]
    have = profiling.values(db_session(), current_user.id)
    form = {k: have[k].value for k in keys if k in have}
    skippable = app_row is not None and all(f.optional for f in fields)
    errors: dict[str, str] = {}
    if request.method == "POST":
        if request.form.get("action") == "skip" and skippable:
            session["profile_skipped"] = sorted(set(session.get("profile_skipped", [])) |
                                                set(keys))
            return redirect(next_url)
        form = {k: request.form.get(k, "")[:500] for k in keys}
        via = f"app:{client_id}" if app_row is not None else "account_page"
        try:
            with services().db.transaction() as tx:
                profiling.collect(tx, audit_context(), _schema(), current_user.id, form, keys,
                                  via=via, allow_blank_optional=True)
        except profiling.FieldErrors as exc:
            errors = exc.errors
        else:
            if app_row is None:
                flash("Your details were saved.", "info")
            return redirect(next_url)
    page = render_template("account/complete_profile.html", fields=fields, form=form,
                           errors=errors, next=next_url, skippable=skippable,
                           app_name=app_row.name if app_row is not None else "")
    return page, 400 if errors else 200


# -- new versions of the terms and the privacy notice -------------------------------------

# Pages reachable while a new document waits for an answer (the answer itself, signing out,
# and what pages need to render).
TERMS_EXEMPT = {"account.terms", "auth.logout", "static", "branding.stylesheet",
                "health.healthz", "health.readyz"}


def _documents_key(docs) -> str:
    return ";".join(f"{d.key}={d.version}" for d in docs)


@bp.before_app_request
def ask_for_new_terms():
    """Someone who accepted an older version of the terms (or acknowledged an older privacy
    notice) is asked about the current one before going on (checked once per session and
    set of versions)."""
    if request.method != "GET" or request.endpoint in TERMS_EXEMPT or \
            request.path.startswith("/api/") or not current_user.is_authenticated:
        return None
    if request.endpoint == "provider.authorize":
        asked = profile_fields_needed()
        if asked is not None:
            return asked
    from portal.services import consent
    docs = consent.documents(current_app.config)
    versions = _documents_key(docs)
    if session.get("documents_checked") == versions:
        return None
    if not consent.outdated(db_session(), current_user.id, docs):
        session["documents_checked"] = versions  # nothing to ask (never asked, or current)
        return None
    return redirect(url_for("account.terms", next=request.full_path.rstrip("?")))


@bp.route("/account/terms", methods=["GET", "POST"])
@signed_in
def terms():
    """The interstitial: the documents that changed since the person last accepted them,
    each recorded in the consent ledger with its version."""
    from portal import audit
    from portal.security import safe_next
    from portal.services import consent
    config = current_app.config
    docs = consent.documents(config)
    next_url = safe_next(request.values.get("next"), url_for("home.index"))
    changed = consent.outdated(db_session(), current_user.id, docs)
    form = PostForm()

    def page(error: str | None = None):
        return render_template("account/terms.html", form=form, next=next_url,
                               documents=changed, error=error)

    if request.method == "POST" and form.validate_on_submit():
        if request.form.get("accept") != "yes":
            return page("Accept the new version to go on, or sign out."), 400
        ctx = audit_context()
        with services().db.transaction() as tx:
            for doc in changed:
                consent.record(tx, user_id=current_user.id, purpose=doc.key,
                               version=doc.version, granted=True, method="sign_in_prompt",
                               ip=ctx.ip, user_agent=ctx.user_agent, key=config["SECRET_KEY"])
                audit.record(tx, ctx, f"consent.{doc.key}",
                             target=f"user:{current_user.email}",
                             details={"version": doc.version})
        session["documents_checked"] = _documents_key(docs)
        return redirect(next_url)
    if not changed:
        return redirect(next_url)
    return page()


# -- registration ------------------------------------------------------------------------

@bp.route("/register", methods=["GET", "POST"])
@public
def register():
    return _register_page(None)


@bp.route("/o/<slug>/register", methods=["GET", "POST"])
@public
def org_register(slug: str):
    try:
        org = organizations.get(db_session(), slug)
    except NotFound:
        raise NotFound() from None
    use_branding(org)
    return _register_page(org)


def _register_page(org):
    config = current_app.config
    if not registration.open_for(db_session(), org, config["REGISTRATION"] == "open"):
        return render_template("account/register_closed.html", org=org), 404
    form = RegisterForm()
    if request.method in ("GET", "HEAD"):
        return _register_form(form, org)
    if not form.validate_on_submit():
        return _register_form(form, org, "Enter your email address and a password twice."), 400
    signup = registration.SignUp(
        email=form.email.data, password=form.password.data, confirm=form.confirm.data,
        display_name=form.display_name.data or "", accepted_terms=bool(form.accept_terms.data),
        ip=request.remote_addr or "", user_agent=request.headers.get("User-Agent", ""))
    login = url_for("auth.org_login", slug=org.slug, _external=True) if org else \
        url_for("auth.login", _external=True)
    links = registration.Links(
        verify=lambda token: url_for("account.verify_email", token=token, _external=True),
        sign_in=login, reset=url_for("account.forgot_password", _external=True))
    try:
        with services().db.transaction() as tx:
            message = registration.start(
                tx, audit_context(), services().passwords, signup,
                tx.get(type(org), org.id) if org is not None else None,
                platform_open=config["REGISTRATION"] == "open",
                terms_version=config["TERMS_VERSION"], hours=config["VERIFY_HOURS"],
                links=links)
            message_id = message.id if message is not None else None
    except TrellisError as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        return _register_form(form, org, exc.message), exc.status
    deliver_after_response([message_id])
    return render_template("account/sent.html", org=org, title="Confirm your email",
                           email=signup.email.strip(), what="verify")


def _register_form(form, org, error: str | None = None):
    return render_template("account/register.html", form=form, org=org, error=error,
                           terms_url=current_app.config["TERMS_URL"],
                           terms_version=current_app.config["TERMS_VERSION"],
                           privacy_url=current_app.config["PRIVACY_URL"],
                           privacy_version=current_app.config["PRIVACY_VERSION"])


@bp.route("/register/verify/<token>", methods=["GET", "POST"])
@public
def verify_email(token: str):
    """GET only shows a button: mail scanners open links, and must not create accounts."""
    g.no_store = True
    if len(token) > MAX_TOKEN:
        abort(404)
    try:
        pending = registration.open_link(db_session(), token)
    except registration.InvalidLink as exc:
        _audit_bad_token("registration.verify", token)
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.register")), 400
    from portal.models import Organization
    org = db_session().get(Organization, pending.organization_id) \
        if pending.organization_id else None
    use_branding(org)
    form = PostForm()
    if request.method in ("GET", "HEAD") or not form.validate_on_submit():
        return render_template("account/verify.html", form=form, email=pending.email, org=org)
    try:
        with services().db.transaction() as tx:
            registration.verify(tx, audit_context(), token,
                                 key=current_app.config["SECRET_KEY"],
                                 privacy_version=current_app.config["PRIVACY_VERSION"])
    except registration.InvalidLink as exc:
        return render_template("account/link_invalid.html", message=exc.message,
                               again=url_for("account.register")), 400
    except TrellisError as exc:
        if exc.code != "duplicate_email":
            raise
        flash(exc.message, "info")
    else:
        flash("Your email address is confirmed and your account is ready. Sign in.", "info")
    if org is not None:
        return redirect(url_for("auth.org_login", slug=org.slug))
    return redirect(url_for("auth.login"))


# -- helpers -----------------------------------------------------------------------------

def _org_from_query():
    """A page reached from an organization's sign-in page keeps its branding."""
    slug = request.args.get("org", "")
    if not slug:
        return None
    try:
        org = organizations.get(db_session(), slug)
    except (NotFound, TrellisError):
        return None
    use_branding(org)
    return org


def _deliver_pending_for(email: str) -> None:
    """An attempt now for the notice just written to this address (no secret depends on
    its timing: the person is already known to the page)."""
    from portal.models import OutboxMessage, OutboxStatus
    ids = list(db_session().scalars(
        sa.select(OutboxMessage.id).where(OutboxMessage.to_address == email,
                                          OutboxMessage.status == OutboxStatus.PENDING,
                                          OutboxMessage.attempts == 0)))
    if ids:
        deliver_now(ids)


def _audit_bad_token(action: str, token: str) -> None:
    from portal import audit
    with services().db.transaction() as tx:
        audit.record(tx, audit_context(), action, outcome="failure", reason="invalid_token",
                     details={"token_hash_prefix": credentials.digest(token)[:12]})
