"""An app's prompt=login reaches the partner's identity provider: Trellis asks the OpenID
Provider for prompt=login and the SAML IdP for ForceAuthn, and only then."""

from __future__ import annotations

import base64
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import CLI_CTX, services_of
from tests.integration.provider_helpers import register, rp, start


def _to_idp(app, op, registered, email, **params):
    """The app sends an anonymous browser to Trellis; the user types the email; return the
    URL Trellis sends the browser to next (the partner's identity provider)."""
    from tests.integration.provider_helpers import _Http
    browser = _Http()
    response, _, _, _ = start(op, rp(op, registered), browser, **params)
    login = response.headers["Location"]
    page = browser.get(op + login)
    token = csrf_token_from(page.text)
    answer = browser.post(op + login, data={"email": email, "csrf_token": token},
                          allow_redirects=False, headers={"Referer": op + login})
    assert answer.status_code == 302, answer.text[:300]
    return answer.headers["Location"]


def csrf_token_from(text: str) -> str:
    from tests.integration.provider_helpers import CSRF
    return CSRF.search(text).group(1)


@pytest.fixture
def oidc_partner(app, make_org, oidc_provider):
    from portal.services import connections, organizations
    make_org("partner", "Partner Co")
    with services_of(app).db.transaction() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
        connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug="partner", name="Partner SSO",
            client_id="client", client_secret="secret", issuer=oidc_provider.issuer,
            enabled=True, scopes=("openid", "email"))


@pytest.mark.parametrize(("params", "forced"), [({}, False), ({"prompt": "login"}, True),
                                                ({"max_age": "0"}, True),
                                                ({"max_age": "3600"}, False)])
def test_prompt_login_reaches_the_partners_openid_provider(app, op, oidc_partner, params,
                                                           forced):
    registered = register(app, organizations=["partner"])
    url = _to_idp(app, op, registered, "grace@partner.example", **params)
    query = parse_qs(urlsplit(url).query)
    assert ("prompt" in query) is forced and query.get("prompt", ["login"]) == ["login"]


def test_prompt_login_asks_the_saml_idp_for_force_authn(app, op, make_org, saml_idp):
    from portal.services import organizations
    from portal.services import saml as saml_connections
    make_org("partner", "Partner Co")
    with services_of(app).db.transaction() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
        saml_connections.create(
            session, CLI_CTX, services_of(app).secrets, org_slug="partner", name="Partner SSO",
            metadata_url=saml_idp.entity_id, enabled=True, allow_insecure_loopback=True)
    registered = register(app, organizations=["partner"])
    for params, forced in (({}, False), ({"prompt": "login"}, True)):
        url = _to_idp(app, op, registered, "alice@partner.example", **params)
        request = parse_qs(urlsplit(url).query)["SAMLRequest"][0]
        xml = zlib.decompress(base64.b64decode(request), -15).decode()
        assert ('ForceAuthn="true"' in xml) is forced, xml[:400]
