"""Mail from the web layer: an attempt right after the commit that wrote the message, and
the development mail sink.

The development mail sink: with no mail server configured, outside production, the mail
Trellis would send is kept in the outbox and shown here, so `make run` shows sign-up and
reset links. The blueprint is not registered at all in production."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, render_template

from portal.extensions import db_session, services
from portal.models import OutboxMessage
from portal.permissions import public
from portal.services import outbox

bp = Blueprint("devmail", __name__, url_prefix="/dev/mail")
# The HTML part of an email carries inline styles (mail clients need them); it is served on
# its own, sandboxed, with a policy that allows styles and nothing else.
EMAIL_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
             "sandbox; frame-ancestors 'self'")


@bp.get("/")
@public
def index():
    _development_only()
    return render_template("devmail/index.html", messages=outbox.listing(db_session(), limit=50))


@bp.get("/<int:message_id>/html")
@public
def html(message_id: int):
    _development_only()
    message = db_session().get(OutboxMessage, message_id)
    if message is None:
        abort(404)
    response = Response(message.html_body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_CSP
    return response


def _development_only() -> None:
    if current_app.config["ENV"] == "production":  # also unregistered; belt and braces
        abort(404)


def deliver_now(ids: list[int]) -> outbox.Report:
    """After the commit that wrote them: one attempt at once, so mail arrives while the user
    waits when the server is up; otherwise the worker retries."""
    return outbox.deliver(services().db, outbox.MailConfig.from_settings(current_app.config),
                          ids=ids)


def deliver_after_response(ids: list[int]) -> None:
    """For pages whose answer must not tell whether an account exists (reset, registration):
    the attempt happens after the response is sent, so its timing reveals nothing. Under the
    test client, at once."""
    ids = [i for i in ids if i is not None]
    if not ids:
        return
    app = current_app._get_current_object()
    if app.testing and not app.config.get("MAIL_AFTER_RESPONSE"):
        deliver_now(ids)
        return
    from flask import after_this_request

    @after_this_request
    def later(response):
        def attempt() -> None:
            with app.app_context():
                deliver_now(ids)
        response.call_on_close(attempt)
        return response
