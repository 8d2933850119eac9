"""Sign-in, lockout, sign-out, the CSRF page, keyboard use and phone widths as a person sees
them in Chromium."""

import re

import pytest
from playwright.sync_api import expect

from portal import create_app
from tests.conftest import CLI_CTX, PASSWORD, services_of
from tests.e2e.conftest import PHONE, csp_violations, screenshot

pytestmark = pytest.mark.e2e

ACME_GREEN = "rgb(11, 110, 79)"  # #0b6e4f, Acme's primary colour
WRONG = "not the password"


@pytest.fixture
def acme(make_org, make_user, tx):
    from portal.services import organizations
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f",
                                                "footer_text": "Acme Supplies · partner portal"})
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")


@pytest.fixture
def operator(make_user):
    make_user("olga@trellis.test", operator=True, display_name="Olga Operator")


@pytest.fixture
def strict_app(settings):
    """Locks an account after two failures, for two minutes."""
    app = create_app({**settings, "LOGIN_FREE_FAILURES": 2, "LOCKOUT_SECONDS": 120})
    yield app
    services_of(app).db.dispose()


def sign_in(page, base, email="alice@acme.test", password=PASSWORD):
    """The one-step form: email and password together on the first page."""
    page.goto(f"{base}/login")
    page.get_by_label("Work email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()


def expect_portal_home(page, base, name="Alice Acme"):
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {name}")


def test_sign_in_lands_on_the_branded_portal(page, live, acme):
    page.goto(f"{live.url}/login")
    expect(page).to_have_title("Sign in")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    screenshot(page, "signin-page.png")
    page.get_by_role("button", name="Continue").click()

    expect_portal_home(page, live.url)
    expect(page).to_have_title("Home · Acme Supplies")
    expect(page.locator(".site-header .brand-name")).to_have_text("Acme Supplies")
    expect(page.get_by_role("heading", name="Your apps at Acme Supplies")).to_be_visible()
    expect(page.get_by_text("No apps are available to you yet.")).to_be_visible()
    expect(page.locator("footer")).to_have_text("Acme Supplies · partner portal")
    # Branding arrives as a stylesheet (the CSP forbids inline styles): the header and the
    # links wear Acme's colour.
    expect(page.locator(".site-header")).to_have_css("border-top-color", ACME_GREEN)
    expect(page.get_by_role("link", name="Acme Supplies", exact=True).last).to_have_css(
        "color", ACME_GREEN)
    screenshot(page, "portal-home.png")


def test_sign_in_in_two_steps_from_the_organizations_page(page, live, acme):
    page.goto(f"{live.url}/o/acme/login")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to Acme Supplies")
    expect(page.get_by_label("Work email")).to_be_focused()
    expect(page.get_by_label("Work email")).to_have_accessible_description(
        "If your organization uses single sign-on, you will be sent to its sign-in page.")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_role("button", name="Continue").click()
    # No single sign-on for acme.test: the password step follows, with the email kept.
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.get_by_label("Work email")).to_have_value("alice@acme.test")
    expect(page.get_by_role("link", name="Use a different email")).to_be_visible()
    screenshot(page, "signin-password-step.png")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect_portal_home(page, live.url)


def test_wrong_password_keeps_the_user_on_the_sign_in_page(page, live, acme):
    sign_in(page, live.url, password=WRONG)
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("The email or password is not correct.")
    expect(page).to_have_url(f"{live.url}/login")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    password = page.get_by_label("Password")
    expect(password).to_be_focused()
    expect(password).to_have_value("")
    # Screen readers announce the error with the field it is about.
    expect(password).to_have_accessible_description("The email or password is not correct.")
    expect(page.get_by_label("Work email")).to_have_value("alice@acme.test")


def test_lockout_message_tells_how_long_to_wait(page, strict_app, serve, acme):
    server = serve(strict_app)
    for _ in range(3):
        sign_in(page, server.url, password=WRONG)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Too many failed attempts")
    expect(alert).to_have_text(
        re.compile(r"^Too many failed attempts\. Try again in \d+ minutes?\.$"))
    expect(alert).to_contain_text("Try again in 2 minutes")
    screenshot(page, "lockout.png")
    # While locked, even the right password is refused with the same plain message.
    sign_in(page, server.url)
    expect(page.get_by_role("alert")).to_contain_text("Try again in 2 minutes")
    expect(page).to_have_url(f"{server.url}/login")


def test_sign_out_ends_the_session(page, live, acme):
    sign_in(page, live.url)
    expect_portal_home(page, live.url)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{live.url}/login")
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.goto(f"{live.url}/")
    expect(page).to_have_url(re.compile(re.escape(f"{live.url}/login?next=")))
    expect(page.get_by_role("status")).to_have_text("Please sign in to continue.")
    screenshot(page, "signed-out.png")


@pytest.mark.parametrize("tamper", [
    "document.querySelector('input[name=csrf_token]').remove()",
    "document.querySelector('input[name=csrf_token]').value = 'forged'",
], ids=["removed", "corrupted"])
def test_csrf_failure_page_shows_a_reference(page, live, acme, tamper):
    page.goto(f"{live.url}/login")
    page.evaluate(tamper)
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Continue").click()
    response = posted.value
    assert response.status == 400
    expect(page.get_by_role("heading", level=1)).to_have_text("Please try again")
    expect(page.locator("main")).to_contain_text(
        "Your form expired or was sent from another site. Go back, reload the page and try "
        "again.")
    reference = page.locator("code.reference")
    expect(reference).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
    expect(reference).to_have_text(response.headers["x-request-id"])
    expect(page.get_by_role("link", name="Go to the home page")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)  # nobody signed in
    screenshot(page, "csrf-error.png")


def test_works_without_javascript(browsing, live, acme):
    page = browsing.page(java_script_enabled=False)
    sign_in(page, live.url)
    expect_portal_home(page, live.url)
    expect(page.get_by_text("No apps are available to you yet.")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    # The two-step sign-in needs no script either.
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect_portal_home(page, live.url)


def test_pages_break_no_content_security_policy_rule(browsing, live, acme, operator):
    """Every page a person meets here, with its console watched for CSP reports."""
    page = browsing.page()
    broken = []  # stylesheets, icons and the like that did not load

    def check_resource(response) -> None:
        if response.request.resource_type != "document" and response.status >= 400:
            broken.append((response.status, response.url))
    page.on("response", check_resource)
    pages = [f"{live.url}/login", f"{live.url}/o/acme/login", f"{live.url}/no-such-page"]
    for url in pages:
        response = page.goto(url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
    # The stylesheet loaded under the policy: the page is styled, not bare HTML.
    expect(page.locator("body")).to_have_css("background-color", "rgb(243, 244, 246)")
    sign_in(page, live.url, password=WRONG)  # the error state of the sign-in page
    expect(page.get_by_role("alert")).to_be_visible()
    sign_in(page, live.url)  # the branded home
    expect_portal_home(page, live.url)
    page.goto(f"{live.url}/o/acme/")
    expect(page.locator(".site-header")).to_have_css("border-top-color", ACME_GREEN)
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, live.url, "olga@trellis.test")  # the operator's pages
    expect_portal_home(page, live.url, "Olga Operator")
    for name, heading in (("Organizations", "Organizations"),
                          ("Connections", "Single sign-on connections")):
        page.get_by_role("link", name=name, exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    page.evaluate("document.querySelector('input[name=csrf_token]').remove()")
    page.get_by_role("button", name="Continue").click()  # the error page
    expect(page.get_by_role("heading", level=1)).to_have_text("Please try again")

    assert csp_violations(browsing.console) == []
    assert broken == []


def test_the_console_check_would_see_a_violation(browsing, live):
    """The check above is not vacuous: a blocked inline script shows up in the console."""
    page = browsing.page()
    page.goto(f"{live.url}/login")
    with page.expect_console_message(lambda message: bool(csp_violations([message.text]))):
        page.evaluate("""() => { const s = document.createElement('script');
                                 s.textContent = 'window.ran = true';
                                 document.head.append(s); }""")
    assert page.evaluate("window.ran === undefined")  # the policy blocked it
    assert csp_violations(browsing.console)
    browsing.console.clear()  # expected here: keep the fixture's own check from failing


def test_keyboard_order_follows_the_page(page, live, acme):
    page.goto(f"{live.url}/login")
    email = page.get_by_label("Work email")
    expect(email).to_be_focused()  # autofocus
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Continue")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Trellis")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()  # visible once it has focus
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    # No positive tabindex anywhere to reorder the page.
    assert page.locator("[tabindex]:not([tabindex='0']):not([tabindex='-1'])").count() == 0


def test_small_screens(browsing, live, acme, operator):
    page = browsing.page(viewport=PHONE)

    def fits() -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{page.url} scrolls sideways on a phone ({width}px)"

    page.goto(f"{live.url}/o/acme/login")
    fits()
    button = page.get_by_role("button", name="Continue").bounding_box()
    assert button["height"] >= 40, "the main button is too small to tap"
    screenshot(page, "signin-mobile.png")
    sign_in(page, live.url, "olga@trellis.test")  # the longest header: operator navigation
    expect_portal_home(page, live.url, "Olga Operator")
    fits()
    screenshot(page, "portal-home-mobile.png")
    page.get_by_role("link", name="Connections", exact=True).click()
    fits()
    page.goto(f"{live.url}/no-such-page")
    fits()
