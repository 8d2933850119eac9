"""An organization's owner sends the organization's events to their SIEM, in Chromium."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.test_org_admin_browser import acme_with_owner  # noqa: F401
from tests.e2e.test_signin_browser import sign_in

pytestmark = pytest.mark.e2e


def test_owner_adds_an_event_stream_and_sees_its_secret_once(browsing, live,
                                                             acme_with_owner):  # noqa: F811
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/siem")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Event streams of Acme Supplies")
    page.get_by_label("Name", exact=True).fill("acme-splunk")
    page.get_by_label("HTTPS address of your receiver").fill("https://siem.acme.test/trellis")
    page.get_by_label("Format").select_option("ocsf")
    page.get_by_label("Events (names or prefixes").fill("auth., role.")
    page.get_by_role("button", name="Add stream").click()
    secret = page.get_by_role("textbox", name="Signing secret", exact=True).input_value()
    assert len(secret) >= 40
    expect(page.get_by_role("cell", name="acme-splunk", exact=True)).to_be_visible()
    screenshot(page, "orgadmin-siem.png")
    page.reload()
    expect(page.get_by_role("textbox", name="Signing secret", exact=True)).to_have_count(0)


def test_operator_adds_a_syslog_stream(browsing, live, make_user, rsyslog, tmp_path):
    make_user("oscar@trellis.test", operator=True, display_name="Oscar Operator")
    page = browsing.page()
    sign_in(page, live.url, email="oscar@trellis.test")
    page.goto(f"{live.url}/admin/siem")
    page.get_by_label("Name", exact=True).fill("soc")
    page.get_by_label("Sends to").select_option("syslog")
    page.get_by_label("Address").fill(rsyslog.target)
    page.get_by_label("Format").select_option("cef")
    page.get_by_role("button", name="Add stream").click()
    expect(page.get_by_text("Stream added.")).to_be_visible()
    expect(page.get_by_role("cell", name="every organization")).to_be_visible()
    screenshot(page, "admin-siem.png")
