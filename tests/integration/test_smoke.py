from tests.conftest import sign_in


def test_demo_style_sign_in_reaches_home(client, make_org, make_user):
    make_org("acme", "Acme Supplies", branding={"primary_color": "#0b6e4f"})
    make_user("alice@acme.test", org="acme", display_name="Alice")
    response = sign_in(client, "alice@acme.test")
    assert response.status_code == 302
    home = client.get("/")
    assert "Acme Supplies" in home.get_data(as_text=True)
