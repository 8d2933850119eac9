"""Two-step sign-in in Chromium: set up an authenticator app from the QR page (the code is
computed from the key shown for manual entry), sign out, sign in with password and code; and
the step-up page before an organization change."""

from __future__ import annotations

import time

import pyotp
import pytest
from playwright.sync_api import expect

from tests.conftest import CLI_CTX, PASSWORD
from tests.e2e.conftest import PHONE, screenshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def acme(make_org, make_user, tx):
    from portal.services import organizations
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")


def sign_in(page, base, email="alice@acme.test"):
    page.goto(f"{base}/login")
    page.get_by_label("Work email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()


def test_enroll_sign_out_and_sign_in_with_a_code(browsing, live, acme):
    page = browsing.page()
    base = live.url
    sign_in(page, base)
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")
    page.get_by_role("link", name="Account security").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Account security")
    page.get_by_role("link", name="Set up an authenticator app").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up an authenticator app")
    qr = page.get_by_role("img", name="QR code to add Trellis to your authenticator app")
    expect(qr).to_be_visible()
    assert qr.evaluate("img => img.naturalWidth") > 0  # the SVG loaded under the CSP
    secret = page.locator("#totp-secret").inner_text().strip()
    screenshot(page, "mfa-enroll.png")
    totp = pyotp.TOTP(secret)
    page.get_by_label("Code from the app").fill(totp.at(time.time() - 30))
    page.get_by_role("button", name="Confirm and turn on").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Save your recovery codes")
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    screenshot(page, "mfa-recovery-codes.png")
    page.get_by_role("link", name="I have saved them").click()
    expect(page.get_by_text("A second factor is on")).to_be_visible()
    screenshot(page, "mfa-security-on.png")

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, base)
    expect(page).to_have_url(f"{base}/login/mfa")
    expect(page.get_by_role("heading", level=1)).to_have_text("Enter your code")
    page.get_by_label("Code", exact=True).fill("000000")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("not correct")
    screenshot(page, "mfa-challenge-wrong.png")
    page.get_by_label("Code", exact=True).fill(totp.now())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")


def test_step_up_before_an_organization_change(browsing, live, acme, tx, monkeypatch):
    from portal import permissions
    from portal.services import organizations, roles, users
    with tx() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                             organizations.get(session, "acme"), "org_owner", {"org_owner"})
    page = browsing.page(viewport=PHONE)
    base = live.url
    sign_in(page, base)
    page.goto(f"{base}/account/security/totp")
    secret = page.locator("#totp-secret").inner_text().strip()
    totp = pyotp.TOTP(secret)
    page.get_by_label("Code from the app").fill(totp.at(time.time() - 30))
    page.get_by_role("button", name="Confirm and turn on").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Save your recovery codes")

    page.goto(f"{base}/o/acme/admin/security")
    expect(page.get_by_role("heading", level=1)).to_have_text("Security")
    screenshot(page, "mfa-org-security-phone.png")
    # An hour passes (for the step-up check only): the code from the setup is no longer
    # recent, so saving asks for a new one first.
    later = time.time() + 3600
    monkeypatch.setattr(permissions, "time", type("Later", (), {"time": lambda: later}))
    page.get_by_label("Required for every member").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm it is you")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "mfa-step-up-phone.png")
    with tx() as session:
        assert organizations.get(session, "acme").mfa_policy.value == "off"
    monkeypatch.undo()
    page.get_by_label("Code", exact=True).fill(totp.now())
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(f"{base}/o/acme/admin/security")
    page.get_by_label("Required for every member").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Security settings saved")).to_be_visible()
    with tx() as session:
        assert organizations.get(session, "acme").mfa_policy.value == "all"


def test_passkey_with_chromiums_virtual_authenticator(browsing, live, acme):
    """Register a passkey with Chromium's virtual authenticator (DevTools protocol), sign out,
    sign in with password and the passkey. WebAuthn needs a host name, not an IP: the page
    is opened as localhost."""
    page = browsing.page()
    base = live.url.replace("127.0.0.1", "localhost")
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})["authenticatorId"]
    sign_in(page, base)
    page.get_by_role("link", name="Account security").click()
    page.get_by_role("link", name="Add a passkey or security key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Add a passkey or security key")
    page.get_by_label("Name it").fill("Laptop")
    screenshot(page, "passkey-add.png")
    page.get_by_role("button", name="Add passkey").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Save your recovery codes")
    page.get_by_role("link", name="I have saved them").click()
    expect(page.get_by_role("button", name="Remove Laptop")).to_be_visible()
    screenshot(page, "passkey-security.png")
    [credential] = cdp.send("WebAuthn.getCredentials",
                            {"authenticatorId": authenticator})["credentials"]
    assert credential["rpId"] == "localhost"

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, base)
    expect(page).to_have_url(f"{base}/login/mfa")
    screenshot(page, "passkey-challenge.png")
    page.get_by_role("button", name="Use a passkey or security key").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")
    [credential] = cdp.send("WebAuthn.getCredentials",
                            {"authenticatorId": authenticator})["credentials"]
    assert credential["signCount"] >= 1
