"""The consent ledger for apps: current consents and the change feed, per organization."""

import pytest

from portal.services import api_clients, consent
from tests.conftest import CLI_CTX, csrf_token, sign_in


@pytest.fixture
def crm(app, tx, make_org, make_user):
    make_org("acme")
    make_org("globex")
    alice = make_user("alice@acme.test", org="acme")
    bob = make_user("bob@globex.test", org="globex")
    with tx() as session:
        _, key = api_clients.create(session, CLI_CTX, "Acme CRM", ["acme"])
    return {"key": key, "alice": alice.id, "bob": bob.id}


def _get(client, path, key):
    return client.get(path, headers={"Authorization": f"Bearer {key}"})


def _choose(app, email, purposes):
    client = app.test_client()
    sign_in(client, email)
    client.post("/account/consents", data={"purpose": purposes,
                                           "csrf_token": csrf_token(client, "/account/")})


def test_a_crm_reads_current_consents_and_follows_the_changes(app, client, crm):
    _choose(app, "alice@acme.test", ["product_news"])
    _choose(app, "bob@globex.test", ["product_news"])  # another organization's member
    state = _get(client, f"/api/v1/users/{crm['alice']}/consents", crm["key"]).get_json()
    by_purpose = {c["purpose"]: c for c in state["consents"]}
    assert by_purpose["product_news"]["status"] == "granted"
    assert by_purpose["product_news"]["version"] == "1"
    assert by_purpose["usage_analytics"]["status"] == "never"
    assert by_purpose["terms"]["status"] == "never"  # created by an operator, no sign-up

    feed = _get(client, "/api/v1/consents/changes?since=0", crm["key"]).get_json()
    assert [(c["user_id"], c["purpose"], c["status"]) for c in feed["changes"]] == \
        [(crm["alice"], "product_news", "granted")]
    _choose(app, "alice@acme.test", [])  # withdrawn: the API says so
    after = _get(client, f"/api/v1/consents/changes?since={feed['next']}",
                 crm["key"]).get_json()
    assert [c["status"] for c in after["changes"]] == ["withdrawn"]
    assert after["more"] is False
    state = _get(client, f"/api/v1/users/{crm['alice']}/consents", crm["key"]).get_json()
    assert {c["purpose"]: c["status"] for c in state["consents"]}["product_news"] == \
        "withdrawn"


def test_users_outside_the_apps_organizations_are_not_found(app, client, crm):
    for user_id in (crm["bob"], 999999):
        response = _get(client, f"/api/v1/users/{user_id}/consents", crm["key"])
        assert response.status_code == 404 and "bob" not in response.get_data(as_text=True)
    assert _get(client, f"/api/v1/users/{crm['alice']}/consents", "trk_wrong").status_code \
        == 401
    bad = _get(client, "/api/v1/consents/changes?since=abc", crm["key"])
    assert bad.status_code == 422
    assert _get(client, "/api/v1/consents/changes?limit=0", crm["key"]).status_code == 422


def test_the_feed_pages(app, client, crm, tx):
    with tx() as session:
        for n in range(5):
            consent.record(session, user_id=crm["alice"], purpose="product_news",
                           version="1", granted=n % 2 == 0, method="test", ip="", user_agent="",
                           key="k")
    first = _get(client, "/api/v1/consents/changes?limit=3", crm["key"]).get_json()
    assert len(first["changes"]) == 3 and first["more"] is True
    rest = _get(client, f"/api/v1/consents/changes?since={first['next']}&limit=3",
                crm["key"]).get_json()
    assert len(rest["changes"]) == 2 and rest["more"] is False


def test_operators_see_how_many_people_grant_each_purpose(app, client, crm, make_user):
    _choose(app, "alice@acme.test", ["product_news"])
    _choose(app, "bob@globex.test", ["product_news", "usage_analytics"])
    _choose(app, "bob@globex.test", ["usage_analytics"])
    make_user("ops@trellis.test", operator=True)
    sign_in(client, "ops@trellis.test")
    page = client.get("/admin/consents").get_data(as_text=True)
    rows = {key: cells for key, cells in (
        (r.split("<code>")[1].split("</code>")[0],
         [c.split("<")[0] for c in r.split("<td>")[3:]])
        for r in page.split("<tr>")[2:])}
    assert rows["product_news"] == ["1", "1", "3"]
    assert rows["usage_analytics"] == ["1", "0", "1"]
    assert rows["terms"] == ["0", "0", "0"]
    member = app.test_client()
    sign_in(member, "alice@acme.test")
    assert member.get("/admin/consents").status_code == 403


def test_an_app_that_relied_on_a_consent_sees_it_withdrawn(app, client, crm):
    """An app signed in with its own access token (client credentials, ``authz``) reads the
    consent it relied on: once the person withdraws it, the API says withdrawn, with when."""
    from tests.integration.provider_helpers import backend_token
    token = backend_token(app, client, "Newsletter", "authz", ["acme"])
    _choose(app, "alice@acme.test", ["product_news"])
    path = f"/api/v1/users/{crm['alice']}/consents"
    granted = {c["purpose"]: c for c in _get(client, path, token).get_json()["consents"]}
    assert granted["product_news"]["status"] == "granted"
    _choose(app, "alice@acme.test", [])
    answer = _get(client, path, token)
    assert answer.status_code == 200
    withdrawn = {c["purpose"]: c for c in answer.get_json()["consents"]}
    assert withdrawn["product_news"]["status"] == "withdrawn"
    assert withdrawn["product_news"]["version"] == "1"
    assert withdrawn["product_news"]["recorded_at"] > granted["product_news"]["recorded_at"]
    # Not for people outside the app's organizations.
    assert _get(client, f"/api/v1/users/{crm['bob']}/consents", token).status_code == 404
