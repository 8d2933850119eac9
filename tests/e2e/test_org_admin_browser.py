"""An organization's owner administers members and invitations in Chromium, and an invited
person joins through the link."""

import re

import pytest
from playwright.sync_api import expect

from tests.conftest import CLI_CTX, PASSWORD
from tests.e2e.conftest import PHONE, screenshot
from tests.e2e.test_signin_browser import sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def acme_with_owner(make_org, make_user, tx):
    from portal.services import organizations, roles, users
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    for name in ("Max Mustermann", "Mia Miller", "Noah Nguyen"):
        make_user(f"{name.split()[0].lower()}@acme.test", org="acme", display_name=name)
    with tx() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                             organizations.get(session, "acme"), "org_owner",
                             {"org_owner", "member"})


def test_owner_manages_members_and_invites(browsing, live, acme_with_owner, make_user):
    page = browsing.page()
    sign_in(page, live.url)
    page.get_by_role("link", name="Administer Acme Supplies").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Members of Acme Supplies")
    expect(page.get_by_text("4 members")).to_be_visible()
    screenshot(page, "orgadmin-members.png")

    page.get_by_label("Search").fill("mia")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("1 member match")).to_be_visible()
    page.get_by_role("link", name="mia@acme.test").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Mia Miller")
    grantable = page.get_by_label("Grant role").locator("option").all_inner_texts()
    assert "buyer" not in grantable  # the owner does not hold it, so cannot grant it
    page.get_by_label("Grant role").select_option("auditor")
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.get_by_text("Role auditor granted.")).to_be_visible()
    expect(page.get_by_text("auditor — granted by an admin")).to_be_visible()
    screenshot(page, "orgadmin-member.png")
    page.get_by_role("button", name="Suspend").click()
    expect(page.get_by_text("Member suspended; their sessions have ended.")).to_be_visible()

    page.get_by_role("link", name="Invitations").click()
    page.get_by_label("Work email").fill("nina@acme.test")
    page.get_by_label("Role").select_option("user_manager")
    page.get_by_role("button", name="Create invitation").click()
    link = page.get_by_role("textbox", name="Invitation link").input_value()
    assert re.fullmatch(rf"{re.escape(live.url)}/invite/[\w-]{{40,}}", link), link
    expect(page.get_by_role("cell", name="nina@acme.test")).to_be_visible()
    screenshot(page, "orgadmin-invitations.png")

    make_user("nina@acme.test", org=None, display_name="Nina Novak")
    invitee = browsing.page()
    invitee.goto(link)
    expect(invitee).to_have_url(re.compile(r"/login"))
    invitee.get_by_label("Work email").fill("nina@acme.test")
    invitee.get_by_label("Password").fill(PASSWORD)
    invitee.get_by_role("button", name="Continue").click()
    expect(invitee.get_by_role("heading", level=1)).to_have_text("Join Acme Supplies")
    screenshot(invitee, "invitation-accept.png")
    invitee.get_by_role("button", name="Accept and join").click()
    expect(invitee.get_by_text("Welcome to Acme Supplies.")).to_be_visible()
    expect(invitee.get_by_role("link", name="Administer Acme Supplies")).to_be_visible()


def test_members_page_at_phone_width(browsing, live, acme_with_owner):
    page = browsing.page(viewport=PHONE)
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways ({width}px)"
    screenshot(page, "orgadmin-members-phone.png")


def test_sso_manager_sets_up_saml_in_the_browser(browsing, live, make_org, make_user, tx,
                                                  saml_idp):
    import requests

    from portal.services import organizations, roles, users
    make_org("partner", "Partner Co")
    make_user("sam@partner.example", org="partner", display_name="Sam Setup")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "sam@partner.example"),
                             organizations.get(session, "partner"), "sso_manager",
                             {"sso_manager"})
    page = browsing.page()
    sign_in(page, live.url, email="sam@partner.example")
    page.get_by_role("link", name="Administer Partner Co").click()
    page.get_by_role("link", name="Single sign-on").first.click()
    page.get_by_role("link", name="Add a connection").click()
    page.get_by_label("Name (shown on the sign-in button)").fill("Partner SSO")
    page.get_by_label("Metadata URL (HTTPS; Trellis refreshes it)").fill(saml_idp.entity_id)
    page.get_by_label("Groups to roles, one per line").fill("staff = member")
    screenshot(page, "orgadmin-sso-new.png")
    page.get_by_role("button", name="Create (switched off)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Partner SSO")
    acs = page.locator("dd code").nth(1).inner_text()
    assert acs.startswith(live.url) and acs.endswith("/acs")
    expect(page.get_by_role("button", name="Switch on")).to_be_disabled()
    metadata = page.locator("dd code").first.inner_text()
    saml_idp.trust_sp(requests.get(metadata, timeout=10).text)
    screenshot(page, "orgadmin-sso-connection.png")
    connection_url = page.url
    page.get_by_label("Email to test with").fill("alice@partner.example")
    page.get_by_role("button", name="Run a test sign-in").click()
    expect(page.get_by_role("heading", name="A real sign-in would succeed")).to_be_visible()
    screenshot(page, "orgadmin-sso-test.png")
    page.goto(connection_url)
    expect(page.get_by_text("The current settings passed a test.")).to_be_visible()
    page.get_by_role("button", name="Switch on").click()
    expect(page.get_by_text("Single sign-on is on")).to_be_visible()


def test_csv_import_dry_run_then_import(browsing, live, acme_with_owner, tmp_path):
    people = tmp_path / "people.csv"
    people.write_text("email,name,role\nnew.one@acme.test,New One,\nnot-an-email,Nobody,\n"
                      "max@acme.test,Already here,\nnew.two@acme.test,New Two,auditor\n")
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Import from CSV").click()
    page.get_by_label("CSV file (up to 20 MB)").set_input_files(str(people))
    page.get_by_role("button", name="Check").click()
    expect(page.get_by_role("heading", name="Dry run: nothing was written")).to_be_visible()
    expect(page.get_by_role("cell", name="not a valid email address")).to_be_visible()
    expect(page.get_by_role("cell", name="is already a member")).to_be_visible()
    screenshot(page, "orgadmin-import-dry-run.png")
    page.get_by_label("CSV file (up to 20 MB)").set_input_files(str(people))
    page.get_by_label("Dry run: only check the file").uncheck()
    page.get_by_role("button", name="Check").click()
    expect(page.get_by_role("heading", name="Import finished")).to_be_visible()
    expect(page.get_by_text("2 (2 new accounts)")).to_be_visible()
    page.goto(f"{live.url}/o/acme/admin/users?q=new")
    expect(page.get_by_text("2 members match")).to_be_visible()


def test_owner_creates_an_api_token(browsing, live, acme_with_owner):
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/tokens")
    page.get_by_label("Name").fill("HR system")
    page.get_by_label("members:read").check()
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_role("textbox", name="Token").input_value()
    assert secret.startswith("trt_")
    expect(page.get_by_role("cell", name="HR system", exact=True)).to_be_visible()
    screenshot(page, "orgadmin-tokens.png")
    page.goto(f"{live.url}/api/v1/docs")
    expect(page.get_by_role("heading", name="GET /api/v1/orgs/{slug}/members",
                            exact=True)).to_be_visible()
    screenshot(page, "api-docs.png")


def test_owner_verifies_a_domain_against_a_dns_server(browsing, live, acme_with_owner,
                                                      dns_server):
    """The TXT record shown in the page is published on a real DNS server (loopback UDP);
    Verify now asks it and the domain turns verified."""
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Domains").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Domains of Acme Supplies")
    page.get_by_label("Domain name").fill("acme.example")
    page.get_by_role("button", name="Add domain").click()
    expect(page.get_by_text("Domain added.")).to_be_visible()
    record = page.get_by_label("TXT record for acme.example").input_value()
    assert re.fullmatch(r"trellis-verification=[0-9a-f]{32}", record), record
    page.get_by_role("button", name="Verify now acme.example").click()
    expect(page.get_by_role("status")).to_contain_text("No TXT record")
    dns_server.publish("acme.example", "v=spf1 -all", record)
    page.get_by_role("button", name="Verify now acme.example").click()
    expect(page.get_by_role("status")).to_contain_text("acme.example is verified")
    expect(page.get_by_role("cell", name="verified", exact=True)).to_be_visible()
    screenshot(page, "orgadmin-domains.png")
    page.get_by_role("link", name="Audit trail").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit trail of Acme Supplies")
    page.get_by_label("Action").fill("domain")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="domain.verify")).to_have_count(2)  # failed, then done
    screenshot(page, "orgadmin-audit.png")


def test_owner_composes_a_custom_role(browsing, live, acme_with_owner):
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Roles").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Roles of Acme Supplies")
    page.get_by_label("Name", exact=True).fill("helpdesk")
    page.get_by_label("Description (optional)").fill("First-line support")
    page.get_by_label("see members member/read").check()
    page.get_by_label("invite people invitation/manage").check()
    screenshot(page, "orgadmin-roles-new.png")
    page.get_by_role("button", name="Create role").click()
    expect(page.get_by_role("status")).to_contain_text("Role helpdesk created.")
    expect(page.get_by_role("link", name="helpdesk")).to_be_visible()
    screenshot(page, "orgadmin-roles.png")
    page.get_by_role("link", name="Members").click()
    page.get_by_role("link", name="mia@acme.test").click()
    page.get_by_label("Grant role").select_option("helpdesk")
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.get_by_text("Role helpdesk granted.")).to_be_visible()


def test_owner_brands_the_sign_in_page_with_a_preview(browsing, live, acme_with_owner,
                                                      tmp_path):
    from tests.images import SVG_WITH_SCRIPT, png
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Branding").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Branding of Acme Supplies")
    svg = tmp_path / "logo.png"
    svg.write_bytes(SVG_WITH_SCRIPT)
    page.get_by_label("Logo image").set_input_files(str(svg))
    page.get_by_role("button", name="Upload logo").click()
    expect(page.get_by_role("alert")).to_contain_text("SVG and other markup are not accepted")
    logo = tmp_path / "acme.png"
    logo.write_bytes(png(120, 32, (124, 45, 18)))
    page.get_by_label("Logo image").set_input_files(str(logo))
    page.get_by_role("button", name="Upload logo").click()
    expect(page.get_by_role("status")).to_contain_text("Logo uploaded.")
    page.get_by_label("Primary colour (buttons and links)").fill("#7c2d12")
    page.get_by_label("Accent colour (the bar at the top)").fill("#b45309")
    page.get_by_label("Text on the sign-in page").fill("Sign in with your Acme account.")
    page.get_by_label("Footer text").fill("Acme Supplies Ltd · Support: +1 555 0100")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("heading", name="Preview (not saved yet)")).to_be_visible()
    button = page.locator(".preview-body .button")
    expect(button).to_have_css("background-color", "rgb(124, 45, 18)")
    screenshot(page, "orgadmin-branding.png")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Branding saved")
    visitor = browsing.page()
    visitor.goto(f"{live.url}/o/acme/login")
    expect(visitor.get_by_text("Sign in with your Acme account.")).to_be_visible()
    expect(visitor.locator("img.brand-logo")).to_have_js_property("naturalWidth", 120)
    screenshot(visitor, "orgadmin-branded-signin.png")


def test_sso_manager_sets_up_oidc_in_the_browser(browsing, live, make_org, make_user, tx,
                                                  oidc_provider):
    """OpenID Connect against node oidc-provider: the redirect URI the page shows is
    registered there, a test sign-in runs through the real provider, then switch on."""
    import secrets as random

    from portal.services import organizations, roles, users
    make_org("partner", "Partner Co")
    make_user("sam@partner.example", org="partner", display_name="Sam Setup")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "sam@partner.example"),
                             organizations.get(session, "partner"), "sso_manager",
                             {"sso_manager"})
    client_id, secret = f"partner-{random.token_hex(4)}", random.token_urlsafe(24)
    page = browsing.page()
    sign_in(page, live.url, email="sam@partner.example")
    page.goto(f"{live.url}/o/partner/admin/connections/new")
    page.get_by_label("Name (shown on the sign-in button)").fill("Partner OIDC")
    page.get_by_label("OpenID Connect").check()
    page.get_by_label("Issuer URL").fill(oidc_provider.issuer)
    page.get_by_label("Client ID").fill(client_id)
    page.get_by_label("Client secret").fill(secret)
    page.get_by_label("Claim that lists groups (optional)").fill("groups")
    page.get_by_label("Groups to roles, one per line").fill("staff = member")
    page.get_by_role("button", name="Create (switched off)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Partner OIDC")
    redirect_uri = page.locator("dd code").first.inner_text()
    assert redirect_uri.startswith(live.url) and "/sso/oidc/" in redirect_uri
    oidc_provider.register_client(redirect_uri, client_id=client_id, client_secret=secret)
    oidc_provider.put_account("olga@partner.example", groups=["staff"], name="Olga")
    expect(page.get_by_role("button", name="Switch on")).to_be_disabled()
    connection_url = page.url
    page.get_by_label("Email to test with").fill("olga@partner.example")
    page.get_by_role("button", name="Run a test sign-in").click()
    expect(page.get_by_role("heading", name="A real sign-in would succeed")).to_be_visible()
    screenshot(page, "orgadmin-sso-oidc-test.png")
    page.goto(connection_url)
    page.get_by_role("button", name="Switch on").click()
    expect(page.get_by_text("Single sign-on is on")).to_be_visible()


def test_owner_sets_who_may_sign_up_and_a_conditional_role(browsing, live, acme_with_owner,
                                                           tx):
    from portal.services import organizations, roles, users
    with tx() as session:  # Alice also buys, so she may put approvals into a role
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "alice@acme.test"),
                             organizations.get(session, "acme"), "buyer",
                             {"buyer", "member"})
    page = browsing.page()
    sign_in(page, live.url)
    page.goto(f"{live.url}/o/acme/admin/users")
    page.get_by_role("link", name="Sign-up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Who may sign up to Acme "
                                                              "Supplies")
    expect(page.get_by_label("Invitation only: people your admins invite")).to_be_checked()
    page.get_by_label("Open to your verified domains: anyone with an address at one of "
                      "them").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Sign-up setting saved.")
    expect(page.get_by_text("nobody can sign up until you verify a domain")).to_be_visible()
    screenshot(page, "orgadmin-registration.png")
    page.get_by_role("link", name="Roles").click()
    page.get_by_label("Name", exact=True).fill("junior_buyer")
    page.get_by_label("approve purchase_order purchase_order/approve").check()
    page.get_by_label("Amount limit for purchase_order/approve").fill("20000")
    page.locator("input[name^='mfa:purchase_order/approve@']").check()
    screenshot(page, "orgadmin-roles-conditional.png")
    page.get_by_role("button", name="Create role").click()
    expect(page.get_by_role("status")).to_contain_text("Role junior_buyer created.")
    expect(page.get_by_role("cell", name="amount at most 20000, with MFA")).to_be_visible()
