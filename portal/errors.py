"""The one exception type users ever see, and the one place it is turned into a response.

Code raises ``TrellisError`` (or a subclass) with a stable ``code`` and a message that is safe
to show. ``register_error_handlers`` maps it, every HTTP error and every unexpected exception to
a branded HTML page or to ``application/problem+json``, always carrying the request id as the
reference, while the log line with the same id holds the detail.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("trellis.errors")


class TrellisError(Exception):
    status = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None,
                 detail: str = "", extra: dict[str, Any] | None = None) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.status = status or self.status
        self.headers = headers or {}
        self.detail = detail  # for the log only
        self.extra = extra or {}  # safe to show: added to problem+json bodies
        super().__init__(self.message)


class ValidationError(TrellisError):
    status = 400
    code = "invalid"


class NotFound(TrellisError):
    status = 404
    code = "not_found"
    message = "That page or record does not exist."


class Forbidden(TrellisError):
    status = 403
    code = "forbidden"
    message = "You do not have permission to do that."


class StepUpRequired(Forbidden):
    """A sensitive change needs a recent second factor. Browsers are sent to the code page
    (``redirect_to``); API clients get 403 ``step_up_required``."""

    code = "step_up_required"
    message = "Enter a code from your authenticator app to confirm this change."

    def __init__(self, redirect_to: str = "") -> None:
        super().__init__()
        self.redirect_to = redirect_to


class Conflict(TrellisError):
    status = 409
    code = "conflict"


class TooManyAttempts(TrellisError):
    status = 429
    code = "locked_out"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message or f"Too many failed attempts. Try again in "
                         f"{describe_wait(self.retry_after)}.",
                         headers={"Retry-After": str(self.retry_after)})


class InvalidRequest(TrellisError):
    """A request body that does not have the expected shape; names the field."""

    status = 422
    code = "invalid_request"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", extra={"field": field})


class Unavailable(TrellisError):
    status = 503
    code = "unavailable"
    message = "The service is temporarily unavailable. Please try again in a few minutes."


def describe_wait(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


# Plain wording for HTTP errors raised by Flask/Werkzeug themselves.
HTTP_MESSAGES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be processed."),
    401: ("unauthenticated", "Please sign in to continue."),
    403: ("forbidden", "You do not have permission to do that."),
    404: ("not_found", "That page does not exist."),
    405: ("method_not_allowed", "That action is not allowed here."),
    413: ("too_large", "The data you sent is too large."),
    429: ("rate_limited", "Too many requests. Please wait a moment and try again."),
    500: ("internal_error", "Something went wrong on our side."),
    503: ("unavailable", "The service is temporarily unavailable. Please try again in a few "
                         "minutes."),
}


def register_error_handlers(app) -> None:
    from flask import g, render_template, request
    from flask_wtf.csrf import CSRFError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError, OperationalError
    from werkzeug.exceptions import HTTPException

    from federation.errors import FederationError

    def respond(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None):
        reference = getattr(g, "request_id", "-")
        if _wants_json():
            body: dict[str, Any] = {**(extra or {}), "type": f"urn:trellis:error:{code}",
                                    "title": message, "status": status, "code": code,
                                    "reference": reference}
            response = app.response_class(app.json.dumps(body), status=status,
                                          mimetype="application/problem+json")
        else:
            html = render_template("errors/error.html", status=status, code=code,
                                   message=message, reference=reference)
            response = app.response_class(html, status=status, mimetype="text/html")
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    def _wants_json() -> bool:
        if request.path.startswith("/api/"):
            return True
        best = request.accept_mimetypes.best_match(["text/html", "application/json",
                                                    "application/problem+json"])
        return best in ("application/json", "application/problem+json")

    @app.errorhandler(TrellisError)
    def trellis_error(error: TrellisError):
        level = logging.WARNING if error.status < 500 else logging.ERROR
        log.log(level, "%s %s: %s %s", error.status, error.code, error.message, error.detail)
        if isinstance(error, StepUpRequired) and error.redirect_to and not _wants_json():
            from flask import flash, redirect
            flash(error.message, "info")
            return redirect(error.redirect_to)
        return respond(error.status, error.code, error.message, error.headers, error.extra)

    @app.errorhandler(FederationError)
    def federation_error(error: FederationError):
        log.warning("%s federation %s: %s", error.status, error.code, error.detail)
        return respond(error.status, error.code, error.safe_message)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        log.warning("400 csrf_failed: %s", error.description)
        return respond(400, "csrf_failed", "Your form expired or was sent from another site. "
                       "Go back, reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        code, message = HTTP_MESSAGES.get(status, ("http_error", error.name))
        log.log(logging.WARNING if status < 500 else logging.ERROR, "%s %s: %s",
                status, code, error.description)
        headers = dict(error.get_headers()) if status in (405, 429) else {}
        headers.pop("Content-Type", None)
        return respond(status, code, message, headers)

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    @app.errorhandler(RedisError)
    def backend_unavailable(error: Exception):
        log.error("503 backend_unavailable: %r", error, exc_info=error)
        return respond(503, "unavailable", HTTP_MESSAGES[503][1])

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.error("500 internal_error: %r", error, exc_info=error)
        return respond(500, "internal_error", HTTP_MESSAGES[500][1])
