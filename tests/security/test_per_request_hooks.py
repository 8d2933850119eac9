"""The per-request hooks, trimmed for speed, still guard every response: headers forced over a
view's own, request ids that cannot split a header, cookies and rate limits as before."""

import re

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from portal import create_app, has_request_wide_limits
from portal.services import api_clients
from tests.conftest import CLI_CTX, csrf_token, services_of, sign_in


def test_a_views_own_security_headers_never_win(app, client):
    @app.after_request  # runs before Trellis's hook, like a view setting its own headers
    def weaken(response):
        if request.path == "/healthz":
            response.headers["X-Frame-Options"] = "ALLOWALL"
            response.headers["X-Request-ID"] = "from-the-view"
            response.headers["Cache-Control"] = "public, max-age=600"
        return response

    headers = client.get("/healthz").headers
    assert headers.getlist("X-Frame-Options") == ["DENY"]
    assert re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-ID"])
    assert headers.getlist("X-Request-ID") == [headers["X-Request-ID"]]
    assert headers["Cache-Control"] == "public, max-age=600"  # not signed in: the view decides
    assert len(headers.getlist("Content-Security-Policy")) == 1


def test_a_request_id_that_could_split_a_header_is_replaced(client):
    kept = client.get("/healthz", headers={"X-Request-ID": "proxy-1234.abc"})
    assert kept.headers["X-Request-ID"] == "proxy-1234.abc"
    for hostile in ("proxy-1234\n", "proxy-1234\nSet-Cookie: x=1", "short", "a b c d e f g h"):
        response = client.get("/healthz", environ_base={"HTTP_X_REQUEST_ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-ID"]), hostile


def test_machine_answers_carry_no_cookie_and_are_not_stored(app, client, make_org):
    make_org("acme")
    with services_of(app).db.transaction() as session:
        _, key = api_clients.create(session, CLI_CTX, "Vendor app", ["acme"])
    health = client.get("/healthz")
    answer = client.post("/api/v1/authz/check", headers={"Authorization": f"Bearer {key}"},
                         json={"subject": "1", "organization": "acme", "object": "member",
                               "action": "manage"})
    assert answer.status_code == 200 and answer.json["allowed"] is False
    assert answer.headers["Cache-Control"] == "no-store"
    for response in (health, answer):
        assert "Set-Cookie" not in response.headers
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_signed_in_pages_are_not_stored_and_the_session_survives(client, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "Cookie" in page.headers.get("Vary", "")
    assert client.get("/healthz").status_code == 200  # a cookie on a machine endpoint
    assert client.get("/account/security").status_code == 200


def test_session_cookies_follow_secret_key_rotation(settings, make_user):
    app = create_app(settings)
    make_user("alice@acme.test")
    first, second = app.test_client(), app.test_client()
    sign_in(first, "alice@acme.test")
    sign_in(second, "alice@acme.test")
    old = app.config["SECRET_KEY"]
    app.secret_key = app.config["SECRET_KEY"] = "n" * 48
    app.config["SECRET_KEY_FALLBACKS"] = [old]
    assert first.get("/account/security").status_code == 200  # the old key still verifies
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert first.get("/account/security").status_code == 200  # re-signed with the new key
    assert second.get("/account/security").status_code == 302  # the old key alone: not


def test_request_wide_limits_keep_the_limiter_hook(settings):
    app = create_app(settings)
    assert not has_request_wide_limits(app.extensions["trellis_limiter"])
    assert has_request_wide_limits(Limiter(get_remote_address, default_limits=["1/minute"]))
    assert has_request_wide_limits(Limiter(get_remote_address,
                                           application_limits=["1/minute"]))


def test_a_limit_added_to_every_request_is_enforced(settings):
    app = create_app(settings)
    limiter = app.extensions["trellis_limiter"]
    limiter.limit_manager.set_default_limits(Limiter(
        get_remote_address, default_limits=["2/minute"]).limit_manager._default_limits)
    client = app.test_client()
    assert [client.get("/login").status_code for _ in range(3)] == [200, 200, 429]


def test_credential_endpoints_keep_their_rate_limit_headers(settings, make_user):
    app = create_app({**settings, "LOGIN_RATE_LIMIT": "5/minute"})
    client = app.test_client()
    response = client.post("/login", data={"email": "x@acme.test", "password": "p" * 12,
                                           "csrf_token": csrf_token(client)})
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "4"
    assert "X-RateLimit-Limit" not in client.get("/healthz").headers
