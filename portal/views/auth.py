"""Sign-in (identifier first, then password or the organization's identity provider) and
sign-out."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_user

from federation import discovery
from federation.errors import FederationError
from portal import useragent
from portal.errors import NotFound, TooManyAttempts, TrellisError
from portal.extensions import audit_context, db_session, login_manager, services
from portal.forms import LoginForm
from portal.models import Connection, Protocol
from portal.permissions import public, signed_in
from portal.security import safe_next
from portal.services import auth, directory, organizations
from portal.views import use_branding

bp = Blueprint("auth", __name__)
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.session_protection = None  # we rotate and revoke server-side sessions ourselves


@login_manager.user_loader
def load_user(user_id: str):
    user = auth.load_session_user(db_session(), session.get("sid"), user_id)
    if user is not None and not same_browser(user):
        return None
    return user


def same_browser(user) -> bool:
    """Sessions are bound to the browser family they began in (``session["ua"]``, set by
    ``begin_session``): the cookie used from another browser or system ends the session,
    audited. A session from before the binding is bound at its first use."""
    seen = useragent.family(request.user_agent.string)
    bound = session.get("ua")
    if bound is None:
        session["ua"] = seen
        return True
    if bound == seen:
        return True
    from portal import audit
    ctx = audit.Context(actor_id=user.id, actor=user.email, ip=request.remote_addr or "",
                        user_agent=request.headers.get("User-Agent", "")[:400],
                        request_id=g.get("request_id", ""))  # current_user is not known yet
    with services().db.transaction() as tx:
        auth.end_session(tx, session.get("sid"))
        audit.record(tx, ctx, "auth.session_end",
                     outcome="failure", target=f"user:{user.email}",
                     reason="user_agent_changed", details={"bound": bound, "seen": seen})
    session.clear()
    return False


@login_manager.unauthorized_handler
def unauthorized():
    if request.path.startswith("/api/"):
        raise TrellisError(status=401, code="unauthenticated", message="Please sign in.")
    flash(login_manager.login_message, "info")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    slug = request.args.get("org")
    if slug and request.method in ("GET", "HEAD"):  # a vendor app pre-selects the organization
        return redirect(url_for("auth.org_login", slug=slug, next=request.args.get("next")))
    return _login_page(None)


@bp.route("/o/<slug>/login", methods=["GET", "POST"])
@public
def org_login(slug: str):
    try:
        org = organizations.get(db_session(), slug)
    except NotFound:
        raise NotFound() from None  # the generic page: do not confirm which orgs exist
    return _login_page(org)


def _login_page(org):
    use_branding(org)
    form = LoginForm()
    if request.method in ("GET", "HEAD"):
        form.next.data = safe_next(request.args.get("next"), "")
        if current_user.is_authenticated and not session.get("force_login"):
            return redirect(safe_next(form.next.data))
        return _render(form, org)
    if not form.validate_on_submit():
        return _render(form, org, error="Enter your work email address.", status=400)
    if form.password.data:
        return _password_sign_in(form, org)
    return _discover(form, org)


def _discover(form: LoginForm, org):
    """Route the email to its organization's identity provider, or ask for a password.

    Unknown domains and organizations without single sign-on get the same password step, so
    the page reveals nothing about which domains or organizations exist."""
    from portal.views.sso import start
    email = (form.email.data or "").strip().lower()
    found = discovery.connections_for_email(db_session(), email)
    if org is not None and found and found[0].organization_id != org.id:
        found = []
    if len(found) == 1 and found[0].protocol == Protocol.LDAP:
        return _render(form, org, step="password")  # the directory checks the password
    if not found and _directory_for(email, org) is not None:
        return _render(form, org, step="password")  # a directory username on the org's page
    if len(found) == 1:
        return start(found[0], login_hint=email, next_url=form.next.data or "")
    if len(found) > 1:
        return render_template("auth/choose.html", connections=found, email=email,
                               next=form.next.data or "", org=org)
    return _render(form, org, step="password")


def _directory_for(identifier: str, org) -> Connection | None:
    """The LDAP connection that checks this identifier's password, if any: the one of the
    organization owning the email's verified domain, or on an organization's own sign-in
    page the organization's directory for a plain username. Decided again on every POST,
    never taken from the form."""
    identifier = (identifier or "").strip().lower()
    if "@" in identifier:
        found = discovery.connections_for_email(db_session(), identifier)
        if org is not None and found and found[0].organization_id != org.id:
            found = []
    elif org is not None:
        found = discovery.connections_for_org(db_session(), org.id)
    else:
        found = []
    directories = [c for c in found if c.protocol == Protocol.LDAP]
    return directories[0] if directories else None


def _password_sign_in(form: LoginForm, org):
    directory_connection = _directory_for(form.email.data, org)
    if directory_connection is not None:
        return _directory_sign_in(directory_connection, form, org)
    s = services()
    note_password(form.password.data)  # scored in the sign-in's transaction
    try:
        user, token = auth.sign_in(s.db, audit_context(), s.passwords, s.throttle,
                                   form.email.data, form.password.data,
                                   session_opener(("pwd",)))
    except auth.InvalidCredentials as exc:
        return _render(form, org, step="password", error=exc.message, status=exc.status)
    except TooManyAttempts as exc:
        return _render(form, org, step="password", error=exc.message, status=exc.status,
                       headers=exc.headers)
    return finish_sign_in(user, token, amr=("pwd",), next_url=safe_next(form.next.data))


def _directory_sign_in(connection: Connection, form: LoginForm, org):
    s, ctx = services(), audit_context()
    note_password(form.password.data)  # scored in the sign-in's transaction
    try:
        user, token, _identity = directory.sign_in(
            s.db, ctx, s.throttle, s.ldap, s.secrets, s.role_grants, connection.id,
            form.email.data or "", form.password.data or "", session_opener(("pwd",)))
    except (auth.InvalidCredentials, TooManyAttempts) as exc:
        return _render(form, org, step="password", error=exc.message, status=exc.status,
                       headers=exc.headers)
    except FederationError as error:
        identity = getattr(error, "identity", None)
        if error.code == "account_exists" and identity is not None:
            from portal.views.sso import offer_link
            return offer_link(connection, identity, {"next": form.next.data or ""})
        if error.status in (401, 403, 409):  # about this account: say it on the form
            return _render(form, org, step="password", error=error.safe_message,
                           status=error.status)
        raise  # the directory is down or misconfigured: the error page with a reference
    if form.next.data:
        next_url = safe_next(form.next.data)
    else:
        from portal.views.sso import landing
        with s.db.sessions() as db:
            next_url = landing(db, user.id)
    return finish_sign_in(user, token, amr=("pwd",), next_url=next_url)


@dataclass(frozen=True)
class Opened:
    """What the sign-in's transaction decided: the session token (None when the risk
    decision refused the sign-in) and whether a second factor (or enrolling one) is asked."""

    token: str | None
    ask: bool = False
    enroll: bool = False


def session_opener(amr: tuple[str, ...], *, idp_mfa: bool = False) -> auth.SessionOpener:
    """The step every first factor (password, directory bind, identity provider) takes in
    its own transaction once it has passed: score the risk, read what second factor is
    asked, and write the session row, the first factor's events with the ``auth.risk``
    event (one append to the audit chain) and the known device in that same transaction, so
    a sign-in commits once. ``finish_sign_in`` then acts on what was decided. The opener
    returns the session token, or None when the sign-in is refused."""
    return functools.partial(open_session, amr=amr, idp_mfa=idp_mfa)


def open_session(tx, user, events: list, *, amr: tuple[str, ...], idp_mfa: bool = False
                 ) -> str | None:
    """``session_opener``'s step, for views that run it in their own transaction."""
    g.sign_in = _settle(tx, user, events, amr=amr, idp_mfa=idp_mfa)
    return g.sign_in.token


def _settle(tx, user, events: list, *, amr: tuple[str, ...], idp_mfa: bool,
            token: str | None = None) -> Opened:
    from portal import audit
    from portal.services import mfa
    ctx = audit_context()
    assessment = assess_risk(user)
    events = list(events) if assessment is None else [*events, {
        "action": "auth.risk", "target": f"user:{user.email}",
        "details": {**assessment.as_details(), "method": list(amr)}}]
    ask = enroll = False
    if not idp_mfa:  # a trusted identity provider's own second factor counts
        enrolled, demand = mfa.sign_in_demand(tx, user.id)
        decision = assessment.decision if assessment is not None else "step_up"
        if demand == "risk" and decision == "deny" and not enrolled:
            auth.end_session(tx, token)
            events.append({"action": "auth.login", "outcome": "failure",
                           "target": f"user:{user.email}", "reason": "risk_denied"})
            audit.record_many(tx, ctx.acting_as(user.id, user.email), events)
            return Opened(None)
        ask = demand == "required" or (enrolled and (demand != "risk" or decision != "allow"))
        enroll = ask and not enrolled
    if token is None:
        token = auth.start_session(tx, user, ctx, current_app.config["SESSION_HOURS"])
    audit.record_many(tx, ctx.acting_as(user.id, user.email), events)
    if not ask:  # a sign-in held for its second factor is not complete yet
        _remember_device(tx, user, assessment.fresh if assessment else frozenset(),
                         maybe_new=assessment is None or
                         assessment.signals.get("new_device") is not False)
    return Opened(token, ask, enroll)


def finish_sign_in(user, token: str | None, *, amr: tuple[str, ...], next_url: str,
                   remember: dict | None = None, idp_mfa: bool = False):
    """Every sign-in ends here once its transaction committed. Users who have a second
    factor, or whose organization requires one, are held at the code (or enrollment) step;
    ``idp_mfa`` is set when a trusted identity provider asserted that it already used a
    second factor. Under the ``risk`` policy the sign-in's risk decision says whether the
    code is asked (and ``deny`` refuses members who have no second factor)."""
    from portal.views import mfa as mfa_views
    opened = g.pop("sign_in", None)
    if opened is None:  # a first factor that opened its session without ``session_opener``
        with services().db.transaction() as tx:
            opened = _settle(tx, user, [], amr=amr, idp_mfa=idp_mfa, token=token)
    if opened.token is None:
        session.clear()
        raise TrellisError("This sign-in looks unusual, so it was stopped. Try again later "
                           "from a device you have used before, or ask your administrator.",
                           code="risk_denied", status=403)
    if opened.ask:
        return mfa_views.hold_sign_in(user, opened.token, amr=amr, next_url=next_url,
                                      remember=remember, enroll=opened.enroll)
    if idp_mfa:
        begin_session(user, opened.token, assurance=2, amr=(*amr, "mfa"), known=True)
        session["mfa_at"] = int(time.time())
    else:
        begin_session(user, opened.token, amr=amr, known=True)
    session.update(remember or {})
    return redirect(next_url)


def password_step(org, login_hint: str | None, next_url: str):
    """The password form for a directory sign-in chosen among several connections."""
    form = LoginForm(formdata=None, email=login_hint or "", next=safe_next(next_url, ""))
    action = url_for("auth.org_login", slug=org.slug) if org is not None else \
        url_for("auth.login")
    return _render(form, org, step="password", action=action)


def _render(form: LoginForm, org, *, step: str = "email", error: str | None = None,
            status: int = 200, headers: dict[str, str] | None = None, action: str = ""):
    connections = []
    if step == "email":  # the organization's own, or the platform's social sign-ins
        connections = (discovery.connections_for_org(db_session(), org.id) if org is not None
                       else discovery.platform_connections(db_session()))
    can_register = (org.registration.value != "invite" if org is not None
                    else current_app.config["REGISTRATION"] == "open")
    page = render_template("auth/login.html", form=form, org=org, step=step, error=error,
                           connections=connections, action=action, can_register=can_register)
    return page, status, headers or {}


def begin_session(user, token: str, assurance: int = 1, amr: tuple[str, ...] = ("pwd",),
                  *, known: bool = False) -> None:
    """A fresh session at every sign-in: nothing planted before it survives. ``assurance``
    is 1 for a password, 2 when a second factor was used (policies may require it);
    ``auth_time`` and ``amr`` go into the ID tokens apps receive. ``known``: the sign-in's
    transaction already remembered this device (a sign-in completed by its second factor
    remembers it here)."""
    session.clear()
    session.permanent = True
    session["sid"] = token
    session["assurance"] = assurance
    session["auth_time"] = int(time.time())
    session["amr"] = list(amr)
    session["ua"] = useragent.family(request.user_agent.string)  # the session's browser
    login_user(user)
    if not known:
        try:
            with services().db.transaction() as tx:
                _remember_device(tx, user, frozenset())
        except Exception:
            current_app.logger.warning("could not remember the device", exc_info=True)
    from portal.views.account import after_sign_in
    after_sign_in(user)  # a scheduled account deletion is cancelled by signing in


DEVICE_COOKIE = "trellis_device"
DEVICE_SECONDS = 400 * 86400


def device_id() -> str:
    """This browser's id from the signed device cookie; a new browser gets a new id (the
    cookie is set on this response)."""
    from flask import after_this_request, g
    from itsdangerous import BadSignature, URLSafeSerializer
    if "device_id" in g:
        return g.device_id
    signer = URLSafeSerializer(current_app.config["SECRET_KEY"], salt="trellis-device")
    secure = bool(current_app.config.get("SESSION_COOKIE_SECURE"))
    name = f"__Host-{DEVICE_COOKIE}" if secure else DEVICE_COOKIE  # like the session's
    try:
        g.device_id = str(signer.loads(request.cookies.get(name, "")))
    except BadSignature:
        import secrets
        g.device_id = secrets.token_urlsafe(18)
        value = signer.dumps(g.device_id)

        @after_this_request
        def set_cookie(response):
            response.set_cookie(name, value, max_age=DEVICE_SECONDS, httponly=True,
                                samesite="Lax", secure=secure)
            return response
    return g.device_id


def assess_risk(user):
    """Score this sign-in from the request's read session (a read that fails there leaves
    its signals missing without touching the sign-in's transaction). Returns the
    assessment, or None when scoring failed (logged; the sign-in goes on)."""
    from portal import risk
    config = current_app.config
    try:
        result = risk.assess(db_session(), user.id, user.email, request.remote_addr,
                             device_id(), throttle=services().throttle,
                             password_common=g.pop("risk_common_password", None),
                             geoip=config["GEOIP_DATABASE"],
                             defaults=risk.Thresholds(config["RISK_STEP_UP_AT"],
                                                      config["RISK_DENY_AT"]))
    except Exception:
        current_app.logger.warning("risk assessment skipped", exc_info=True)
        return None
    g.risk_place = result.place  # remembered with the device once the sign-in completes
    return result


def note_password(password: str | None) -> None:
    """Whether the password of this sign-in is a common one, for the risk assessment in
    the sign-in's transaction: only the answer is kept (in the request's ``g``), never the
    password."""
    from portal import risk
    try:
        g.risk_common_password = risk.common_password(password)
    except Exception:
        current_app.logger.warning("common-password check skipped", exc_info=True)


def _remember_device(tx, user, fresh: frozenset[str], maybe_new: bool = True) -> None:
    """A completed sign-in makes this device, network, hour and place known for the user;
    a device new to the account also mails the owner a notice (``maybe_new`` False: the
    sign-in's risk assessment already found the device known, so there is nothing to
    check)."""
    from portal import risk
    from portal.views.account import notify_new_device
    if maybe_new:
        notify_new_device(tx, user, device_id(), db_session())
    place = g.get("risk_place")
    if place is None and "place" not in fresh:  # completed at the code step: locate again
        place = risk.place_of(current_app.config["GEOIP_DATABASE"], request.remote_addr)
    risk.remember(tx, user.id, request.remote_addr, device_id(), fresh=fresh, place=place)


@bp.post("/logout")
@signed_in
def logout():
    # CSRFProtect has already checked the token of this POST.
    from portal.views.provider import sign_out, signed_out_page
    saml_session = session.get("saml")
    frames = sign_out()  # also revokes apps' tokens from this session and tells apps
    if saml_session:  # signed in through SAML: end the IdP's session as well
        from portal.views.saml import logout_redirect
        response = logout_redirect(saml_session)
        if response is not None:
            if frames:  # the apps' frames first, then on to the IdP
                return signed_out_page(frames, response.headers["Location"])
            return response
    if frames:
        return signed_out_page(frames, url_for("auth.login"))
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))
