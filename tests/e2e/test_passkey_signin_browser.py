"""Passwordless sign-in in Chromium: enroll a passkey with the virtual authenticator (Chrome
DevTools Protocol), sign out, then "Sign in with a passkey" on the sign-in page, with no
email and no password; the sign-in goes through the same completion as any other."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import audit_events
from tests.e2e.conftest import screenshot
from tests.e2e.test_mfa_browser import acme, sign_in  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e


def _authenticator(page, *, verified: bool = True) -> tuple[object, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": verified,
        "automaticPresenceSimulation": True}})["authenticatorId"]
    return cdp, authenticator


def _enroll(page, base) -> None:
    sign_in(page, base)
    page.get_by_role("link", name="Account security").click()
    page.get_by_role("link", name="Add a passkey or security key").click()
    page.get_by_label("Name it").fill("Laptop")
    page.get_by_role("button", name="Add passkey").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Save your recovery codes")
    page.get_by_role("link", name="I have saved them").click()
    page.get_by_role("button", name="Sign out").click()


def test_sign_in_with_a_passkey_and_no_password(browsing, live, acme, app):  # noqa: F811
    page = browsing.page()
    base = live.url.replace("127.0.0.1", "localhost")  # WebAuthn needs a host name
    cdp, authenticator = _authenticator(page)
    _enroll(page, base)
    [credential] = cdp.send("WebAuthn.getCredentials",
                            {"authenticatorId": authenticator})["credentials"]
    assert credential["isResidentCredential"] is True  # discoverable: no email needed

    page.goto(f"{base}/login")
    button = page.get_by_role("button", name="Sign in with a passkey")
    expect(button).to_be_visible()
    screenshot(page, "passkey-sign-in.png")
    button.click()
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")

    logins = [e for e in audit_events(app, "auth.login") if e.outcome == "success"]
    assert logins[-1].details == {"method": "passkey"}
    assert logins[-1].actor == "alice@acme.test"
    risk = audit_events(app, "auth.risk")[-1]  # the same completion: scored and recorded
    assert risk.details["method"] == ["hwk"] and risk.actor == "alice@acme.test"
    # The passkey satisfied the second factor: a step-up-protected page opens at once.
    page.goto(f"{base}/account/security")
    expect(page.get_by_role("heading", level=1)).to_have_text("Account security")


def test_a_passkey_without_user_verification_is_refused(browsing, live, acme, app):  # noqa: F811
    page = browsing.page()
    base = live.url.replace("127.0.0.1", "localhost")
    cdp, authenticator = _authenticator(page)
    _enroll(page, base)
    cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator,
                                          "isUserVerified": False})
    page.goto(f"{base}/login")
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page.locator("#passkey-error")).to_be_visible()
    expect(page).to_have_url(f"{base}/login")
    assert page.context.cookies() and page.get_by_role("heading", level=1).inner_text() \
        == "Sign in"
