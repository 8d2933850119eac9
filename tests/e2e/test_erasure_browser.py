"""Deleting an account as a person does it: the account page asks for the password, shows
the date, and after the grace period the worker erases the account; the old address no
longer signs in."""

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.db import utcnow
from portal.models import User
from tests.conftest import PASSWORD, services_of
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e


def _sign_in(page, live):
    page.goto(f"{live.url}/login")
    page.get_by_label("Work email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()


def test_delete_the_account_then_the_worker_erases_it(page, live, app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    _sign_in(page, live)
    page.goto(f"{live.url}/account/")
    delete = page.get_by_role("region", name="Delete your account")
    delete.get_by_label("Current password").fill("not my password")
    delete.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("status").first).to_contain_text(
        "Your current password is not correct")

    delete.get_by_label("Current password").fill(PASSWORD)
    delete.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("status").first).to_contain_text("Your account will be deleted on")
    expect(delete.get_by_role("button", name="Cancel the deletion")).to_be_visible()
    screenshot(page, "account-deletion-scheduled.png")

    with services_of(app).db.transaction() as session:  # the grace period is over
        user = session.scalar(sa.select(User).where(User.email == "alice@acme.test"))
        user.erase_after = utcnow()
    from portal.cli_mail import erase_due
    with app.app_context():
        assert erase_due() == 1

    page.goto(f"{live.url}/account/")
    expect(page).to_have_url(re.compile(r"/login"))
    _sign_in(page, live)
    expect(page.get_by_role("alert")).to_contain_text("The email or password is not correct")
    screenshot(page, "account-erased-sign-in-refused.png")
