"""Registration as a person does it: the form, the email read from a real SMTP server on
loopback, the confirmation, the first sign-in; then a forgotten password."""

from urllib.parse import urlencode

import pytest
from playwright.sync_api import expect

from portal import create_app
from tests.conftest import CLI_CTX, services_of
from tests.e2e.conftest import screenshot
from tests.peers.smtp import links_in, text_of

pytestmark = pytest.mark.e2e

PASSPHRASE = "tangerine lighthouse okapi"


@pytest.fixture
def mail_app(settings, smtp_server):
    # The real path: delivery after the response, as under a server.
    app = create_app({**settings, **smtp_server.settings(), "MAIL_AFTER_RESPONSE": True})
    yield app
    services_of(app).db.dispose()


@pytest.fixture
def open_acme(mail_app, make_org, tx):
    from portal.services import registration
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "open")


def _link(smtp_server, email, part, count=1):
    mail = smtp_server.wait_for(email, count)[count - 1]
    return next(u for u in links_in(mail) if part in u), mail


def test_register_verify_by_email_then_sign_in(page, serve, mail_app, open_acme,
                                               smtp_server):
    live = serve(mail_app)
    page.goto(f"{live.url}/o/acme/login")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Create an account at Acme Supplies")
    page.get_by_label("Email").fill("nora@example.test")
    page.get_by_label("Your name").fill("Nora New")
    page.get_by_label("Password", exact=True).fill(PASSPHRASE)
    page.get_by_label("Password again").fill(PASSPHRASE)
    page.get_by_label("I accept the terms of use").check()
    screenshot(page, "register-form.png")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your email")
    screenshot(page, "register-sent.png")

    link, mail = _link(smtp_server, "nora@example.test", "/register/verify/")
    assert "Acme Supplies" in mail["Subject"] and "Nora New" in text_of(mail)
    assert link.startswith(live.url)
    page.goto(link)
    screenshot(page, "register-confirm.png")
    page.get_by_role("button", name="Confirm and create my account").click()
    expect(page).to_have_url(f"{live.url}/o/acme/login")
    expect(page.get_by_role("status")).to_contain_text("Your email address is confirmed")

    page.get_by_label("Work email").fill("nora@example.test")
    page.get_by_label("Password").fill(PASSPHRASE)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Nora New")
    screenshot(page, "register-signed-in.png")
    page.get_by_role("link", name="Account", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Nora New")
    expect(page.get_by_text("This browser")).to_be_visible()
    screenshot(page, "account-page.png")


def test_forgotten_password_by_email(page, serve, mail_app, open_acme, make_user,
                                     smtp_server):
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    live = serve(mail_app)
    page.goto(f"{live.url}/o/acme/login")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill("alice@acme.test")
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    link, _mail = _link(smtp_server, "alice@acme.test", "/password/reset/")
    page.goto(link)
    page.get_by_label("New password", exact=True).fill("a weak one")
    page.get_by_label("New password again").fill("a weak one")
    page.get_by_role("button", name="Set the new password").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 12 characters")
    screenshot(page, "reset-error.png")
    page.get_by_label("New password", exact=True).fill(PASSPHRASE)
    page.get_by_label("New password again").fill(PASSPHRASE)
    page.get_by_role("button", name="Set the new password").click()
    expect(page.get_by_role("status")).to_contain_text("Your password was changed")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSPHRASE)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")


def test_an_app_asks_for_the_details_it_needs_before_opening(page, serve, settings,
                                                             tmp_path, open_acme, make_user):

    from tests.integration.provider_helpers import REDIRECT, register
    from tests.integration.test_profiling import _needing
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    plain = create_app(settings)
    delivery = register(plain, name="Delivery Planner")
    services_of(plain).db.dispose()
    app = _needing(settings, tmp_path, delivery.client_id)
    try:
        live = serve(app)
        page.goto(f"{live.url}/login")
        page.get_by_label("Work email").fill("alice@acme.test")
        page.get_by_label("Password").fill("correct horse battery")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Alice Acme")
        query = urlencode({"response_type": "code", "client_id": delivery.client_id,
                           "redirect_uri": REDIRECT, "scope": "openid email", "state": "s",
                           "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                           "code_challenge_method": "S256"})
        page.goto(f"{live.url}/oauth/authorize?{query}")
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Delivery Planner needs a few details")
        page.get_by_label("Work phone").fill("not a phone")
        page.get_by_label("Country you work in").select_option("Germany")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_text("Work phone: enter a phone number")).to_be_visible()
        screenshot(page, "profiling-error.png")
        page.get_by_label("Work phone").fill("+49 30 1234567")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Delivery Planner")
        screenshot(page, "profiling-then-consent.png")
    finally:
        services_of(app).db.dispose()


@pytest.mark.mail
def test_the_whole_self_service_flow(browsing, serve, settings, smtp_server, tmp_path,
                                     make_org, tx):
    """One person, one browser, from the registration form to the erased account: every
    step of the self-service journey, a screenshot of each page it passes through."""
    import json
    import re

    import sqlalchemy as sa

    from portal.db import utcnow
    from portal.models import User
    from portal.services import registration
    from tests.integration.provider_helpers import REDIRECT, register
    from tests.integration.test_profiling import SCHEMA

    def shot(step: str) -> None:
        screenshot(page, f"self-service-flow-{step}.png")

    make_org("acme", "Acme Supplies")
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "open")
    plain = create_app(settings)
    delivery = register(plain, name="Delivery Planner")
    services_of(plain).db.dispose()
    schema = tmp_path / "schema.yaml"
    schema.write_text(SCHEMA.replace("APP", delivery.client_id))
    app = create_app({**settings, **smtp_server.settings(), "MAIL_AFTER_RESPONSE": True,
                      "PROFILE_SCHEMA": str(schema)})
    page = browsing.page(accept_downloads=True)
    try:
        live = serve(app)
        # Register.
        page.goto(f"{live.url}/o/acme/register")
        page.get_by_label("Email").fill("nora@example.test")
        page.get_by_label("Your name").fill("Nora New")
        page.get_by_label("Password", exact=True).fill(PASSPHRASE)
        page.get_by_label("Password again").fill(PASSPHRASE)
        page.get_by_label("I accept the terms of use").check()
        shot("01-register")
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your email")
        shot("02-check-your-email")

        # The verification mail, as the loopback SMTP server received it; verify.
        link, mail = _link(smtp_server, "nora@example.test", "/register/verify/")
        assert "Acme Supplies" in mail["Subject"]
        page.goto(link)
        shot("03-verify")
        page.get_by_role("button", name="Confirm and create my account").click()
        expect(page.get_by_role("status")).to_contain_text("Your email address is confirmed")

        # Sign in.
        page.get_by_label("Work email").fill("nora@example.test")
        page.get_by_label("Password").fill(PASSPHRASE)
        shot("04-sign-in")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Nora New")
        shot("05-signed-in")

        # Opening an app that needs details: the interstitial asks for exactly those.
        query = urlencode({"response_type": "code", "client_id": delivery.client_id,
                           "redirect_uri": REDIRECT, "scope": "openid email", "state": "s",
                           "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                           "code_challenge_method": "S256"})
        page.goto(f"{live.url}/oauth/authorize?{query}")
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Delivery Planner needs a few details")
        expect(page.get_by_label("Job title")).to_have_count(0)  # not needed: not asked
        page.get_by_label("Work phone").fill("+49 30 1234567")
        page.get_by_label("Country you work in").select_option("Germany")
        shot("06-profiling-interstitial")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Delivery Planner")
        shot("07-app-consent")

        # Profile edit: the name, then a detail an app asked for.
        page.goto(f"{live.url}/account/")
        page.get_by_label("Name", exact=True).fill("Nora Newer")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_role("status").first).to_contain_text("Your profile was saved")
        expect(page.get_by_label("Name", exact=True)).to_have_value("Nora Newer")
        page.get_by_role("link", name="Edit these details").click()
        page.get_by_label("Work phone").fill("not a phone")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_text("Work phone: enter a phone number")).to_be_visible()
        shot("08-profile-edit-error")
        page.get_by_label("Work phone").fill("+49 30 7654321")
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("status").first).to_contain_text("Your details were saved")
        expect(page.get_by_text("+49 30 7654321")).to_be_visible()
        shot("09-profile-edited")

        # Consent change: grant product news.
        page.get_by_label("Product news by email").check()
        page.get_by_role("button", name="Save my choices").click()
        expect(page.get_by_role("status").first).to_contain_text("Your choices were saved")
        expect(page.get_by_label("Product news by email")).to_be_checked()
        expect(page.get_by_label("Usage analytics")).not_to_be_checked()
        shot("10-consent-changed")

        # Export: the download holds the profile, the details and the consents.
        with page.expect_download() as download:
            page.get_by_role("link", name="Download a copy of your data").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.name == "my-trellis-data.json"
        data = json.loads(saved.read_text(encoding="utf-8"))
        assert data["profile"]["email"] == "nora@example.test"
        assert data["profile"]["display_name"] == "Nora Newer"
        assert {f["field"]: f["value"] for f in data["profile_fields"]} == {
            "phone": "+49 30 7654321", "country": "Germany"}
        latest = {c["purpose"]: c["status"] for c in data["consents"]}
        assert latest["product_news"] == "granted"
        assert "terms" in latest  # accepted at registration, recorded in the ledger
        assert [m["organization"] for m in data["memberships"]] == ["acme"]
        shot("11-exported")

        # Delete: request with the password, then the worker's erasure after the grace
        # period, then the old address no longer signs in.
        delete = page.get_by_role("region", name="Delete your account")
        delete.get_by_label("Current password").fill(PASSPHRASE)
        delete.get_by_role("button", name="Delete my account").click()
        expect(page.get_by_role("status").first).to_contain_text(
            "Your account will be deleted on")
        shot("12-deletion-requested")
        with services_of(app).db.transaction() as session:  # the grace period is over
            user = session.scalar(sa.select(User).where(User.email == "nora@example.test"))
            user.erase_after = utcnow()
        from portal.cli_mail import erase_due
        with app.app_context():
            assert erase_due() == 1
        page.goto(f"{live.url}/account/")
        expect(page).to_have_url(re.compile(r"/login"))
        page.get_by_label("Work email").fill("nora@example.test")
        page.get_by_label("Password").fill(PASSPHRASE)
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "The email or password is not correct")
        shot("13-erased-sign-in-refused")
    finally:
        services_of(app).db.dispose()
