"""Sign-in and sign-out."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal import audit
from portal.errors import NotFound, TooManyAttempts
from portal.extensions import audit_context, db_session, login_manager, services
from portal.forms import LoginForm
from portal.security import safe_next
from portal.services import auth, organizations
from portal.views import use_branding

bp = Blueprint("auth", __name__)
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.session_protection = None  # we rotate and revoke server-side sessions ourselves


@login_manager.user_loader
def load_user(user_id: str):
    return auth.load_session_user(db_session(), session.get("sid"), user_id)


@login_manager.unauthorized_handler
def unauthorized():
    if request.path.startswith("/api/"):
        from portal.errors import TrellisError
        raise TrellisError(status=401, code="unauthenticated", message="Please sign in.")
    flash(login_manager.login_message, "info")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


@bp.route("/login", methods=["GET", "POST"])
def login():
    return _login_page(None)


@bp.route("/o/<slug>/login", methods=["GET", "POST"])
def org_login(slug: str):
    try:
        org = organizations.get(db_session(), slug)
    except NotFound:
        raise NotFound() from None  # the generic page: do not confirm which orgs exist
    return _login_page(org)


def _login_page(org):
    use_branding(org)
    form = LoginForm()
    if request.method == "GET":
        form.next.data = safe_next(request.args.get("next"), "")
    if current_user.is_authenticated and request.method == "GET":
        return redirect(safe_next(form.next.data))
    error, status = None, 200
    if form.validate_on_submit():
        s = services()
        try:
            user, token = auth.sign_in(s.db, audit_context(), s.passwords, s.throttle,
                                       form.email.data, form.password.data,
                                       session_hours=_session_hours())
        except auth.InvalidCredentials as exc:
            error, status = exc.message, exc.status
        except TooManyAttempts as exc:
            page = render_template("auth/login.html", form=form, org=org, error=exc.message)
            return page, exc.status, exc.headers
        else:
            _begin_session(user, token)
            return redirect(safe_next(form.next.data))
    elif request.method == "POST":
        error, status = "Enter your email and password.", 400
    return render_template("auth/login.html", form=form, org=org, error=error), status


def _session_hours() -> int:
    from flask import current_app
    return current_app.config["SESSION_HOURS"]


def _begin_session(user, token: str) -> None:
    # A fresh session: nothing an attacker planted before sign-in survives it.
    session.clear()
    session.permanent = True
    session["sid"] = token
    login_user(user)


@bp.post("/logout")
@login_required
def logout():
    # CSRFProtect has already checked the token of this POST.
    ctx = audit_context()
    with services().db.transaction() as tx:
        auth.end_session(tx, session.get("sid"))
        audit.record(tx, ctx, "auth.logout", target=f"user:{current_user.email}")
    logout_user()
    session.clear()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))
