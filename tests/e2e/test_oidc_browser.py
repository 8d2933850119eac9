"""The whole federated sign-in in a real browser: email, the provider's own login page, back
in the organization's portal."""

import re

import pytest

from portal.services import connections, organizations
from tests.conftest import CLI_CTX, services_of
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e


def test_federated_sign_in_through_the_providers_pages(page, app, tx, make_org, serve,
                                                       interactive_oidc_provider):
    peer = interactive_oidc_provider
    server = serve(app)
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug="acme", name="Acme SSO",
            client_id="pending", client_secret="pending", issuer=peer.issuer, enabled=True,
            scopes=("openid", "email", "profile"))
        client_id, secret = peer.register_client(f"{server.url}/sso/oidc/{row.id}/callback")
        row.settings = {**row.settings, "client_id": client_id}
        row.sealed_secrets = services_of(app).secrets.seal({"client_secret": secret})
    peer.put_account("grace@acme.test", name="Grace Hopper")

    page.goto(f"{server.url}/login")
    page.get_by_label("Work email").fill("grace@acme.test")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(re.escape(peer.issuer)))
    screenshot(page, "oidc-provider-login.png")
    page.fill("input[name=login]", "grace@acme.test")
    page.fill("input[name=password]", "anything")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(peer.issuer):  # the provider's consent page
        page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(server.url) + r"/o/acme/$"))
    assert page.get_by_role("heading", name="Welcome, Grace Hopper").is_visible()
    screenshot(page, "oidc-portal-home.png")
