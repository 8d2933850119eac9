"""Sign-in, lockout, sign-out and the CSRF page as a person sees them in Chromium."""

import re

import pytest

from portal import create_app
from tests.conftest import PASSWORD
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def acme(make_org, make_user, tx):
    from portal.services import organizations
    from tests.conftest import CLI_CTX
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f",
                                                "footer_text": "Acme Supplies · partner portal"})
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")


def sign_in(page, base, email="alice@acme.test", password=PASSWORD):
    page.goto(f"{base}/login")
    page.get_by_label("Work email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()


def test_sign_in_lands_on_the_branded_portal(page, live, acme):
    page.goto(f"{live.url}/o/acme/login")
    assert page.get_by_role("heading", name="Sign in to Acme Supplies").is_visible()
    screenshot(page, "signin-page.png")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_role("button", name="Continue").click()
    # No single sign-on for acme.test: the password step follows.
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/$"))
    assert page.get_by_role("heading", name="Welcome, Alice Acme").is_visible()
    assert page.get_by_text("Your apps at Acme Supplies").is_visible()
    assert page.get_by_text("No apps are available to you yet.").is_visible()
    assert page.locator("footer").inner_text() == "Acme Supplies · partner portal"
    brand = page.evaluate("getComputedStyle(document.documentElement)"
                          ".getPropertyValue('--brand').trim()")
    assert brand == "#0b6e4f"
    screenshot(page, "portal-home.png")


def test_wrong_password_keeps_the_user_on_the_sign_in_page(page, live, acme):
    sign_in(page, live.url, password="not the password")
    assert page.get_by_role("alert").inner_text() == "The email or password is not correct."
    assert page.url.endswith("/login")
    assert page.get_by_label("Password").is_visible()


def test_lockout_message_tells_how_long_to_wait(page, settings, serve, acme):
    app = create_app({**settings, "LOGIN_FREE_FAILURES": 2, "LOCKOUT_SECONDS": 120})
    server = serve(app)
    for _ in range(3):
        sign_in(page, server.url, password="not the password")
    message = page.get_by_role("alert").inner_text()
    assert message == "Too many failed attempts. Try again in 2 minutes."
    screenshot(page, "lockout.png")


def test_sign_out_ends_the_session(page, live, acme):
    sign_in(page, live.url)
    page.get_by_role("button", name="Sign out").click()
    assert page.get_by_text("You have signed out.").is_visible()
    page.goto(f"{live.url}/")
    assert "/login?next=" in page.url


def test_csrf_failure_page_shows_a_reference(page, live, acme):
    page.goto(f"{live.url}/login")
    page.evaluate("document.querySelector('input[name=csrf_token]').value = 'forged'")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    assert page.get_by_role("heading").first.inner_text().startswith("Your form expired")
    assert re.fullmatch(r"[0-9a-f]{16}", page.locator("code.reference").inner_text())
    screenshot(page, "csrf-error.png")


def test_works_without_javascript(browser, live, acme):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live.url)
    assert page.get_by_role("heading", name="Welcome, Alice Acme").is_visible()
    context.close()


def test_small_screens(browser, live, acme):
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.goto(f"{live.url}/o/acme/login")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "the sign-in page scrolls sideways on a phone"
    screenshot(page, "signin-mobile.png")
    context.close()
