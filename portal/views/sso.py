"""Federated sign-in: start at the organization's identity provider, come back, provision.

The pending sign-in (state, nonce, PKCE verifier) lives in the browser's server-signed session
and is consumed once: a replayed or foreign callback finds nothing to complete.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from federation import provisioning
from federation.errors import FederationError
from federation.identity import RequestContext, identity_from_dict, identity_to_dict
from federation.oidc import PENDING_MAX_AGE
from policies.engine import PLATFORM
from portal import audit
from portal.errors import NotFound, TrellisError
from portal.extensions import audit_context, db_session, services
from portal.forms import LinkForm
from portal.models import Connection, Protocol
from portal.permissions import public, require
from portal.security import safe_next
from portal.services import auth, connections, replay, users
from portal.views.auth import finish_sign_in, open_session

bp = Blueprint("sso", __name__, url_prefix="/sso")
log = logging.getLogger("trellis.sso")
MAX_PENDING = 5


def start(connection: Connection, *, login_hint: str | None, next_url: str,
          test: bool = False):
    """Send the browser to the connection's identity provider (or, for a directory, to
    the password form: the directory checks the password)."""
    if connection.protocol == Protocol.SAML:
        from portal.views import saml
        return saml.begin(connection, login_hint=login_hint, next_url=next_url, test=test)
    if connection.protocol == Protocol.LDAP and not test:
        from portal.views.auth import password_step
        return password_step(connection.organization, login_hint, next_url)
    if connection.protocol != Protocol.OIDC:
        raise NotFound("This sign-in method is not available yet.", code="unsupported")
    s = services()
    settings = _oidc_settings(connection)
    callback = url_for("sso.oidc_callback", connection_id=connection.id, _external=True)
    outcome = s.oidc.begin(settings, RequestContext(
        redirect_uri=callback, login_hint=login_hint,
        force_authn=bool(session.get("force_login")) and not test))
    pending = {**outcome.pending_state, "next": safe_next(next_url, ""), "test": test}
    stored = dict(session.get("sso_pending", {}))
    stored[pending["state"]] = pending
    session["sso_pending"] = dict(list(stored.items())[-MAX_PENDING:])
    return redirect(outcome.url)


def _oidc_settings(connection: Connection):
    return connections.oidc_settings(
        connection, services().secrets,
        allow_insecure_loopback=current_app.config["ENV"] != "production")


@bp.post("/<int:connection_id>/start")
@public
def start_chosen(connection_id: int):
    """The user picked one of several connections of their organization."""
    connection = db_session().get(Connection, connection_id)
    if connection is None or not connection.enabled:
        raise NotFound()
    return start(connection, login_hint=request.form.get("login_hint") or None,
                 next_url=request.form.get("next", ""))


def _connection_org(kwargs: dict[str, Any]) -> str:
    connection = db_session().get(Connection, kwargs["connection_id"])
    if connection is None:
        raise NotFound()
    return connection.organization.slug if connection.organization else PLATFORM


@bp.post("/<int:connection_id>/test")
@require("test", "connection", org_from=_connection_org)
def start_test(connection_id: int):
    """Test mode: run a sign-in that provisions nothing and shows what would happen."""
    connection = db_session().get(Connection, connection_id)
    if connection.protocol == Protocol.LDAP:
        return _directory_test(connection, request.form.get("login_hint") or "")
    return start(connection, login_hint=request.form.get("login_hint") or None, next_url="",
                 test=True)


def _directory_test(connection: Connection, sample_login: str):
    """Bind with the service account, count users and groups, map a sample entry (the one
    named in the form, else the first): nothing is provisioned."""
    s = services()
    report = s.ldap.test(connections.ldap_settings(connection, s.secrets), sample_login)
    roles = sorted(provisioning.mapped_roles(connection, report.sample)) if report.sample \
        else []
    with s.db.transaction() as tx:
        audit.record(tx, audit_context(), "connection.test",
                     target=f"connection:{connection.id}",
                     organization_id=connection.organization_id,
                     outcome="success" if report.ok else "failure",
                     reason=report.error.code if report.error else "",
                     details={"users": report.users, "groups": report.groups,
                              "sample": report.sample_dn})
    return render_template("sso/ldap_test.html", connection=connection, report=report,
                           roles=roles)


@bp.get("/oidc/<int:connection_id>/callback")
@public
def oidc_callback(connection_id: int):
    callback = request.args.to_dict()
    pending = _take_pending(callback.get("state", ""))
    connection = db_session().get(Connection, connection_id)
    if connection is None:
        raise NotFound()
    s, ctx = services(), audit_context()
    try:
        if pending is None:
            raise FederationError("state_unknown", "This sign-in link was already used or "
                                  "belongs to another browser. Please start again.")
        if not replay.consume(s.db, "oidc-state", pending["state"], PENDING_MAX_AGE * 2):
            raise FederationError("state_replayed", "This sign-in link was already "
                                  "used. Please start again.")
        identity = s.oidc.complete(_oidc_settings(connection), callback, pending)
    except FederationError as error:
        record_failure(connection, error, None, test=bool(pending and pending.get("test")))
        if pending and pending.get("test"):
            return test_report(connection, error=error)
        raise
    if pending.get("test"):
        return test_sign_in(connection, identity)
    return finish(connection, identity, pending, ctx)


def _take_pending(state: str) -> dict[str, Any] | None:
    stored = dict(session.get("sso_pending", {}))
    pending = stored.pop(state, None) if state else None
    session["sso_pending"] = stored
    return pending


def test_sign_in(connection: Connection, identity):
    """Test mode after the protocol checks passed: show the plan, provision nothing."""
    plan = provisioning.plan(db_session(), connection, identity, test=True)
    with services().db.transaction() as tx:
        if plan.refusal is None:  # enabling is allowed once a test sign-in has succeeded
            connections.mark_tested(tx.get(Connection, connection.id))
        audit.record(tx, audit_context(), "auth.test_login",
                     target=f"connection:{connection.id}",
                     organization_id=connection.organization_id,
                     outcome="failure" if plan.refusal else "success",
                     reason=plan.refusal.code if plan.refusal else "", details=plan.as_report())
    return test_report(connection, identity=identity, plan=plan)


def finish(connection: Connection, identity, pending: dict[str, Any], ctx,
           remember: dict[str, Any] | None = None):
    """Provision and sign in; ``remember`` goes into the new session (SAML logout data)."""
    s, idp_mfa = services(), trusts_idp_mfa(connection, identity)
    try:
        with s.db.transaction() as tx:
            known = provisioning.sign_in_returning(tx, ctx, connection, identity)
            if known is not None:
                user = known.user
            else:  # the plan reads the connection's settings, loaded for this request
                plan = provisioning.plan(tx, connection, identity)
                user = provisioning.apply(tx, ctx, connection, plan, s.role_grants)
            token = open_session(tx, user, [known.login] if known is not None else [],
                                 amr=("fed",), idp_mfa=idp_mfa)
            landing_url = safe_next(pending.get("next")) if pending.get("next") else \
                landing(tx, user.id, connection, known)
    except FederationError as error:
        record_failure(connection, error, identity)
        if error.code == "account_exists":
            return offer_link(connection, identity, pending, remember)
        raise
    return finish_sign_in(user, token, amr=("fed",), next_url=landing_url, remember=remember,
                          idp_mfa=idp_mfa)


def trusts_idp_mfa(connection: Connection, identity) -> bool:
    """The organization set this connection to accept the identity provider's own second
    factor, and this sign-in's ``amr`` (or SAML AuthnContext) says one was used."""
    from portal.services import mfa
    return bool((connection.settings or {}).get("trust_idp_mfa")) and \
        mfa.idp_asserted_mfa(identity.auth.amr, identity.auth.acr)


def offer_link(connection: Connection, identity, pending: dict[str, Any],
               remember: dict[str, Any] | None = None):
    """The email belongs to an existing account: its owner may link by proving control.
    ``remember`` (SAML logout data) waits in the offer for the session the link starts."""
    session["sso_link"] = services().secrets.seal({
        "identity": identity_to_dict(identity), "connection_id": connection.id,
        "next": pending.get("next", ""), "created": time.time(), "remember": remember or {}})
    return redirect(url_for("sso.link"))


LINK_OFFER_MAX_AGE = 20 * 60  # covers the mailed link's 15 minutes after it is asked for


def _open_offer() -> tuple[dict[str, Any], Any, Connection]:
    """This browser's link offer, its identity and connection; expired or absent: an error."""
    sealed = session.get("sso_link")
    offer = services().secrets.open(sealed) if sealed else None
    if not offer or time.time() - offer["created"] > LINK_OFFER_MAX_AGE:
        session.pop("sso_link", None)
        raise FederationError("link_expired", "This link request expired. Please sign in "
                              "again through your organization.")
    connection = db_session().get(Connection, offer["connection_id"])
    if connection is None:
        raise NotFound()
    return offer, identity_from_dict(offer["identity"]), connection


@bp.route("/link", methods=["GET", "POST"])
@public
def link():
    offer, identity, connection = _open_offer()
    form = LinkForm()
    error, status = None, 200
    if form.validate_on_submit():
        try:
            return _link_and_sign_in(connection, identity, offer, password=form.password.data)
        except auth.InvalidCredentials as exc:
            error, status = exc.message, exc.status
        except TrellisError as exc:
            error, status = exc.message, exc.status
    return render_template("sso/link.html", form=form, email=identity.email,
                           connection=connection, error=error), status


@bp.post("/link/email")
@public
def link_by_email():
    """Instead of the password: a single-use link to the account's address, valid in this
    browser only (its digest waits in this browser's offer)."""
    from portal.services import identity_links
    from portal.views.mail import deliver_after_response
    offer, identity, _connection = _open_offer()
    with services().db.transaction() as tx:
        message, token_digest = identity_links.mail_link(
            tx, audit_context(), identity.email,
            lambda token: url_for("sso.link_confirm", token=token, _external=True))
    if message is not None:
        session["sso_link"] = services().secrets.seal({**offer, "link_token": token_digest,
                                                       "created": time.time()})
        deliver_after_response([message.id])
    return render_template("sso/link_sent.html", email=identity.email,
                           minutes=identity_links.EMAIL_MINUTES)


@bp.route("/link/confirm/<token>", methods=["GET", "POST"])
@public
def link_confirm(token: str):
    """The mailed link. Opening it shows a button (mail scanners open links); pressing it
    links, in the browser whose offer holds this token's digest."""
    from portal.services import credentials, identity_links
    offer, identity, connection = _open_offer()
    if offer.get("link_token") != credentials.digest(token):
        raise credentials.InvalidToken("This link belongs to another browser, or a newer one "
                                       "was sent. Open the latest link in the browser where "
                                       "you signed in.")
    if request.method == "GET":
        return render_template("sso/link_confirm.html", email=identity.email,
                               connection=connection)
    with services().db.transaction() as tx:
        user = identity_links.spend_mailed_link(tx, token)
    return _link_and_sign_in(connection, identity, offer, user=user, proof="email")


def _link_and_sign_in(connection: Connection, identity, offer: dict, *, password: str = "",
                      user=None, proof: str = "password"):
    """Link, provision and sign in; the account's control was proven by its ``password``,
    or (``user`` given) by the mailed link."""
    s, ctx = services(), audit_context()
    proof_session = None
    if user is None:
        user, proof_session = auth.sign_in(s.db, ctx, s.passwords, s.throttle, identity.email,
                                           password,
                                           auth.session_for(ctx, current_app.config[
                                               "SESSION_HOURS"]))
    with s.db.transaction() as tx:
        if proof_session is not None:
            auth.end_session(tx, proof_session)  # the password only proved control
        row = tx.get(Connection, connection.id)
        provisioning.link(tx, ctx.acting_as(user.id, user.email), row, identity, user.id,
                          proof=proof)
        plan = provisioning.plan(tx, row, identity)
        user = provisioning.apply(tx, ctx, row, plan, s.role_grants)
        idp_mfa = trusts_idp_mfa(connection, identity)
        token = open_session(tx, user, [], amr=("fed",), idp_mfa=idp_mfa)
        landing_url = safe_next(offer.get("next")) if offer.get("next") else \
            landing(tx, user.id)
    # finish_sign_in replaces the password sign-in session too
    return finish_sign_in(user, token, amr=("fed",), next_url=landing_url,
                          remember=offer.get("remember") or None, idp_mfa=idp_mfa)


def landing(tx, user_id: int, connection: Connection | None = None, known=None) -> str:
    if known is not None and known.organizations == 1 and known.org_slug:
        return url_for("home.organization", slug=known.org_slug)
    slugs = users.active_organization_slugs(tx, user_id, limit=2)
    if len(slugs) == 1:
        return url_for("home.organization", slug=slugs[0])
    return url_for("home.index")  # several organizations (or none): the home page picks


def record_failure(connection: Connection, error: FederationError, identity,
                    test: bool = False) -> None:
    log.warning("federated sign-in failed: connection %s: %s (%s)", connection.id,
                error.code, error.detail)
    with services().db.transaction() as tx:
        provisioning.record_refusal(tx, audit_context(), tx.get(Connection, connection.id),
                                    error, identity, test=test)


def test_report(connection: Connection, identity=None, plan=None, error=None):
    return render_template("sso/test_result.html", connection=connection, identity=identity,
                           report=plan.as_report() if plan else None,
                           refusal=plan.refusal if plan else None, error=error)
