"""An organization's owner tries a decision in the policy simulator, in Chromium."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PHONE, screenshot
from tests.e2e.test_org_admin_browser import acme_with_owner  # noqa: F401
from tests.e2e.test_signin_browser import sign_in

pytestmark = pytest.mark.e2e


def test_owner_simulates_a_decision_and_sees_why(browsing, live, acme_with_owner, tx):  # noqa: F811
    from portal.services import organizations, roles, users
    from tests.conftest import CLI_CTX
    with tx() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "mia@acme.test"),
                             organizations.get(session, "acme"), "buyer", {"buyer"})
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Policy simulator").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Policy simulator")
    page.get_by_label("User (email or id)").fill("mia@acme.test")
    page.get_by_label("Object type").fill("purchase_order")
    page.get_by_label("Object attributes").fill("owner_org=acme\namount=12000")
    page.get_by_label("Action").fill("approve")
    page.get_by_role("button", name="Decide").click()
    expect(page.get_by_role("heading", name="Denied")).to_be_visible()
    expect(page.get_by_text("Overridden by the deny:")).to_be_visible()
    screenshot(page, "policy-simulator-denied.png")
    page.get_by_label("Sign-in assurance").select_option("2")
    page.get_by_role("button", name="Decide").click()
    expect(page.get_by_role("heading", name="Allowed")).to_be_visible()
    expect(page.get_by_text("→ buyer")).to_be_visible()
    screenshot(page, "policy-simulator-allowed.png")


def test_simulator_at_phone_width(browsing, live, acme_with_owner):  # noqa: F811
    page = browsing.page(viewport=PHONE)
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/policy/simulate")
    expect(page.get_by_role("heading", level=1)).to_have_text("Policy simulator")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    screenshot(page, "policy-simulator-phone.png")


def test_operator_uploads_an_organization_policy(browsing, live, acme_with_owner, make_user,  # noqa: F811
                                                 tmp_path):
    make_user("olga@trellis.test", operator=True, display_name="Olga Operator")
    broken = tmp_path / "broken.csv"
    broken.write_text("p, buyer, *, report, export, True, alow\n")
    good = tmp_path / "acme.csv"
    good.write_text("# Acme's buyers also export reports.\n"
                    "p, buyer, *, report, export, True, allow\n")
    page = browsing.page()
    sign_in(page, live.url, email="olga@trellis.test")
    page.get_by_role("link", name="Policies").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Policies")
    page.get_by_label("Policy file (CSV)").set_input_files(str(broken))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_text("orgs/acme.csv:1: effect must be allow or deny")).to_be_visible()
    page.get_by_label("Policy file (CSV)").set_input_files(str(good))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_text("The policy of acme is in force.")).to_be_visible()
    expect(page.get_by_role("cell", name="acme", exact=True)).to_be_visible()
    screenshot(page, "admin-policies.png")
