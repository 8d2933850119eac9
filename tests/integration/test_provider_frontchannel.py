"""Front-channel logout: signing out of Trellis shows a page that loads the logout URI of each
app the session signed into, with ``iss`` and ``sid``, and whose CSP lets it frame those
origins and nothing else."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.provider_helpers import (
    CSRF,
    callback_params,
    full_login,
    http,
    register,
    rp,
    start,
)

FRAME = re.compile(r'<iframe class="logout-frame" src="([^"]+)"')


def _frames(page: str) -> list[str]:
    return [html.unescape(src) for src in FRAME.findall(page)]


def _sid(base: str, id_token: str) -> str:
    keys = KeySet.import_key_set(http.get(base + "/oauth/jwks").json())
    return jwt.decode(id_token, keys, algorithms=["RS256", "ES256"]).claims["sid"]


def _frame_src(csp: str) -> list[str]:
    directive = next(d.strip() for d in csp.split(";") if d.strip().startswith("frame-src"))
    return directive.split()[1:]


def test_sign_out_loads_each_apps_frontchannel_uri(app, op):
    tickets = register(app, name="Tickets", consent_required=False,
                       frontchannel_logout_uri="http://127.0.0.1:9/fc-logout?tenant=acme")
    freight = register(app, name="Freight", consent_required=False,
                       frontchannel_logout_uri="https://freight.example/logout")
    quiet = register(app, name="Quiet", consent_required=False)
    _, token, _, browser = full_login(op, tickets)
    sid = _sid(op, token["id_token"])
    for registered in (freight, quiet):
        full_login(op, registered)  # (another browser: this session never used them)
    # The same browser signs in to Freight too.
    client = rp(op, freight)
    response, verifier, _, _ = start(op, client, browser)
    client.fetch_token(op + "/oauth/token", code=callback_params(response)["code"],
                       code_verifier=verifier)

    token_value = CSRF.search(browser.get(op + "/").text).group(1)
    out = browser.post(op + "/logout", data={"csrf_token": token_value},
                       headers={"Referer": op + "/"}, allow_redirects=False)
    assert out.status_code == 200 and "You have signed out" in out.text
    frames = _frames(out.text)
    assert len(frames) == 2
    first = urlsplit(frames[0])
    assert (first.scheme, first.netloc, first.path) == ("http", "127.0.0.1:9", "/fc-logout")
    assert parse_qs(first.query) == {"tenant": ["acme"], "iss": [op], "sid": [sid]}
    assert frames[1].startswith("https://freight.example/logout?iss=")
    assert sorted(_frame_src(out.headers["Content-Security-Policy"])) == [
        "http://127.0.0.1:9", "https://freight.example"]
    assert "frame-ancestors 'none'" in out.headers["Content-Security-Policy"]
    assert '<meta http-equiv="refresh" content="3;url=/login">' in out.text
    assert browser.get(op + "/", allow_redirects=False).status_code == 302  # signed out


def test_sign_out_without_frontchannel_apps_frames_nothing(app, op):
    quiet = register(app, name="Quiet", consent_required=False)
    _, _, _, browser = full_login(op, quiet)
    token_value = CSRF.search(browser.get(op + "/").text).group(1)
    out = browser.post(op + "/logout", data={"csrf_token": token_value},
                       headers={"Referer": op + "/"}, allow_redirects=False)
    assert out.status_code == 302  # straight to the sign-in page, as before
    assert "frame-src" not in out.headers["Content-Security-Policy"]


def test_rp_initiated_logout_frames_then_returns_to_the_app(app, op):
    tickets = register(app, name="Tickets", consent_required=False,
                       post_logout_redirect_uris=["http://127.0.0.1:9/bye"],
                       frontchannel_logout_uri="http://127.0.0.1:9/fc-logout")
    _, token, _, browser = full_login(op, tickets)
    out = browser.get(op + "/oauth/logout", params={
        "id_token_hint": token["id_token"], "state": "s1",
        "post_logout_redirect_uri": "http://127.0.0.1:9/bye"}, allow_redirects=False)
    assert out.status_code == 200 and len(_frames(out.text)) == 1
    assert _frame_src(out.headers["Content-Security-Policy"]) == ["http://127.0.0.1:9"]
    assert 'content="3;url=http://127.0.0.1:9/bye?state=s1"' in out.text
    assert 'href="http://127.0.0.1:9/bye?state=s1"' in out.text


def test_frontchannel_uri_must_be_https_or_loopback(app, op):
    import pytest

    from portal.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="frontchannel_logout_uri"):
        register(app, name="Bad", frontchannel_logout_uri="http://tickets.example/fc")
