"""A small vendor app that signs its users in through Trellis, as a real relying party would:
Authlib's Flask client, code flow with PKCE (S256), the ID token checked with pinned issuer,
audience and algorithm, and the ``iss`` of the authorization response compared (RFC 9207).

Run it against a local Trellis (register it first with ``trellis app create``):

    TRELLIS_ISSUER=http://127.0.0.1:5000 VENDOR_CLIENT_ID=app_… VENDOR_CLIENT_SECRET=trs_… \\
    VENDOR_SECRET_KEY=change-me flask --app examples/vendor-app/app.py run --port 5001
"""

from __future__ import annotations

import os
import secrets

from authlib.integrations.flask_client import OAuth
from flask import Flask, abort, redirect, render_template_string, request, session, url_for

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Supplier Portal</title></head><body>
<h1>Supplier Portal</h1>
{% if user %}
<p id="who">Signed in as {{ user.email }} for {{ user.org.name }}</p>
<p id="roles">Roles: {{ user.roles|join(", ") }}</p>
<p><a href="{{ url_for('logout') }}">Sign out</a></p>
{% else %}
<p><a id="sign-in" href="{{ url_for('login') }}">Sign in with Trellis</a></p>
{% endif %}
</body></html>"""


def create_app(issuer: str, client_id: str, client_secret: str, secret_key: str) -> Flask:
    app = Flask(__name__)
    app.secret_key = secret_key
    oauth = OAuth(app)
    oauth.register(
        "trellis", client_id=client_id, client_secret=client_secret,
        server_metadata_url=issuer + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid profile email org roles",
                       "code_challenge_method": "S256"})

    ended_sessions: set[str] = set()  # Trellis sessions that signed out (front channel)

    @app.before_request
    def forget_ended_session():
        user = session.get("user")
        if user and user.get("sid") in ended_sessions:
            session.clear()

    @app.get("/frontchannel-logout")
    def frontchannel_logout():
        """Trellis loads this in a hidden frame when the user signs out there (OpenID
        Connect Front-Channel Logout): every local session of that Trellis session ends."""
        if request.args.get("iss") != issuer or not request.args.get("sid"):
            abort(400)
        ended_sessions.add(request.args["sid"])
        session.clear()
        return "<!doctype html><title>Signed out</title><p>Signed out of Supplier Portal.</p>"

    @app.get("/")
    def home():
        return render_template_string(PAGE, user=session.get("user"))

    @app.get("/login")
    def login():
        return oauth.trellis.authorize_redirect(url_for("callback", _external=True),
                                                nonce=secrets.token_urlsafe(16))

    @app.get("/callback")
    def callback():
        if request.args.get("iss") != issuer:  # mix-up defence: Authlib does not check it
            abort(400)
        token = oauth.trellis.authorize_access_token(claims_options={
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": client_id}})
        claims = token["userinfo"]
        session["user"] = {"sub": claims["sub"], "sid": claims.get("sid"),
                           "email": claims.get("email"),
                           "org": claims.get("org"), "roles": claims.get("roles", [])}
        session["id_token"] = token["id_token"]
        return redirect(url_for("home"))

    @app.get("/logout")
    def logout():
        id_token = session.pop("id_token", "")
        session.clear()
        metadata = oauth.trellis.load_server_metadata()
        return redirect(metadata["end_session_endpoint"] + "?" + _query(
            id_token_hint=id_token, post_logout_redirect_uri=url_for("home", _external=True)))

    return app


def _query(**values: str) -> str:
    from urllib.parse import urlencode
    return urlencode(values)


if os.environ.get("VENDOR_CLIENT_ID"):
    app = create_app(os.environ["TRELLIS_ISSUER"].rstrip("/"), os.environ["VENDOR_CLIENT_ID"],
                     os.environ["VENDOR_CLIENT_SECRET"], os.environ["VENDOR_SECRET_KEY"])
