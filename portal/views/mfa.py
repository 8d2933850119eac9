"""Second factors: the code step of sign-in, enrollment (from the account page, or forced at
sign-in by the organization's policy), recovery codes and step-up.

Between the first factor and the code the browser holds a *pending* sign-in: the session
token of the new server-side session, sealed with the platform's keys inside the signed
session cookie under its own key. Nothing signs the user in until the code is right:
Flask-Login never sees the user and ``sid`` stays unset.
"""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user

from portal.errors import TooManyAttempts, TrellisError
from portal.extensions import audit_context, db_session, services
from portal.models import User
from portal.permissions import public, recent_second_factor, signed_in
from portal.security import safe_next
from portal.services import auth, mfa

bp = Blueprint("mfa", __name__)
PENDING_SECONDS = 600  # time allowed between the password and the code


# ---- the pending sign-in


def hold_sign_in(user: User, token: str, *, amr: tuple[str, ...], next_url: str,
                 remember: dict[str, Any] | None, enroll: bool):
    """Keep a first-factor sign-in pending and send the browser to the code (or enrollment)
    step."""
    session.clear()
    session["mfa_pending"] = services().secrets.seal({
        "uid": user.id, "token": token, "amr": list(amr), "next": next_url,
        "remember": remember or {}, "at": time.time(), "enroll": enroll})
    return redirect(url_for("mfa.setup_at_sign_in" if enroll else "mfa.challenge"))


def _pending() -> tuple[dict[str, Any], User] | None:
    sealed = session.get("mfa_pending")
    pending = services().secrets.open(sealed) if sealed else None
    if not pending:
        return None
    user = db_session().get(User, pending["uid"])
    if time.time() - pending["at"] > PENDING_SECONDS or user is None or not user.is_active:
        _abandon(pending)
        return None
    return pending, user


def _abandon(pending: dict[str, Any]) -> None:
    with services().db.transaction() as tx:
        auth.end_session(tx, pending["token"])
    session.pop("mfa_pending", None)


def _release(pending: dict[str, Any], user: User, method: str):
    """The second factor is done: the pending session becomes the signed-in session."""
    from portal.views.auth import begin_session
    amr = tuple(pending["amr"]) + (("otp",) if method == "otp" else ()) + ("mfa",)
    begin_session(user, pending["token"], assurance=2, amr=amr)
    session["mfa_at"] = int(time.time())
    session.update(pending.get("remember") or {})
    return redirect(safe_next(pending["next"]))


def _start_again():
    flash("Your sign-in took too long or was already finished. Please sign in again.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/login/mfa", methods=["GET", "POST"])
@public
def challenge():
    """The code step of sign-in: a code from the authenticator app or a recovery code."""
    found = _pending()
    if found is None:
        return _start_again()
    pending, user = found
    if pending.get("enroll"):
        return redirect(url_for("mfa.setup_at_sign_in"))
    if request.method == "POST":  # CSRFProtect has checked the token
        try:
            method = _verify(user, "sign_in")
        except (mfa.InvalidCode, TooManyAttempts) as exc:
            return _code_page("mfa/challenge.html", exc, user=user)
        return _release(pending, user, method)
    return render_template("mfa/challenge.html", user=user, error=None)


@bp.route("/login/mfa/setup", methods=["GET", "POST"])
@public
def setup_at_sign_in():
    """Enrollment forced by the organization's policy before the sign-in completes."""
    found = _pending()
    if found is None:
        return _start_again()
    pending, user = found
    if not pending.get("enroll"):
        return redirect(url_for("mfa.challenge"))
    s = services()
    if request.method == "POST":
        try:
            with s.db.transaction() as tx:
                codes = mfa.confirm_totp(tx, audit_context().acting_as(user.id, user.email),
                                         s.secrets, s.passwords, tx.get(User, user.id),
                                         request.form.get("code", ""))
        except mfa.InvalidCode as exc:
            mfa.enrollment_failed(s.db, audit_context().acting_as(user.id, user.email), user)
            return _enroll_page(user, exc.message, 401, action=url_for(
                "mfa.setup_at_sign_in"))
        _release(pending, user, "otp")
        return render_template("mfa/recovery_codes.html", codes=codes,
                               continue_url=safe_next(pending["next"]))
    return _enroll_page(user, None, 200, action=url_for("mfa.setup_at_sign_in"),
                        forced=True)


# ---- step-up


@bp.route("/login/step-up", methods=["GET", "POST"])
@signed_in
def step_up():
    """Confirm a recent second factor before a sensitive change."""
    next_url = safe_next(request.values.get("next"))
    if not mfa.has_second_factor(db_session(), current_user.id):
        return redirect(next_url)
    if request.method == "POST":
        try:
            method = _verify(current_user, "step_up")
        except (mfa.InvalidCode, TooManyAttempts) as exc:
            return _code_page("mfa/step_up.html", exc, next=next_url)
        session["mfa_at"] = int(time.time())
        session["assurance"] = 2
        amr = [m for m in session.get("amr", []) if m not in ("otp", "mfa")]
        session["amr"] = [*amr, *(["otp"] if method == "otp" else []), "mfa"]
        flash("Confirmed. You can make the change now.", "info")
        return redirect(next_url)
    return render_template("mfa/step_up.html", next=next_url, error=None)


def _verify(user: User, purpose: str) -> str:
    s = services()
    return mfa.verify(s.db, audit_context(), s.throttle, s.secrets, s.passwords, user,
                      request.form.get("code", ""), purpose=purpose)


def _code_page(template: str, exc: TrellisError, **values):
    return render_template(template, error=exc.message, **values), exc.status, exc.headers


# ---- the user's own security settings


@bp.get("/account/security")
@signed_in
def security():
    enrolled = mfa.has_second_factor(db_session(), current_user.id)
    return render_template("mfa/security.html", enrolled=enrolled,
                           codes_left=mfa.unused_recovery_codes(db_session(), current_user.id)
                           if enrolled else 0,
                           required=mfa.required_for(db_session(), current_user.id))


@bp.route("/account/security/totp", methods=["GET", "POST"])
@signed_in
def totp_setup():
    """Set up an authenticator app. Needs a recent sign-in: someone who finds an unlocked
    session should not be able to bind their own phone to the account."""
    max_age = current_app.config["MFA_REAUTH_MINUTES"] * 60
    if time.time() - session.get("auth_time", 0) > max_age:
        flash("Please sign in again to set up an authenticator app.", "info")
        session["force_login"] = True
        return redirect(url_for("auth.login", next=url_for("mfa.totp_setup")))
    if mfa.has_second_factor(db_session(), current_user.id):
        flash("An authenticator app is already set up.", "info")
        return redirect(url_for("mfa.security"))
    s = services()
    if request.method == "POST":
        try:
            with s.db.transaction() as tx:
                codes = mfa.confirm_totp(tx, audit_context(), s.secrets, s.passwords,
                                         tx.get(User, current_user.id),
                                         request.form.get("code", ""))
        except mfa.InvalidCode as exc:
            mfa.enrollment_failed(s.db, audit_context(), current_user)
            return _enroll_page(current_user, exc.message, 401,
                                action=url_for("mfa.totp_setup"))
        session["mfa_at"] = int(time.time())
        return render_template("mfa/recovery_codes.html", codes=codes,
                               continue_url=url_for("mfa.security"))
    return _enroll_page(current_user, None, 200, action=url_for("mfa.totp_setup"))


def _enroll_page(user: User, error: str | None, status: int, action: str,
                 forced: bool = False):
    """The QR code and the secret for manual entry. A secret being set up is kept until it
    is confirmed, so reloading the page shows the same one."""
    s = services()
    with s.db.transaction() as tx:
        row = tx.get(User, user.id)
        enrollment = mfa.pending_enrollment(tx, s.secrets, row) or \
            mfa.begin_totp(tx, s.secrets, row)
    return render_template("mfa/enroll.html", enrollment=enrollment, error=error,
                           action=action, forced=forced, user=user), status


@bp.post("/account/security/totp/remove")
@signed_in
@recent_second_factor
def totp_remove():
    if mfa.required_for(db_session(), current_user.id):
        flash("Your organization requires a second factor: set up a new app instead of "
              "removing this one.", "error")
        return redirect(url_for("mfa.security"))
    with services().db.transaction() as tx:
        mfa.remove_totp(tx, audit_context(), tx.get(User, current_user.id))
    session.pop("mfa_at", None)
    flash("The authenticator app was removed.", "info")
    return redirect(url_for("mfa.security"))


@bp.post("/account/security/recovery-codes")
@signed_in
@recent_second_factor
def recovery_codes():
    s = services()
    with s.db.transaction() as tx:
        codes = mfa.regenerate_recovery_codes(tx, audit_context(), s.passwords,
                                              tx.get(User, current_user.id))
    return render_template("mfa/recovery_codes.html", codes=codes,
                           continue_url=url_for("mfa.security"))
