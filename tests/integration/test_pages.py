"""The portal home, organization pages and the operator page, as each kind of user sees them."""

from tests.conftest import sign_in


def test_home_lists_the_users_organizations_and_explains_empty_apps(client, make_org, make_user,
                                                                    tx):
    from portal.services import organizations, users
    from tests.conftest import CLI_CTX
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex", kind="vendor")
    make_org("initech", "Initech")
    user = make_user("alice@acme.test", org="acme")
    with tx() as session:
        from portal.models import MembershipSource, User
        users.add_membership(session, CLI_CTX, session.get(User, user.id),
                             organizations.get(session, "globex"), MembershipSource.INVITE)
    sign_in(client, "alice@acme.test")
    page = client.get("/").get_data(as_text=True)
    assert "Acme Supplies" in page and "Globex" in page and "Initech" not in page
    assert "No apps are available to you yet." in page


def test_user_without_organizations_sees_why(client, make_user):
    make_user("solo@nowhere.test")
    sign_in(client, "solo@nowhere.test")
    page = client.get("/").get_data(as_text=True)
    assert "You are not a member of any organization yet." in page


def test_organization_page_only_for_members(client, make_org, make_user):
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    make_org("globex", "Globex")
    make_user("alice@acme.test", org="acme")
    sign_in(client, "alice@acme.test")
    own = client.get("/o/acme/")
    assert own.status_code == 200 and "Your apps at Acme Supplies" in own.get_data(as_text=True)
    other, missing = client.get("/o/globex/"), client.get("/o/nothing/")
    assert other.status_code == missing.status_code == 404
    assert other.get_data(as_text=True).replace(other.headers["X-Request-ID"], "") == \
        missing.get_data(as_text=True).replace(missing.headers["X-Request-ID"], "")


def test_operator_page_lists_organizations_for_operators_only(client, app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    make_user("ops@trellis.test", operator=True)
    sign_in(client, "alice@acme.test")
    assert client.get("/admin/").status_code == 403
    operator = app.test_client()
    sign_in(operator, "ops@trellis.test")
    page = operator.get("/admin/").get_data(as_text=True)
    assert "Acme Supplies" in page and "<code>acme</code>" in page and "1 organization" in page


def test_operator_page_empty_state(app, make_user):
    client = app.test_client()
    make_user("ops@trellis.test", operator=True)
    sign_in(client, "ops@trellis.test")
    assert "No organizations yet." in client.get("/admin/").get_data(as_text=True)


def test_health_endpoints(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ok"
