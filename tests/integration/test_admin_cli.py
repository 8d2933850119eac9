"""Operator commands for roles, organization status and branding, and API clients."""

from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)


def test_roles_by_hand(trellis, app):  # noqa: F811
    trellis("org", "create", "acme", "--name", "Acme")
    trellis("user", "create", "a@acme.test", "--org", "acme", "--no-password")
    assert trellis("role", "grant", "a@acme.test", "acme", "buyer").output == \
        "a@acme.test now holds buyer in acme\n"
    assert "already holds" in trellis("role", "grant", "a@acme.test", "acme", "buyer").output
    unknown = trellis("role", "grant", "a@acme.test", "acme", "wizard", expect=1)
    assert unknown.stderr == "error: No policy defines the role 'wizard'.\n"
    assert trellis("role", "list", "acme").output == "a@acme.test\tbuyer\tmanual\n"
    trellis("role", "revoke", "a@acme.test", "acme", "buyer")
    again = trellis("role", "revoke", "a@acme.test", "acme", "buyer", expect=1)
    assert again.stderr == "error: a@acme.test holds no hand-granted buyer in acme.\n"
    events = trellis("audit", "export").output
    assert events.count('"role.grant"') == 1 and events.count('"role.revoke"') == 1


def test_suspended_organization_denies_its_members(trellis, app, make_user):  # noqa: F811
    from tests.conftest import services_of, sign_in
    trellis("org", "create", "acme", "--name", "Acme")
    make_user("alice@acme.test", org="acme")
    client = app.test_client()
    sign_in(client, "alice@acme.test")
    assert client.get("/o/acme/").status_code == 200
    assert trellis("org", "suspend", "acme", "--reason", "contract ended").output == \
        "organization acme is suspended\n"
    services_of(app).policy.invalidate("acme")  # the CLI ran in another app instance
    suspended = client.get("/o/acme/")
    assert suspended.status_code == 403
    assert "This organization is suspended." in suspended.get_data(as_text=True)
    trellis("org", "resume", "acme")
    assert client.get("/o/acme/").status_code == 200


def test_branding_and_api_clients(trellis):  # noqa: F811
    trellis("org", "create", "acme", "--name", "Acme")
    assert trellis("org", "branding", "acme", "--primary-color", "#123ABC").output == \
        "branding of acme: primary_color=#123abc\n"
    bad = trellis("org", "branding", "acme", "--logo-url", "javascript:x", expect=1)
    assert bad.stderr == "error: The logo must be an https:// URL of an image.\n"
    trellis("api-client", "create", "Portal", "--org", "acme")
    listed = trellis("api-client", "list").output
    assert listed.startswith("1\ttrk_") and "\tenabled\tacme\tPortal" in listed
    assert trellis("api-client", "disable", "1").output == "API client 1 disabled\n"
    assert "\tdisabled\t" in trellis("api-client", "list").output
