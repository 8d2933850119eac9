"""The operators' apps page: lists registered apps and stops or resumes them; nobody else
reaches it."""

import sqlalchemy as sa

from portal.models import OAuthApp
from tests.conftest import audit_events, csrf_token, services_of, sign_in
from tests.integration.provider_helpers import register


def test_operator_lists_and_disables_an_app(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("ops@trellis.test", operator=True)
    registered = register(app, name="Supplier Portal")
    operator = app.test_client()
    sign_in(operator, "ops@trellis.test")
    page = operator.get("/admin/apps").get_data(as_text=True)
    assert "Supplier Portal" in page and registered.client_id in page and "acme" in page
    assert registered.secret not in page
    token = csrf_token(operator, "/admin/apps")
    answer = operator.post(f"/admin/apps/{registered.client_id}/enabled",
                           data={"csrf_token": token, "enabled": "0"})
    assert answer.status_code == 302
    assert "Supplier Portal is disabled." in operator.get("/admin/apps").get_data(as_text=True)
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(OAuthApp.enabled)) is False
    assert [e.actor for e in audit_events(app, "app.disable")] == ["ops@trellis.test"]


def test_members_and_strangers_do_not_reach_the_apps_page(app, client, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    registered = register(app)
    assert client.get("/admin/apps").status_code == 302  # anonymous: sign in first
    sign_in(client, "alice@acme.test")
    assert client.get("/admin/apps").status_code == 403
    token = csrf_token(client, "/account/apps")
    denied = client.post(f"/admin/apps/{registered.client_id}/enabled",
                         data={"csrf_token": token, "enabled": "0"})
    assert denied.status_code == 403
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(OAuthApp.enabled)) is True


def test_forged_disable_without_csrf_token_is_refused(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("ops@trellis.test", operator=True)
    registered = register(app)
    operator = app.test_client()
    sign_in(operator, "ops@trellis.test")
    answer = operator.post(f"/admin/apps/{registered.client_id}/enabled", data={"enabled": "0"})
    assert answer.status_code == 400
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(OAuthApp.enabled)) is True
