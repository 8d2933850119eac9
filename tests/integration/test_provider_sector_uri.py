"""Pairwise apps with a sector identifier URI (OpenID Connect Core 8.1): the document is
fetched (timeouts, size cap, no redirects) and must list every redirect URI; the sector is
its host. And apps whose access tokens are signed ES256."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet

from portal.errors import InvalidRequest
from portal.models import OAuthApp
from portal.services import apps
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of, sign_in
from tests.integration.provider_helpers import full_login, http, register

CB = "https://tickets.example/cb"


class _Documents(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, bytes]] = {}

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/good")
            self.end_headers()
            return
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body or b"[]")

    def log_message(self, *args):
        pass


@pytest.fixture
def documents():
    _Documents.routes = {
        "/good": json.dumps([CB, "https://tickets.example/other"]).encode(),
        "/partial": json.dumps(["https://tickets.example/other"]).encode(),
        "/object": b'{"redirect_uris": []}',
        "/huge": json.dumps([CB] + ["https://x.example/" + "a" * 100] * 1000).encode(),
        "/slow": json.dumps([CB]).encode(),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Documents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _operator(app, make_user):
    make_user("root@ops.test", operator=True)
    client = app.test_client()
    sign_in(client, "root@ops.test")
    return client, {"X-CSRFToken": csrf_token(client, "/admin/apps")}


def test_sector_identifier_uri_must_list_every_redirect_uri(app, make_org, make_user,
                                                            documents, monkeypatch):
    make_org("acme", "Acme Supplies")
    operator, csrf = _operator(app, make_user)
    base = {"name": "Ticketing", "redirect_uris": [CB], "organizations": ["acme"],
            "subject_type": "pairwise"}
    created = operator.post("/api/v1/admin/apps", headers=csrf, json={
        **base, "sector_identifier_uri": documents + "/good"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["sector_identifier"] == "127.0.0.1"
    assert body["sector_identifier_uri"] == documents + "/good"
    url = f"/api/v1/admin/apps/{body['client_id']}"

    monkeypatch.setattr(apps, "SECTOR_DOCUMENT_TIMEOUT", (1.0, 0.5))
    for path, problem in (("/partial", "does not list the redirect URI " + CB),
                          ("/object", "is not a JSON array"), ("/huge", "too large"),
                          ("/slow", "did not answer in time"), ("/missing", "an error"),
                          ("/moved", "an error")):
        refused = operator.post("/api/v1/admin/apps", headers=csrf, json={
            **base, "name": "Refused " + path, "sector_identifier_uri": documents + path})
        assert refused.status_code == 422, (path, refused.get_json())
        answer = refused.get_json()
        assert answer["field"] == "sector_identifier_uri" and problem in answer["title"] + \
            answer.get("detail", ""), (path, answer)

    # A new redirect URI the document does not list is refused; one it lists is accepted.
    bad = operator.patch(url, headers=csrf, json={"redirect_uris": [CB, "https://evil.example/cb"]})
    assert bad.status_code == 422 and bad.get_json()["field"] == "sector_identifier_uri"
    ok = operator.patch(url, headers=csrf,
                        json={"redirect_uris": [CB, "https://tickets.example/other"]})
    assert ok.status_code == 200
    assert operator.patch(url, headers=csrf, json={
        "sector_identifier_uri": documents + "/partial"}).status_code == 422
    with services_of(app).db.sessions() as session:
        names = session.scalars(sa.select(OAuthApp.name)).all()
    assert names == ["Ticketing"]
    [event] = audit_events(app, "app.create")
    assert event.details["sector_identifier_uri"] == documents + "/good"


def test_plain_http_sector_uri_is_refused_outside_loopback_development(app, documents):
    spec = apps.AppSpec(name="X", redirect_uris=[CB], subject_type="pairwise",
                        sector_identifier_uri=documents + "/good")
    with services_of(app).db.transaction() as session, pytest.raises(InvalidRequest) as err:
        apps.create(session, CLI_CTX, spec)  # production callers pass False
    assert "https" in str(err.value)
    spec.sector_identifier_uri = "http://tickets.example/sector.json"
    with services_of(app).db.transaction() as session, pytest.raises(InvalidRequest):
        apps.create(session, CLI_CTX, spec, allow_insecure_loopback=True)




def test_es256_access_tokens(app, op):
    registered = register(app, access_token_signed_response_alg="ES256")
    _, token, _, _ = full_login(op, registered)
    header = json.loads(__import__("base64").urlsafe_b64decode(
        token["access_token"].split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    keys = KeySet.import_key_set(http.get(op + "/oauth/jwks").json())
    claims = jwt.decode(token["access_token"], keys, algorithms=["ES256"]).claims
    assert claims["client_id"] == registered.client_id
    # Trellis itself still accepts it: userinfo and introspection.
    info = http.get(op + "/oauth/userinfo",
                    headers={"Authorization": "Bearer " + token["access_token"]})
    assert info.status_code == 200 and info.json()["sub"] == claims["sub"]
    looked = http.post(op + "/oauth/introspect", auth=(registered.client_id, registered.secret),
                       data={"token": token["access_token"]}).json()
    assert looked["active"] is True
    with pytest.raises(InvalidRequest):
        register(app, name="Bad alg", access_token_signed_response_alg="HS256")


def test_apps_page_registers_a_sector_uri_and_an_es256_access_token_app(app, make_org,
                                                                        make_user, documents):
    make_org("acme", "Acme Supplies")
    operator, _ = _operator(app, make_user)
    form = {"csrf_token": csrf_token(operator, "/admin/apps/new"), "name": "Ticketing",
            "client_type": "confidential", "auth_method": "client_secret_basic",
            "redirect_uris": CB, "organizations": "acme",
            "grant_types": ["authorization_code"], "scopes": ["openid"],
            "access_token_seconds": "600", "refresh_token_seconds": "86400",
            "id_token_signed_response_alg": "RS256",
            "access_token_signed_response_alg": "ES256", "subject_type": "pairwise",
            "sector_identifier_uri": documents + "/partial"}
    refused = operator.post("/admin/apps/new", data=form)
    assert refused.status_code == 422
    assert "does not list the redirect URI" in refused.get_data(as_text=True)
    done = operator.post("/admin/apps/new", data={**form,
                                                  "sector_identifier_uri": documents + "/good"})
    assert done.status_code == 200, done.get_data(as_text=True)[:500]
    with services_of(app).db.sessions() as session:
        row = session.scalar(sa.select(OAuthApp))
    assert row.sector_identifier == "127.0.0.1"
    assert row.access_token_signed_response_alg == "ES256"
    page = operator.get(f"/admin/apps/{row.client_id}").get_data(as_text=True)
    assert '<option value="ES256" selected>' in page.split(
        'name="access_token_signed_response_alg"')[1]


def _cli(app, *args):
    from click.testing import CliRunner
    from flask.cli import ScriptInfo

    from portal.cli import main
    return CliRunner().invoke(main, list(args), obj=ScriptInfo(create_app=lambda: app))


def _authorize(client, client_id: str, redirect_uri: str):
    from urllib.parse import urlencode

    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    return client.get("/oauth/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": "openid", "state": "s", "code_challenge": create_s256_code_challenge("v" * 50),
        "code_challenge_method": "S256"}))


def test_worker_blocks_a_redirect_uri_the_sector_document_stops_listing(
        app, make_org, make_user, documents):
    from datetime import timedelta

    from portal.db import utcnow
    other = "https://tickets.example/other"
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    spec = apps.AppSpec(name="Ticketing", redirect_uris=[CB, other], organizations=["acme"],
                        subject_type="pairwise", consent_required=False,
                        sector_identifier_uri=documents + "/good")
    with services_of(app).db.transaction() as session:
        client_id = apps.create(session, CLI_CTX, spec, allow_insecure_loopback=True)[0].client_id
    browser = app.test_client()
    sign_in(browser, "alice@acme.test")
    assert _authorize(browser, client_id, CB).headers["Location"].startswith(CB + "?code=")

    def make_due():
        app.extensions.get("trellis_oauth_clients", {}).clear()  # apps are cached 5 s
        with services_of(app).db.transaction() as session:
            session.execute(sa.update(OAuthApp).values(
                sector_checked_at=utcnow() - timedelta(hours=25)))

    # The sector's owner drops CB from the document: the next pass blocks it.
    _Documents.routes["/good"] = json.dumps([other]).encode()
    result = _cli(app, "worker", "--once")
    assert result.exit_code == 0, result.output
    assert f"app {client_id}: sector identifier document no longer lists {CB}; blocked" \
        in result.output
    app.extensions["trellis_oauth_clients"].clear()  # registered apps are cached 5 s
    refused = _authorize(browser, client_id, CB)
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert _authorize(browser, client_id, other).headers["Location"].startswith(other)
    [event] = audit_events(app, "app.sector_check")
    assert event.outcome == "failure" and event.reason == "redirect_uri_unlisted"
    operator, _ = _operator(app, make_user)
    page = operator.get(f"/admin/apps/{client_id}").get_data(as_text=True)
    assert "Blocked: the sector identifier document" in page and f"<code>{CB}</code>" in page
    assert event.details["blocked"] == [CB] and event.target == f"app:{client_id}"

    # Not due again until TRELLIS_SECTOR_RECHECK_HOURS have passed.
    _Documents.routes["/good"] = json.dumps([CB, other]).encode()
    assert "sector identifier" not in _cli(app, "worker", "--once").output
    assert _authorize(browser, client_id, CB).status_code == 400

    # Listed again: unblocked at the next due pass.
    make_due()
    result = _cli(app, "worker", "--once")
    assert f"lists {CB} again; unblocked" in result.output
    app.extensions["trellis_oauth_clients"].clear()
    assert _authorize(browser, client_id, CB).headers["Location"].startswith(CB + "?code=")

    # A document that cannot be read changes nothing; it is tried again next time.
    del _Documents.routes["/good"]
    make_due()
    result = _cli(app, "worker", "--once")
    assert result.exit_code == 0 and "not checked" in result.output
    assert _authorize(browser, client_id, CB).headers["Location"].startswith(CB + "?code=")
    assert audit_events(app, "app.sector_check")[-1].reason == "document_unreadable"


def test_editing_the_redirect_uris_clears_the_blocked_ones(app, make_org, documents):
    make_org("acme", "Acme Supplies")
    other = "https://tickets.example/other"
    spec = apps.AppSpec(name="Ticketing", redirect_uris=[CB, other], organizations=["acme"],
                        subject_type="pairwise", sector_identifier_uri=documents + "/good")
    with services_of(app).db.transaction() as session:
        client_id = apps.create(session, CLI_CTX, spec, allow_insecure_loopback=True)[0].client_id
    _Documents.routes["/good"] = json.dumps([other]).encode()
    found = apps.recheck_sectors(services_of(app).db, CLI_CTX, 24)
    assert found.blocked == {client_id: [CB]}
    with services_of(app).db.transaction() as session:
        apps.update(session, CLI_CTX, client_id, {"redirect_uris": [other]},
                    allow_insecure_loopback=True)
    with services_of(app).db.sessions() as session:
        row = session.scalar(sa.select(OAuthApp))
    assert row.redirect_uris == [other] and row.blocked_redirect_uris == []
    [event] = audit_events(app, "app.update")
    assert event.details["blocked_redirect_uris"] == [[CB], []]
