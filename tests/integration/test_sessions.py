"""Sessions: rotation at sign-in, revocation at sign-out, and tampering."""

from http.cookies import SimpleCookie

from tests.conftest import audit_events, csrf_token, sign_in


def session_cookie(client, app) -> str | None:
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return cookie.value if cookie else None


def test_session_is_rotated_at_sign_in(client, app, make_user):
    make_user("alice@acme.test")
    csrf_token(client)
    before = session_cookie(client, app)
    with client.session_transaction() as s:
        s["planted"] = "by attacker"
    sign_in(client, "alice@acme.test")
    after = session_cookie(client, app)
    assert before and after and before != after
    with client.session_transaction() as s:
        assert "planted" not in s and s.get("sid")


def test_sign_out_revokes_the_server_side_session(client, app, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    stolen = session_cookie(client, app)
    token = csrf_token(client, "/")
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert "You have signed out." in client.get("/login").get_data(as_text=True)
    # Replaying the cookie captured before sign-out no longer works.
    replay = app.test_client()
    replay.set_cookie(app.config["SESSION_COOKIE_NAME"], stolen)
    assert replay.get("/").status_code == 302
    [event] = audit_events(app, "auth.logout")
    assert event.target == "user:alice@acme.test"


def test_sign_out_needs_a_csrf_token(client, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    response = client.post("/logout")
    assert response.status_code == 400
    assert "Your form expired" in response.get_data(as_text=True)
    assert client.get("/").status_code == 200  # still signed in


def test_tampered_session_cookie_is_ignored(client, app, make_user):
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    value = session_cookie(client, app)
    tampered = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    other = app.test_client()
    other.set_cookie(app.config["SESSION_COOKIE_NAME"], tampered)
    response = other.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_cookie_flags(client, app, make_user, settings):
    from portal import create_app
    make_user("alice@acme.test")
    response = sign_in(client, "alice@acme.test")
    [session_cookie] = [h for h in response.headers.getlist("Set-Cookie")
                        if h.startswith("trellis=")]
    cookie = SimpleCookie(session_cookie)["trellis"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    secure_app = create_app({**settings, "COOKIE_SECURE": True})
    secure = secure_app.test_client().get("/login", base_url="https://localhost")
    header = secure.headers["Set-Cookie"]
    assert header.startswith("__Host-trellis=") and "Secure" in header and "HttpOnly" in header


def test_missing_csrf_token_on_sign_in_shows_the_error_page(client, make_user):
    make_user("alice@acme.test")
    response = client.post("/login", data={"email": "alice@acme.test",
                                           "password": "correct horse battery"})
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "Your form expired" in page
    assert response.headers["X-Request-ID"] in page  # the reference id shown to the user
