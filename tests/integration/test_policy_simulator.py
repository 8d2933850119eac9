"""The policy simulator pages: operators in any organization, organization admins for their
own members only."""

import html

from tests.conftest import audit_events, csrf_token
from tests.integration.test_org_admin import as_user, grant, two_orgs  # noqa: F401


def simulate(client, path, **data):
    return client.post(path, data={"csrf_token": csrf_token(client, path), **data})


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_an_org_admin_sees_the_decision_the_rule_and_the_role_chain(app, tx, two_orgs):  # noqa: F811
    client = as_user(app, "alice@acme.test")
    page = client.get("/o/acme/admin/policy/simulate")
    assert page.status_code == 200 and "Policy simulator" in text(page)
    events = len(audit_events(app))
    allowed = simulate(client, "/o/acme/admin/policy/simulate", user="uma@acme.test",
                       object_type="member", action="manage", assurance="1")
    body = text(allowed)
    assert allowed.status_code == 200 and "<h2 id=\"sim-result-title\">Allowed</h2>" in body
    assert "user_manager, *, member, manage, True, allow" in body
    assert "(kinds/partner.csv:" in body
    assert "uma@acme.test → user_manager" in body
    denied = text(simulate(client, "/o/acme/admin/policy/simulate", user="max@acme.test",
                           object_type="member", action="manage"))
    assert "Denied" in denied and "no rule allows it" in denied
    assert len(audit_events(app)) == events  # a simulation changes nothing


def test_an_org_admin_cannot_simulate_another_organizations_users(app, two_orgs):  # noqa: F811
    client = as_user(app, "alice@acme.test")
    for who in ("carol@globex.test", str(two_orgs["carol@globex.test"]), "nobody@acme.test"):
        response = simulate(client, "/o/acme/admin/policy/simulate", user=who,
                            object_type="member", action="read", org="globex")
        body = text(response)
        assert response.status_code == 422
        assert "user: is not a member of Acme Supplies" in body
        assert "carol" not in body.replace(who, "") and "Globex" not in body
    # The organization is fixed by the URL, whatever the form says.
    own = text(simulate(client, "/o/acme/admin/policy/simulate", user="max@acme.test",
                        object_type="organization", action="read", org="globex"))
    assert "in acme" in own and "Allowed" in own
    assert client.get("/o/globex/admin/policy/simulate").status_code == 404


def test_members_without_an_admin_role_may_not_simulate(app, two_orgs):  # noqa: F811
    client = as_user(app, "max@acme.test")
    assert client.get("/o/acme/admin/policy/simulate").status_code == 403


def test_operators_simulate_in_any_organization_with_attributes(app, tx, two_orgs):  # noqa: F811
    grant(tx, "carol@globex.test", "globex", "buyer")
    client = as_user(app, "oscar@trellis.test")
    page = client.get("/admin/policy/simulate")
    assert page.status_code == 200 and 'value="globex"' in text(page)
    body = text(simulate(client, "/admin/policy/simulate", user="carol@globex.test",
                         org="globex", object_type="purchase_order",
                         object="owner_org=globex\namount=900", action="approve",
                         assurance="1"))
    assert "Denied" in body and "denied by rule" in body
    assert "Overridden by the deny: <code>buyer, *, purchase_order, approve" in body
    with_mfa = text(simulate(client, "/admin/policy/simulate", user="carol@globex.test",
                             org="globex", object_type="purchase_order",
                             object="owner_org=globex\namount=900", action="approve",
                             assurance="2"))
    assert "Allowed" in with_mfa
    bad = simulate(client, "/admin/policy/simulate", user="carol@globex.test", org="globex",
                   object_type="purchase_order", object="amount", action="approve")
    assert bad.status_code == 422 and "object: 'amount' is not name=value" in text(bad)
    unknown = simulate(client, "/admin/policy/simulate", user="carol@globex.test",
                       org="initech", object_type="x", action="read")
    assert unknown.status_code == 422 and "initech" in text(unknown)
    assert as_user(app, "alice@acme.test").get("/admin/policy/simulate").status_code == 403
