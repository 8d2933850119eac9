"""Shared setup for the OpenID Provider tests: Trellis on a loopback port, organizations,
users and registered apps, and a relying party driven by Authlib's own client."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from tests.conftest import CLI_CTX, PASSWORD, services_of
from tests.e2e.conftest import LiveServer

REDIRECT = "http://127.0.0.1:9/callback"
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')


@dataclass
class RegisteredApp:
    client_id: str
    secret: str | None


def register(app, **overrides) -> RegisteredApp:
    from portal.services import apps
    spec = apps.AppSpec(name=overrides.pop("name", "Supplier Portal"),
                        redirect_uris=overrides.pop("redirect_uris", [REDIRECT]),
                        organizations=overrides.pop("organizations", ["acme"]), **overrides)
    with services_of(app).db.transaction() as session:
        row, secret = apps.create(session, CLI_CTX, spec)
        return RegisteredApp(row.client_id, secret)


def backend_token(app, client, name: str, scope: str,
                  organizations: list[str] | None = None) -> str:
    """An access token of a newly registered backend app (client credentials, ``scope``),
    fetched from the token endpoint as the app would."""
    backend = register(app, name=name, organizations=organizations or [], redirect_uris=[],
                       grant_types=["client_credentials"], scopes=[scope])
    basic = base64.b64encode(f"{backend.client_id}:{backend.secret}".encode()).decode()
    return client.post("/oauth/token", data={"grant_type": "client_credentials",
                                             "scope": scope},
                       headers={"Authorization": f"Basic {basic}"}).get_json()["access_token"]


def verify_domain(app, slug: str, domain: str) -> None:
    from portal.services import organizations
    with services_of(app).db.transaction() as session:
        organizations.add_domain(session, CLI_CTX, slug, domain)
        organizations.verify_domain_manually(session, CLI_CTX, domain)


def browser_login(base: str, email: str, password: str = PASSWORD) -> requests.Session:
    """A user agent signed in to Trellis with a password (no redirects followed)."""
    s = _Http()
    page = s.get(base + "/login")
    token = CSRF.search(page.text).group(1)
    answer = s.post(base + "/login", data={"email": email, "password": password,
                                           "csrf_token": token}, allow_redirects=False)
    assert answer.status_code == 302, answer.text[:500]
    return s


def rp(base: str, registered: RegisteredApp, scope: str = "openid profile email org roles",
       **options) -> OAuth2Session:
    auth_method = options.pop("token_endpoint_auth_method",
                              "client_secret_basic" if registered.secret else "none")
    return OAuth2Session(registered.client_id, registered.secret, scope=scope,
                         redirect_uri=options.pop("redirect_uri", REDIRECT),
                         code_challenge_method="S256",
                         token_endpoint_auth_method=auth_method, **options)


def start(base: str, client: OAuth2Session, browser: requests.Session, **params):
    """Send the browser to the authorization endpoint; returns (response, verifier, nonce,
    state)."""
    verifier, nonce = generate_token(48), generate_token(16)
    url, state = client.create_authorization_url(base + "/oauth/authorize",
                                                 code_verifier=verifier, nonce=nonce, **params)
    return browser.get(url, allow_redirects=False), verifier, nonce, state


def consent(base: str, browser: requests.Session, response, decision: str = "allow",
            org: str | None = None):
    """Submit the consent page the authorization endpoint showed."""
    assert response.status_code == 200, response.text[:300]
    token = CSRF.search(response.text).group(1)
    action = re.search(r'action="(/oauth/authorize[^"]*)"', response.text).group(1)
    action = action.replace("&amp;", "&")
    data = {"csrf_token": token, "decision": decision}
    if org:
        data["org_choice"] = org
    return browser.post(base + action, data=data, allow_redirects=False,
                        headers={"Referer": base + action})


def callback_params(response) -> dict[str, str]:
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    location = response.headers["Location"]
    assert location.startswith(REDIRECT) or "://" in location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def full_login(base: str, registered: RegisteredApp, email: str = "alice@acme.test",
               scope: str = "openid profile email org roles", **params):
    """Sign in, consent if asked, and return (client, token, nonce, browser)."""
    browser = browser_login(base, email)
    client = rp(base, registered, scope=scope)
    response, verifier, nonce, state = start(base, client, browser, **params)
    if response.status_code == 200:
        response = consent(base, browser, response)
    params_back = callback_params(response)
    assert params_back.get("state") == state
    assert params_back.get("iss") == base
    token = client.fetch_token(base + "/oauth/token", code=params_back["code"],
                               code_verifier=verifier)
    return client, token, nonce, browser


class _Http(requests.Session):
    """Plain HTTP calls with a deadline, so a hung server fails a test in seconds."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", 10)
        return super().request(*args, **kwargs)


http = _Http()


@pytest.fixture
def op(app, make_org, make_user):
    """Trellis on a loopback port with Acme (alice, verified domain) and Globex (bob)."""
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex Logistics", kind="vendor")
    verify_domain(app, "acme", "acme.test")
    make_user("alice@acme.test", org="acme", display_name="Alice Adams")
    make_user("bob@globex.test", org="globex")
    server = LiveServer(app)
    yield server.url
    server.stop()


