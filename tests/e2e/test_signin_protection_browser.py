"""An operator opens *Sign-in protection* from the navigation, sees an account and an IP
locked, and lifts the account's lock, in Chromium."""

import pytest
from playwright.sync_api import expect

from tests.conftest import csrf_token, services_of
from tests.e2e.conftest import screenshot
from tests.e2e.test_signin_browser import sign_in

pytestmark = pytest.mark.e2e


def test_operator_lifts_a_lock_from_the_sign_in_protection_page(browsing, live, app,
                                                                 make_user):
    make_user("alice@acme.test", display_name="Alice Acme")
    make_user("oscar@trellis.test", operator=True, display_name="Oscar Operator")
    guesser = app.test_client()
    for _ in range(5):  # real sign-ins: the lockout is audited, which names the account
        guesser.post("/login", data={"email": "alice@acme.test", "password": "wrong",
                                     "csrf_token": csrf_token(guesser)},
                     environ_base={"REMOTE_ADDR": "198.51.100.7"})
    throttle = services_of(app).throttle
    for i in range(20):
        throttle.record_failure(f"victim{i}@acme.test", "203.0.113.66")

    page = browsing.page()
    sign_in(page, live.url, email="oscar@trellis.test")
    page.get_by_role("link", name="Sign-in protection").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in protection")
    expect(page.get_by_text("Not engaged")).to_be_visible()
    expect(page.get_by_role("cell", name="alice@acme.test", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="203.0.113.66", exact=True)).to_be_visible()
    screenshot(page, "admin-signin-protection.png")

    page.get_by_role("button", name="Lift the lock on alice@acme.test").click()
    expect(page.get_by_text("The lock on alice@acme.test was lifted")).to_be_visible()
    expect(page.get_by_text("No account is locked.")).to_be_visible()
    expect(page.get_by_role("cell", name="203.0.113.66", exact=True)).to_be_visible()
    screenshot(page, "admin-signin-protection-lifted.png")
