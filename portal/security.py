"""Per-request guards: request ids, security headers and safe redirect targets."""

from __future__ import annotations

import logging
import re
import secrets
import time
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request
from flask_login import current_user
from werkzeug.routing import IntegerConverter

log = logging.getLogger("trellis.request")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")  # used with fullmatch: no trailing newline

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action {form_targets}; frame-ancestors 'none'")


def content_security_policy(production: bool) -> str:
    # A sign-in form may be answered with a redirect to the organization's identity provider,
    # and browsers apply form-action to that redirect: the provider is unknown until the form
    # is sent, so any HTTPS target is allowed (plain-HTTP loopback providers in development).
    targets = "'self' https:" if production else "'self' https: http://127.0.0.1:* http://localhost:*"
    return CSP.format(form_targets=targets)


# Set on every response, whatever the view set (a view may only bring its own CSP).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
HSTS = ("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
_FORCED = frozenset(name.lower() for name, _ in (*SECURITY_HEADERS, HSTS)) | {"x-request-id"}
NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
# Blueprints whose views never read or write the cookie session, nor sign anyone in or out:
# per-request work for browsers (the remember cookie) is skipped for them.
MACHINE_BLUEPRINTS = frozenset({"api", "health"})


def install(app: Flask) -> None:
    app.config["CONTENT_SECURITY_POLICY"] = content_security_policy(
        app.config["ENV"] == "production")
    app.before_request(_start_request)
    app.after_request(_finish_request)


# Endpoints that accept files larger than TRELLIS_MAX_REQUEST_KIB, and their own limit. Set
# before any hook reads the body (the CSRF check parses the form).
UPLOAD_LIMITS = {"orgadmin.import_members": 20 * 1024 * 1024}


def _start_request() -> None:
    # A proxy's request id is kept (so lines join up across hops) only if it is harmless.
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if incoming and REQUEST_ID.fullmatch(incoming) else \
        secrets.token_hex(8)
    g.started = time.perf_counter()
    if request.endpoint in UPLOAD_LIMITS:
        request.max_content_length = UPLOAD_LIMITS[request.endpoint]


def _finish_request(response):
    """Security headers, the request id and the access log line on every response. Runs on
    every request, so the constant headers are prebuilt and added in one call, and the log
    line is only built when it will be written."""
    headers = response.headers
    present = {name.lower() for name, _ in headers.items()}
    if present & _FORCED:  # a view's own value never weakens them
        for name in present & _FORCED:
            del headers[name]
    additions = [("X-Request-ID", g.get("request_id", "-")), *SECURITY_HEADERS]
    if "content-security-policy" not in present:
        additions.append(("Content-Security-Policy",
                          current_app.config["CONTENT_SECURITY_POLICY"]))
    if request.is_secure:
        additions.append(HSTS)
    # Machine APIs carry no cookie: their answers are never cached, and no user is loaded.
    if g.get("no_store") or request.blueprint == "api" or _signed_in():
        for name in ("Cache-Control", "Pragma"):
            if name.lower() in present:
                del headers[name]
        additions.extend(NO_STORE)
    # Headers.extend re-validates every pair through several layers (~10 µs for these); the
    # pairs are built here from constants and a validated request id, so they are appended.
    headers._list.extend(additions)
    if log.isEnabledFor(logging.INFO):  # the line's arguments only when it is written
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log.info("%s %s %s %.1fms", request.method, request.path, response.status_code,
                 elapsed)
    return response


def _signed_in() -> bool:
    """``current_user.is_authenticated`` without loading a user for requests that cannot have
    one: Flask-Login finds a user only in the session cookie or the remember cookie, or one
    signed in (or out) during this request, which it keeps in ``g._login_user``."""
    user = g.get("_login_user")
    if user is None:
        if not request.environ.get("HTTP_COOKIE"):
            return False
        cookies = request.cookies
        config = current_app.config
        if config["SESSION_COOKIE_NAME"] not in cookies and \
                config.get("REMEMBER_COOKIE_NAME", "remember_token") not in cookies:
            return False
        user = current_user
    return bool(user.is_authenticated)


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths are allowed as redirect targets after sign-in."""
    if not target or len(target) > 2000:
        return default
    if any(ch in target for ch in "\\\r\n\t") or any(ord(ch) < 32 for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return default
    if target.startswith("//") or target.startswith("/\\"):
        return default
    return target


class DatabaseId(IntegerConverter):
    """``<int:...>`` in every route: a row id, 1 to 2**31 - 1. A larger number in a URL is an
    ordinary 404, not a database error (PostgreSQL integers stop there)."""

    def __init__(self, map, fixed_digits: int = 0, min: int = 1,
                 max: int = 2**31 - 1, signed: bool = False) -> None:
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)
