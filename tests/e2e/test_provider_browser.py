"""A vendor app signs a user in through Trellis in a real browser: the example app under
examples/vendor-app (Authlib's Flask client), Trellis's sign-in, the branded consent page,
back in the app with the organization and roles, then RP-initiated logout."""

from __future__ import annotations

import importlib.util
import re
import secrets
import socket
import threading

import pytest
from werkzeug.serving import make_server

from portal.config import ROOT
from tests.conftest import PASSWORD
from tests.e2e.conftest import PHONE, screenshot
from tests.integration.provider_helpers import register, verify_domain

pytestmark = pytest.mark.e2e


def load_vendor_app():
    spec = importlib.util.spec_from_file_location(
        "vendor_app", ROOT / "examples" / "vendor-app" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def vendor(app, live, make_org, make_user):
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f",
                                                "footer_text": "Acme Supplies partner desk"})
    verify_domain(app, "acme", "acme.test")
    make_user("alice@acme.test", org="acme", display_name="Alice Adams")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    registered = register(app, name="Supplier Portal", redirect_uris=[base + "/callback"],
                          post_logout_redirect_uris=[base + "/"],
                          frontchannel_logout_uri=base + "/frontchannel-logout",
                          initiate_login_uri=base + "/login")
    vendor_app = load_vendor_app().create_app(live.url, registered.client_id,
                                              registered.secret, secrets.token_hex(16))
    server = make_server("127.0.0.1", port, vendor_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()


def sign_in_at_trellis(page) -> None:
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_vendor_app_sign_in_with_consent_and_logout(page, live, vendor):
    page.goto(vendor + "/")
    page.get_by_role("link", name="Sign in with Trellis").click()
    page.wait_for_url(re.compile(re.escape(live.url) + "/login"))
    sign_in_at_trellis(page)
    page.wait_for_url(re.compile(re.escape(live.url) + "/oauth/authorize"))
    heading = page.get_by_role("heading", name="Supplier Portal wants to sign you in")
    assert heading.is_visible()
    assert page.get_by_text("For Acme Supplies").is_visible()
    assert page.get_by_text("Acme Supplies partner desk").is_visible()  # the org's branding
    assert page.get_by_text("Your roles in that organization").is_visible()
    screenshot(page, "provider-consent.png")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(vendor + "/")
    assert page.locator("#who").inner_text() == \
        "Signed in as alice@acme.test for Acme Supplies"
    assert page.locator("#roles").inner_text() == "Roles: member"
    screenshot(page, "provider-vendor-app-signed-in.png")

    page.get_by_role("link", name="Sign out").click()
    page.wait_for_url(vendor + "/")
    assert page.get_by_role("link", name="Sign in with Trellis").is_visible()
    page.goto(live.url + "/")
    page.wait_for_url(re.compile(re.escape(live.url) + "/login"))  # Trellis session ended too


def test_tile_opens_the_app_and_signing_out_of_trellis_signs_out_of_it(page, live, vendor):
    """From the portal home a member opens the app by its tile (the app's own login, which
    comes back to Trellis and is signed in at once); signing out of Trellis then loads the
    app's front-channel logout URI in a frame, and the app's session is gone."""
    page.goto(live.url + "/login")
    sign_in_at_trellis(page)
    page.wait_for_url(live.url + "/")
    tile = page.get_by_role("link", name="Supplier Portal")
    assert tile.is_visible()
    screenshot(page, "provider-app-tiles.png")
    tile.click()
    page.wait_for_url(re.compile(re.escape(live.url) + "/oauth/authorize"))
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(vendor + "/")
    assert "alice@acme.test" in page.locator("#who").inner_text()

    page.goto(live.url + "/")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(live.url + "/logout")
    assert page.get_by_role("heading", name="You have signed out").is_visible()
    frame = page.frame_locator("iframe.logout-frame")
    frame.get_by_text("Signed out of Supplier Portal.").wait_for(state="attached")
    screenshot(page, "provider-frontchannel-logout.png")
    page.wait_for_url(re.compile(re.escape(live.url) + "/login"))  # moves on by itself
    page.goto(vendor + "/")
    assert page.get_by_role("link", name="Sign in with Trellis").is_visible()


def test_consent_page_keyboard_and_phone(browsing, live, vendor):
    page = browsing.page(viewport=PHONE)
    page.goto(vendor + "/login")
    sign_in_at_trellis(page)
    page.wait_for_url(re.compile(re.escape(live.url) + "/oauth/authorize"))
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing overflows sideways
    screenshot(page, "provider-consent-phone.png")
    allow = page.get_by_role("button", name="Allow")
    for _ in range(30):
        page.keyboard.press("Tab")
        if allow.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail("Allow is not reachable with the keyboard")
    page.keyboard.press("Enter")
    page.wait_for_url(vendor + "/")
    assert "alice@acme.test" in page.locator("#who").inner_text()


def test_broker_path_through_the_partners_identity_provider(browsing, app, live, make_org,
                                                           tx, interactive_oidc_provider):
    """The app sends the user to Trellis, home-realm discovery sends them on to their
    company's OpenID Provider, Trellis provisions them just in time and hands the app a code:
    the app never talks to the partner's provider."""
    from portal.services import connections
    from tests.conftest import CLI_CTX, services_of
    peer = interactive_oidc_provider
    make_org("acme", "Acme Supplies")
    verify_domain(app, "acme", "acme.test")
    with tx() as session:
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug="acme", name="Acme SSO",
            client_id="pending", client_secret="pending", issuer=peer.issuer, enabled=True,
            scopes=("openid", "email", "profile"))
        client_id, secret = peer.register_client(f"{live.url}/sso/oidc/{row.id}/callback")
        row.settings = {**row.settings, "client_id": client_id}
        row.sealed_secrets = services_of(app).secrets.seal({"client_secret": secret})
    peer.put_account("grace@acme.test", name="Grace Hopper")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    registered = register(app, name="Supplier Portal", redirect_uris=[base + "/callback"])
    vendor_app = load_vendor_app().create_app(live.url, registered.client_id,
                                              registered.secret, secrets.token_hex(16))
    server = make_server("127.0.0.1", port, vendor_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        page = browsing.page()
        page.goto(base + "/login")
        page.get_by_label("Work email").fill("grace@acme.test")
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(re.compile(re.escape(peer.issuer)))
        page.fill("input[name=login]", "grace@acme.test")
        page.fill("input[name=password]", "anything")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        if page.url.startswith(peer.issuer):  # the partner provider's own consent page
            page.click("button[type=submit]")
        page.wait_for_url(re.compile(re.escape(live.url) + "/oauth/authorize"))
        assert page.get_by_role("heading", name="Supplier Portal wants to sign you in"
                                ).is_visible()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(base + "/")
        assert page.locator("#who").inner_text() == \
            "Signed in as grace@acme.test for Acme Supplies"
        screenshot(page, "provider-broker-path.png")
    finally:
        server.shutdown()
        server.server_close()


def test_operator_registers_an_app_in_the_page(page, live, app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("ops@trellis.test", operator=True)
    page.goto(live.url + "/login")
    page.get_by_label("Work email").fill("ops@trellis.test")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(live.url + "/admin/apps")
    page.get_by_role("link", name="Register an app").click()
    page.get_by_label("Name (shown on the consent page").fill("Ticketing")
    page.get_by_label("Redirect URIs, one per line", exact=False).first.fill("https://tickets.example/callback")
    page.get_by_label("Organizations offered the app").fill("acme")
    page.get_by_label("ID token signature").select_option("ES256")
    page.get_by_label("Initiate-login URI").fill("https://tickets.example/login")
    screenshot(page, "admin-app-register.png")
    page.get_by_role("button", name="Register").click()
    assert page.get_by_role("heading", name="Ticketing is registered").is_visible()
    secret = page.locator("code.secret").inner_text()
    assert secret.startswith("trs_")
    screenshot(page, "admin-app-secret-once.png")
    page.get_by_role("link", name="Settings of Ticketing").click()
    assert secret not in page.content()
    screenshot(page, "admin-app-settings.png")
    page.get_by_label("The old secret keeps working for").select_option("3600")
    page.get_by_role("button", name="Make a new secret").click()
    assert page.get_by_role("heading", name="Ticketing has a new secret").is_visible()
    assert page.locator("code.secret").inner_text() != secret
