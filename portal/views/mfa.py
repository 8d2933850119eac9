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
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user

from portal.errors import Forbidden, TooManyAttempts, TrellisError, ValidationError
from portal.extensions import audit_context, db_session, services
from portal.models import User
from portal.permissions import public, recent_second_factor, signed_in
from portal.security import safe_next
from portal.services import auth, mfa, passkeys
from portal.services.passkeys import RelyingParty

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
    begin_session(user, pending["token"], assurance=2,
                  amr=tuple(pending["amr"]) + _amr_of(method))
    session["mfa_at"] = int(time.time())
    session.update(pending.get("remember") or {})
    return redirect(safe_next(pending["next"]))


def _amr_of(method: str) -> tuple[str, ...]:
    """RFC 8176 values for the second factor: ``otp`` for an app code, ``hwk`` for a
    passkey or security key; ``mfa`` in every case."""
    return (*{"otp": ("otp",), "hwk": ("hwk",)}.get(method, ()), "mfa")


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
            return _code_page("mfa/challenge.html", exc, user=user, **_factors_of(user.id))
        return _release(pending, user, method)
    return render_template("mfa/challenge.html", user=user, error=None,
                           **_factors_of(user.id))


def _factors_of(user_id: int) -> dict[str, bool]:
    return {"has_passkeys": _has_passkeys(user_id),
            "has_totp": mfa.confirmed_factor(db_session(), user_id) is not None}


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
                row = tx.get(User, user.id)
                codes = mfa.confirm_totp(tx, audit_context().acting_as(user.id, user.email),
                                         s.secrets, s.passwords, row,
                                         request.form.get("code", ""))
                _notify(tx, row, "totp_added")
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
            return _code_page("mfa/step_up.html", exc, next=next_url,
                              has_passkeys=_has_passkeys(current_user.id))
        _stepped_up(method)
        return redirect(next_url)
    return render_template("mfa/step_up.html", next=next_url, error=None,
                           has_passkeys=_has_passkeys(current_user.id))


def _stepped_up(method: str) -> None:
    session["mfa_at"] = int(time.time())
    session["assurance"] = 2
    amr = [m for m in session.get("amr", []) if m not in ("otp", "hwk", "mfa")]
    session["amr"] = [*amr, *_amr_of(method)]
    flash("Confirmed. You can make the change now.", "info")


def _has_passkeys(user_id: int) -> bool:
    return bool(passkeys.credentials_of(db_session(), user_id))


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
                           totp=mfa.confirmed_factor(db_session(), current_user.id) is not None,
                           keys=passkeys.credentials_of(db_session(), current_user.id),
                           codes_left=mfa.unused_recovery_codes(db_session(), current_user.id)
                           if enrolled else 0,
                           required=mfa.required_for(db_session(), current_user.id))


@bp.route("/account/security/totp", methods=["GET", "POST"])
@signed_in
def totp_setup():
    """Set up an authenticator app. Needs a recent sign-in: someone who finds an unlocked
    session should not be able to bind their own phone to the account."""
    if not _recently_signed_in():
        return _sign_in_again(url_for("mfa.totp_setup"))
    if mfa.confirmed_factor(db_session(), current_user.id) is not None:
        flash("An authenticator app is already set up.", "info")
        return redirect(url_for("mfa.security"))
    s = services()
    if request.method == "POST":
        try:
            with s.db.transaction() as tx:
                row = tx.get(User, current_user.id)
                codes = mfa.confirm_totp(tx, audit_context(), s.secrets, s.passwords, row,
                                         request.form.get("code", ""))
                _notify(tx, row, "totp_added")
        except mfa.InvalidCode as exc:
            mfa.enrollment_failed(s.db, audit_context(), current_user)
            return _enroll_page(current_user, exc.message, 401,
                                action=url_for("mfa.totp_setup"))
        session["mfa_at"] = int(time.time())
        return render_template("mfa/recovery_codes.html", codes=codes,
                               continue_url=url_for("mfa.security"))
    return _enroll_page(current_user, None, 200, action=url_for("mfa.totp_setup"))


def _notify(tx, user: User, change: str) -> None:
    from portal.views.account import not_me_link
    mfa.notify_change(tx, user, change, url_for("mfa.security", _external=True), not_me_link)


def _recently_signed_in() -> bool:
    return time.time() - session.get("auth_time", 0) <= \
        current_app.config["MFA_REAUTH_MINUTES"] * 60


def _sign_in_again(next_url: str):
    flash("Please sign in again to add a second factor.", "info")
    session["force_login"] = True
    return redirect(url_for("auth.login", next=next_url))


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
    if mfa.required_for(db_session(), current_user.id) and \
            not passkeys.credentials_of(db_session(), current_user.id):
        flash("Your organization requires a second factor: add another before removing "
              "this one.", "error")
        return redirect(url_for("mfa.security"))
    with services().db.transaction() as tx:
        row = tx.get(User, current_user.id)
        mfa.remove_totp(tx, audit_context(), row)
        _notify(tx, row, "totp_removed")
    session.pop("mfa_at", None)
    flash("The authenticator app was removed.", "info")
    return redirect(url_for("mfa.security"))


@bp.post("/account/security/recovery-codes")
@signed_in
@recent_second_factor
def recovery_codes():
    s = services()
    with s.db.transaction() as tx:
        row = tx.get(User, current_user.id)
        codes = mfa.regenerate_recovery_codes(tx, audit_context(), s.passwords, row)
        _notify(tx, row, "recovery_codes")
    return render_template("mfa/recovery_codes.html", codes=codes,
                           continue_url=url_for("mfa.security"))


# ---- passkeys and security keys (WebAuthn)


def relying_party() -> RelyingParty:
    """The portal's own origin: ``TRELLIS_BASE_URL`` when set, else this request's."""
    parts = urlsplit(current_app.config.get("BASE_URL") or request.host_url)
    return RelyingParty(rp_id=parts.hostname or "", origin=f"{parts.scheme}://{parts.netloc}")


CHALLENGE_SECONDS = 300


def _keep_challenge(purpose: str, user_id: int, challenge: bytes) -> None:
    from webauthn.helpers import bytes_to_base64url
    session["webauthn"] = {"purpose": purpose, "uid": user_id, "at": time.time(),
                           "challenge": bytes_to_base64url(challenge)}


def _take_challenge(purpose: str, user_id: int) -> bytes:
    """The challenge issued to this browser for this purpose, once."""
    from webauthn.helpers import base64url_to_bytes
    kept = session.pop("webauthn", None) or {}
    if kept.get("purpose") != purpose or kept.get("uid") != user_id or \
            time.time() - kept.get("at", 0) > CHALLENGE_SECONDS:
        raise ValidationError("This passkey request expired. Please try again.",
                              code="passkey_expired")
    return base64url_to_bytes(kept["challenge"])


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("Send a JSON object.", code="invalid_json")
    return body


@bp.get("/account/security/passkeys/new")
@signed_in
def passkey_new():
    if not _recently_signed_in():
        return _sign_in_again(url_for("mfa.passkey_new"))
    return render_template("mfa/passkey_new.html")


@bp.post("/account/security/passkeys/options")
@signed_in
def passkey_registration_options():
    if not _recently_signed_in():
        raise Forbidden("Please sign in again to add a passkey.", code="reauth_required")
    options, challenge = passkeys.registration_options(db_session(), relying_party(),
                                                       current_user)
    _keep_challenge("register", current_user.id, challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/account/security/passkeys")
@signed_in
def passkey_register():
    if not _recently_signed_in():
        raise Forbidden("Please sign in again to add a passkey.", code="reauth_required")
    body = _json_body()
    challenge = _take_challenge("register", current_user.id)
    s = services()
    with s.db.transaction() as tx:
        row = tx.get(User, current_user.id)
        codes = passkeys.register(tx, audit_context(), s.passwords, relying_party(), row,
                                  body.get("credential") or {}, challenge,
                                  str(body.get("name") or ""))
        _notify(tx, row, "passkey_added")
    session["mfa_at"] = int(time.time())
    if codes:  # the first second factor: show its recovery codes once
        session["new_recovery_codes"] = s.secrets.seal({"codes": codes})
        return jsonify(redirect=url_for("mfa.new_recovery_codes"))
    flash("The passkey was added.", "info")
    return jsonify(redirect=url_for("mfa.security"))


@bp.get("/account/security/recovery-codes/new")
@signed_in
def new_recovery_codes():
    sealed = session.pop("new_recovery_codes", None)
    if not sealed:
        return redirect(url_for("mfa.security"))
    return render_template("mfa/recovery_codes.html",
                           codes=services().secrets.open(sealed)["codes"],
                           continue_url=url_for("mfa.security"))


@bp.post("/account/security/passkeys/<int:credential_id>/remove")
@signed_in
@recent_second_factor
def passkey_remove(credential_id: int):
    if mfa.required_for(db_session(), current_user.id) and \
            len(passkeys.credentials_of(db_session(), current_user.id)) <= 1 and \
            mfa.confirmed_factor(db_session(), current_user.id) is None:
        flash("Your organization requires a second factor: add another before removing "
              "this one.", "error")
        return redirect(url_for("mfa.security"))
    with services().db.transaction() as tx:
        row = tx.get(User, current_user.id)
        passkeys.remove(tx, audit_context(), row, credential_id)
        _notify(tx, row, "passkey_removed")
    flash("The passkey was removed.", "info")
    return redirect(url_for("mfa.security"))


def _passkey_subject() -> tuple[str, User, dict[str, Any] | None]:
    """Who is proving a second factor with a passkey: a pending sign-in, or a signed-in
    user stepping up."""
    found = _pending()
    if found is not None and not found[0].get("enroll"):
        return "sign_in", found[1], found[0]
    if current_user.is_authenticated:
        return "step_up", current_user._get_current_object(), None
    raise TrellisError("Please sign in again.", code="unauthenticated", status=401)


@bp.post("/login/passkey/options")
@public
def passkey_options():
    purpose, user, _ = _passkey_subject()
    options, challenge = passkeys.authentication_options(db_session(), relying_party(),
                                                         user.id)
    _keep_challenge(purpose, user.id, challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/login/passkey")
@public
def passkey_verify():
    purpose, user, pending = _passkey_subject()
    body = _json_body()
    challenge = _take_challenge(purpose, user.id)
    s, rp = services(), relying_party()
    method = mfa.checked_attempt(
        s.db, audit_context(), s.throttle, user, purpose,
        lambda tx: passkeys.use(tx, rp, user.id, body.get("credential") or {}, challenge))
    if pending is not None:
        response = _release(pending, user, method)
        return jsonify(redirect=response.location)
    _stepped_up(method)
    return jsonify(redirect=safe_next(str(body.get("next") or "")))


# ---- passwordless sign-in with a passkey (discoverable credentials)


@bp.post("/login/passkey/discover/options")
@public
def passwordless_options():
    """Options for a sign-in that names no account: the browser offers the passkeys it holds
    for the portal."""
    options, challenge = passkeys.discoverable_options(relying_party())
    _keep_challenge("passwordless", 0, challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/login/passkey/discover")
@public
def passwordless_sign_in():
    """Sign in with a passkey alone. The assertion must come with user verification (PIN or
    biometrics on the authenticator), so it counts as two factors; the sign-in then ends in
    the same completion as every other (risk assessment, device, session binding, notices),
    with the second factor satisfied. Wrong assertions count toward the throttle per
    credential and per client IP, and every outcome is audited."""
    from portal import audit
    from portal.db import utcnow
    from portal.models import UserStatus
    from portal.views.auth import finish_sign_in, open_session
    body = _json_body()
    challenge = _take_challenge("passwordless", 0)
    s, ctx, rp = services(), audit_context(), relying_party()
    credential = body.get("credential") or {}
    raw_id = str(credential.get("rawId") or "")[:64] if isinstance(credential, dict) else ""
    key = f"passkey:{raw_id}"
    s.throttle.check(key, ctx.ip)
    user, token, reason = None, None, ""
    try:
        with s.db.transaction() as tx:
            user = passkeys.identify(tx, rp, credential, challenge)
            if user.status != UserStatus.ACTIVE:
                reason = f"user_{user.status.value}"
            else:
                user.last_login_at = utcnow()
                token = open_session(tx, user, [{
                    "action": "auth.login", "target": f"user:{user.email}",
                    "details": {"method": "passkey"}}], amr=("hwk",), idp_mfa=True)
                reason = "risk_denied" if token is None else ""
    except mfa.InvalidCode as refused:
        reason = refused.detail or "passkey_invalid"
        user = db_session().get(User, getattr(refused, "user_id", None)) \
            if getattr(refused, "user_id", None) else None
    if token is None and reason != "risk_denied":
        s.throttle.record_failure(key, ctx.ip)
        with s.db.transaction() as tx:
            audit.record(tx, ctx, "auth.login", outcome="failure",
                         target=f"user:{user.email}" if user is not None else "",
                         reason=reason, details={"method": "passkey"})
        raise TrellisError("That passkey could not sign you in. Try again, or sign in with "
                           "your email.", code="passkey_refused", status=401)
    s.throttle.record_success(key, ctx.ip)
    response = finish_sign_in(user, token, amr=("hwk",),
                              next_url=safe_next(str(body.get("next") or "")), idp_mfa=True)
    return jsonify(redirect=response.location)
