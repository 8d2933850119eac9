"""A platform operator adds a platform-wide OpenID Connect sign-in in Chromium: the form, the
redirect URI to give the provider, a test sign-in, switching it on, the button on /login."""

import secrets

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.test_signin_browser import sign_in

pytestmark = pytest.mark.e2e


def test_operator_adds_a_platform_oidc_connection(browsing, live, make_user, oidc_provider):
    make_user("ops@trellis.test", operator=True, display_name="Olga Ops")
    client_id, secret = f"e2e-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    page = browsing.page()
    sign_in(page, live.url, email="ops@trellis.test")
    page.get_by_role("link", name="Connections").click()
    page.get_by_role("link", name="Add connection").click()
    page.get_by_label("Owner").select_option(label="Platform: a sign-in button on /login "
                                             "for everyone")
    page.get_by_label("Name (shown on the sign-in button)").fill("Partner ID")
    page.get_by_label("OAuth2 with a user-info endpoint (GitHub-style)").check()
    expect(page.get_by_label("Authorization endpoint")).to_be_visible()
    expect(page.get_by_label("Issuer URL or discovery URL")).to_be_hidden()
    page.get_by_label("OpenID Connect", exact=True).check()  # only its groups are shown
    expect(page.get_by_label("Authorization endpoint")).to_be_hidden()
    expect(page.get_by_label("Metadata URL (HTTPS; Trellis refreshes it)")).to_be_hidden()
    page.get_by_label("Client ID").fill(client_id)
    page.get_by_label("Client secret").fill(secret)
    page.get_by_label("Issuer URL or discovery URL").fill(oidc_provider.issuer)
    screenshot(page, "admin-connection-new.png")
    page.get_by_role("button", name="Create (switched off)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Partner ID")
    redirect_uri = page.locator("dd code").last.inner_text()
    assert redirect_uri.startswith(live.url) and redirect_uri.endswith("/callback")
    expect(page.get_by_role("button", name="Switch on")).to_be_disabled()
    screenshot(page, "admin-connection.png")
    connection_url = page.url

    oidc_provider.register_client(redirect_uri, client_id=client_id, client_secret=secret)
    oidc_provider.put_account("fay@freelance.test", name="Fay Free")
    page.get_by_label("Email to test with").fill("fay@freelance.test")
    page.get_by_role("button", name="Run a test sign-in").click()
    expect(page.get_by_role("heading", name="A real sign-in would succeed")).to_be_visible()
    page.goto(connection_url)
    page.get_by_role("button", name="Switch on").click()
    expect(page.get_by_text("Partner ID is on.")).to_be_visible()

    visitor = browsing.page()
    visitor.goto(f"{live.url}/login")
    expect(visitor.get_by_role("button", name="Continue with Partner ID")).to_be_visible()
