"""SAML 2.0 endpoints of each connection: SP metadata, the ACS, single logout.

The IdP posts to the ACS from another site, where a SameSite=Lax session cookie is not sent.
The pending AuthnRequests of this browser therefore travel in a cookie of their own,
SameSite=None and sealed (encrypted and authenticated with the server's key): only this browser
holds them, nobody can forge or read them, and each request id is consumed once in the replay
cache. Everything else (provisioning, test mode, failures) is shared with OIDC in ``sso``.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, flash, redirect, request, session, url_for
from flask_login import logout_user
from werkzeug.exceptions import RequestEntityTooLarge

from federation.errors import FederationError
from federation.identity import RequestContext
from federation.saml import PENDING_MAX_AGE, SamlSettings, replay_key, replay_ttl
from portal import audit
from portal.errors import NotFound
from portal.extensions import audit_context, csrf, db_session, services
from portal.models import Connection, FederatedIdentity, Protocol
from portal.permissions import public
from portal.security import safe_next
from portal.services import replay, users
from portal.services import saml as saml_connections
from portal.views import sso

bp = Blueprint("saml", __name__, url_prefix="/saml")
csrf.exempt(bp)  # the IdP posts here; the signed assertion and request binding protect it
PENDING_COOKIE = "trellis_saml"
MAX_PENDING = 5


def base_url() -> str:
    return current_app.config["BASE_URL"] or request.url_root.rstrip("/")


def connection_settings(connection: Connection) -> SamlSettings:
    return saml_connections.settings_for(db_session(), services().secrets, connection,
                                         base_url())


def _saml_connection(connection_id: int) -> Connection:
    connection = db_session().get(Connection, connection_id)
    if connection is None or connection.protocol != Protocol.SAML:
        raise NotFound("There is no such SAML connection.", code="unknown_connection")
    return connection


# -- sign-in ---------------------------------------------------------------------------------

def begin(connection: Connection, *, login_hint: str | None, next_url: str, test: bool):
    """Send the browser to the IdP with an AuthnRequest (called by ``sso.start``)."""
    _refresh_metadata_if_due(connection)
    outcome = services().saml.begin(connection_settings(connection), RequestContext(
        redirect_uri="", login_hint=login_hint,
        force_authn=bool(session.get("force_login")) and not test))
    pending = _read_pending()
    pending[outcome.pending_state["state"]] = {
        **outcome.pending_state, "connection_id": connection.id,
        "next": safe_next(next_url, ""), "test": test}
    response = redirect(outcome.url)
    _write_pending(response, dict(list(pending.items())[-MAX_PENDING:]))
    return response


def _refresh_metadata_if_due(connection: Connection) -> None:
    """Metadata past its cacheDuration/validUntil is fetched again before the sign-in; a
    failed fetch keeps the last good copy (and is recorded on the connection). `trellis
    worker` refreshes due metadata too, so this only fetches when no worker has yet."""
    if not saml_connections.is_due(connection):
        return
    with services().db.transaction() as tx:
        saml_connections.refresh_metadata(tx, audit_context(), tx.get(Connection, connection.id))
    db_session().refresh(connection)


@bp.post("/<int:connection_id>/acs")
@public
def acs(connection_id: int):
    connection = _saml_connection(connection_id)
    s, ctx = services(), audit_context()
    pending, pending_all = None, _read_pending()
    try:
        form = _posted_form()
        settings = connection_settings(connection)
        message = s.saml.read_response(form)
        request_id = message.in_response_to
        if request_id:
            pending = pending_all.pop(request_id, None)
            _check_pending(pending, connection, request_id)
        identity = s.saml.complete(settings, message, pending)
        _consume_once(request_id, identity)
    except FederationError as error:
        sso.record_failure(connection, error, None, test=bool(pending and pending.get("test")))
        if pending and pending.get("test"):
            return _with_pending(sso.test_report(connection, error=error), pending_all)
        raise
    if pending and pending.get("test"):
        return _with_pending(sso.test_sign_in(connection, identity), pending_all)
    landing = pending.get("next", "") if pending else _relay_target(form.get("RelayState"))
    remember = {"saml": {"connection_id": connection.id,
                         "name_id": identity.claims["name_id"],
                         "name_id_format": identity.claims["name_id_format"],
                         "session_index": identity.claims["session_index"]}}
    response = sso.finish(connection, identity, {"next": landing}, ctx, remember=remember)
    return _with_pending(response, pending_all)


def _posted_form() -> dict[str, str]:
    try:
        return request.form.to_dict()
    except RequestEntityTooLarge:
        raise FederationError("request_too_large", "The sign-in message was too large.",
                              f"the POST body exceeds {request.max_content_length} bytes",
                              status=413) from None


def _check_pending(pending: dict[str, Any] | None, connection: Connection,
                   request_id: str) -> None:
    if pending is None or pending.get("connection_id") != connection.id:
        raise FederationError("unknown_in_response_to", "This sign-in link was already used or "
                              "belongs to another browser. Please start again.",
                              f"no pending request {request_id!r} for this connection in "
                              "this browser")
    if time.time() - float(pending.get("created", 0)) > PENDING_MAX_AGE:
        raise FederationError("request_expired", "This sign-in took too long. Please start "
                              "again.", "the AuthnRequest is older than ten minutes")


def _consume_once(request_id: str | None, identity) -> None:
    """The request is answered once and the assertion used once, ever (one transaction)."""
    marks = [("saml-assertion", replay_key(identity), replay_ttl(identity))]
    if request_id:
        marks.insert(0, ("saml-request", request_id, PENDING_MAX_AGE * 2))
    replayed = replay.consume_all(services().db, marks)
    if replayed == "saml-request":
        raise FederationError("request_replayed", "This sign-in was already used. Please "
                              "start again.", f"request {request_id!r} was answered before")
    if replayed:
        raise FederationError("assertion_replayed", "This sign-in was already used. Please "
                              "start again.", "the assertion id was seen before")


def _relay_target(relay_state: str | None) -> str:
    """After an IdP-initiated sign-in the adapter has already matched RelayState against the
    connection's allowlist; it must still be a local path."""
    return safe_next(relay_state, "") if relay_state else ""


def _read_pending() -> dict[str, dict[str, Any]]:
    sealed = request.cookies.get(PENDING_COOKIE)
    if not sealed:
        return {}
    try:
        data = services().secrets.open(sealed)
    except Exception:  # a cookie from before a key rotation, or garbage: start afresh
        return {}
    now = time.time()
    return {k: v for k, v in data.items() if now - float(v.get("created", 0)) < PENDING_MAX_AGE}


def _write_pending(response: Response, pending: dict[str, dict[str, Any]]) -> None:
    secure = current_app.config["SESSION_COOKIE_SECURE"]
    if not pending:
        response.delete_cookie(PENDING_COOKIE, path="/saml/", secure=secure, httponly=True,
                               samesite="None" if secure else "Lax")
        return
    response.set_cookie(PENDING_COOKIE, services().secrets.seal(pending), max_age=PENDING_MAX_AGE,
                        path="/saml/", secure=secure, httponly=True,
                        samesite="None" if secure else "Lax")


def _with_pending(result, pending: dict[str, dict[str, Any]]):
    response = current_app.make_response(result)
    _write_pending(response, pending)
    return response


# -- metadata --------------------------------------------------------------------------------

@bp.get("/<int:connection_id>/metadata")
@public
def metadata(connection_id: int):
    """The SP metadata to give the IdP: stable URL, current and next keys published."""
    connection = _saml_connection(connection_id)
    document = services().saml.sp_metadata(connection_settings(connection),
                                           signed=request.args.get("signed") == "1")
    response = Response(document, mimetype="application/samlmetadata+xml")
    if request.args.get("download") == "1":
        response.headers["Content-Disposition"] = (
            f'attachment; filename="trellis-sp-{connection.id}.xml"')
    return response


# -- single logout ---------------------------------------------------------------------------

def logout_redirect(saml_session: dict[str, Any]) -> Response | None:
    """After the Trellis session ended: send the browser to the IdP to end its session too,
    when the connection has a logout endpoint. None when there is nothing to do."""
    connection = db_session().get(Connection, saml_session.get("connection_id"))
    if connection is None or not connection.settings.get("idp_slo_url"):
        return None
    try:
        url, request_id = services().saml.logout_request(
            connection_settings(connection), saml_session["name_id"],
            saml_session["name_id_format"], saml_session.get("session_index", ""),
            return_to=url_for("auth.login"))
    except FederationError:
        return None
    session["saml_logout"] = {"request_id": request_id, "connection_id": connection.id,
                              "created": time.time()}
    return redirect(url)


@bp.get("/<int:connection_id>/sls")
@public
def sls(connection_id: int):
    """Logout over the Redirect binding: the IdP's answer to our request, or its own request
    (IdP-initiated), which ends the user's Trellis sessions."""
    connection = _saml_connection(connection_id)
    s, query = services(), request.args.to_dict()
    ours = session.pop("saml_logout", None)
    request_id = ours["request_id"] if ours and ours["connection_id"] == connection.id else None
    try:
        kind, reply = s.saml.logout_message(connection_settings(connection), query, request_id)
        if kind == "request":
            _end_sessions_of(connection, s.saml.logout_name_id(query))
    except FederationError as error:
        sso.record_failure(connection, error, None)
        raise
    if kind == "request":
        return redirect(reply)
    flash("You have signed out, also at your organization's identity provider.", "info")
    return redirect(url_for("auth.login"))


def _end_sessions_of(connection: Connection, name_id: str) -> None:
    s, ctx = services(), audit_context()
    with s.db.transaction() as tx:
        link = tx.scalar(sa.select(FederatedIdentity).where(
            FederatedIdentity.connection_id == connection.id,
            FederatedIdentity.subject == name_id))
        ended = users.revoke_sessions(tx, link.user_id) if link else 0
        audit.record(tx, ctx, "auth.logout", target=f"connection:{connection.id}",
                     organization_id=connection.organization_id,
                     details={"initiated_by": "idp", "sessions_ended": ended,
                              "user_id": link.user_id if link else None})
    logout_user()
    session.clear()
