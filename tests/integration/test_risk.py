"""Risk signals recorded per sign-in: a new device (signed cookie), a new network, failed
attempts just before; a sign-in whose signals cannot be read still works."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal import risk
from tests.conftest import audit_events, csrf_token, sign_in

WRONG = "not the password at all"


@pytest.fixture
def alice(make_org, make_user):
    make_org("acme", "Acme Supplies")
    return make_user("alice@acme.test", org="acme")


def last_risk(app) -> dict:
    return audit_events(app, "auth.risk")[-1].details


def sign_out(client) -> None:
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})


def test_first_sign_in_is_new_then_known(client, app, alice):
    assert sign_in(client, "alice@acme.test").status_code == 302
    first = last_risk(app)
    assert first["signals"]["new_device"] is True and first["signals"]["new_network"] is True
    assert first["score"] == 50 and first["decision"] == "step_up"
    assert first["method"] == ["pwd"] and first["missing"] == []
    assert "trellis_device" in client.get_cookie("trellis_device").key
    sign_out(client)
    sign_in(client, "alice@acme.test")
    again = last_risk(app)
    assert again["signals"] == {"new_device": False, "new_network": False,
                                "account_failures": 0, "ip_failures": 0, "ip_accounts": 0,
                                "common_password": False}
    assert again["thresholds"] == [50, 80]
    assert (again["score"], again["decision"]) == (0, "allow")


def test_a_new_browser_on_a_known_network(client, app, alice):
    sign_in(client, "alice@acme.test")
    other = app.test_client()  # no device cookie
    sign_in(other, "alice@acme.test")
    details = last_risk(app)
    assert details["signals"]["new_device"] is True
    assert details["signals"]["new_network"] is False
    assert details["score"] == 30 and details["decision"] == "allow"


def test_a_forged_device_cookie_counts_as_a_new_device(client, app, alice):
    sign_in(client, "alice@acme.test")
    sign_out(client)
    client.set_cookie("trellis_device", "forged.value", domain="localhost")
    sign_in(client, "alice@acme.test")
    assert last_risk(app)["signals"]["new_device"] is True


def test_failures_before_the_sign_in_raise_the_score(client, app, alice):
    sign_in(client, "alice@acme.test")
    sign_out(client)
    for _ in range(3):
        assert sign_in(client, "alice@acme.test", WRONG).status_code == 401
    sign_in(client, "alice@acme.test")
    details = last_risk(app)
    assert details["signals"]["account_failures"] == 3
    assert details["signals"]["ip_failures"] == 3
    assert details["score"] == 3 * 10 + 3 * 2


def test_missing_signals_degrade_without_breaking_the_sign_in(client, app, alice,
                                                              monkeypatch):
    # A statement the database refuses stands for any failed read of the signals.
    monkeypatch.setattr(risk, "_READ", sa.select(sa.text("no_such_column")))
    response = client.post("/login", data={
        "email": "alice@acme.test", "password": "correct horse battery",
        "csrf_token": csrf_token(client)}, environ_base={"REMOTE_ADDR": ""})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    details = last_risk(app)
    assert set(details["missing"]) == {"new_device", "new_network", "account_failures",
                                       "ip_failures", "ip_accounts", "unusual_hour"}
    assert details["signals"] == {"common_password": False} and details["score"] == 0
    assert details["thresholds"] == [50, 80]  # the platform's, as nothing could be read
    assert client.get("/").status_code == 200


def test_a_crashing_assessment_never_blocks_the_sign_in(client, app, alice, monkeypatch):
    monkeypatch.setattr(risk, "assess", lambda *a, **k: 1 / 0)
    assert sign_in(client, "alice@acme.test").headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert audit_events(app, "auth.risk") == []


@pytest.mark.parametrize(("ip", "network"), [
    ("203.0.113.77", "203.0.113.0/24"),
    ("2001:db8:1234:5678::1", "2001:db8:1234::/48"),
    ("not an address", None),
    ("", None),
])
def test_networks_are_prefixes(ip, network):
    assert risk.network_of(ip) == network


# ---- the risk policy


def _risk_policy(tx) -> None:
    from portal.services import mfa, organizations
    from tests.conftest import CLI_CTX
    with tx() as session:
        mfa.set_policy(session, CLI_CTX, organizations.get(session, "acme"), "risk")


def test_risk_policy_asks_for_the_code_only_when_the_sign_in_looks_risky(client, app, tx,
                                                                          alice):
    import pyotp

    from tests.integration.test_mfa import enroll, send_code
    _risk_policy(tx)
    sign_in(client, "alice@acme.test")  # new device and network, no factor yet: allowed
    assert client.get("/").status_code == 200
    secret, _ = enroll(client)
    sign_out(client)
    # Same browser, same network, no failures: low risk, no code asked.
    assert sign_in(client, "alice@acme.test").headers["Location"] == "/"
    with client.session_transaction() as session:
        assert session["assurance"] == 1
    sign_out(client)
    # A new browser (no device cookie) scores 30, plus three failures: 60, step-up.
    other = app.test_client()
    for _ in range(3):
        sign_in(other, "alice@acme.test", WRONG)
    assert sign_in(other, "alice@acme.test").headers["Location"] == "/login/mfa"
    assert last_risk(app)["decision"] == "step_up"
    response = send_code(other, pyotp.TOTP(secret).now())
    assert response.headers["Location"] == "/"


def test_risk_policy_stops_a_risky_sign_in_without_a_second_factor(client, app, tx, alice):
    _risk_policy(tx)
    for _ in range(3):
        sign_in(client, "alice@acme.test", WRONG)
    response = sign_in(client, "alice@acme.test")  # new device + network + 3 failures: 80
    assert response.status_code == 403
    assert "looks unusual" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302
    assert last_risk(app)["decision"] == "deny"
    assert audit_events(app, "auth.login")[-1].reason == "risk_denied"


# ---- thresholds per organization


def test_owners_set_their_organizations_risk_thresholds(client, app, tx, alice, make_user):
    from portal.services import organizations
    from tests.integration.test_mfa import grant
    _risk_policy(tx)
    grant(tx, "alice@acme.test", "org_owner")
    make_user("bob@acme.test", org="acme")
    sign_in(client, "alice@acme.test")
    page = client.get("/o/acme/admin/security").get_data(as_text=True)
    assert "Risk thresholds" in page and "In effect: step-up from 50, deny from 80" in page
    token = csrf_token(client, "/o/acme/admin/security")
    # A deny threshold not above the step-up one is refused, and nothing is saved.
    response = client.post("/o/acme/admin/security", data={
        "csrf_token": token, "policy": "all", "risk_step_up_at": "40", "risk_deny_at": "40"})
    assert response.status_code == 422
    assert "risk_deny_at" in response.get_data(as_text=True)
    response = client.post("/o/acme/admin/security", data={
        "csrf_token": token, "policy": "risk", "risk_step_up_at": "abc", "risk_deny_at": ""})
    assert response.status_code == 422
    with tx() as session:
        org = organizations.get(session, "acme")
        assert (org.mfa_policy.value, org.risk_step_up_at, org.risk_deny_at) == \
            ("risk", None, None)
    response = client.post("/o/acme/admin/security", data={
        "csrf_token": token, "policy": "risk", "risk_step_up_at": "30", "risk_deny_at": "50"})
    assert response.status_code == 302
    event = audit_events(app, "organization.risk_thresholds")[-1]
    assert event.details == {"before": [None, None], "after": [30, 50], "defaults": [50, 80]}
    assert event.actor == "alice@acme.test"
    assert "In effect: step-up from 30, deny from 50" in \
        client.get("/o/acme/admin/security").get_data(as_text=True)
    # A member's first sign-in (new device and network: 50) is now denied, not allowed.
    response = sign_in(app.test_client(), "bob@acme.test")
    assert response.status_code == 403
    details = last_risk(app)
    assert (details["score"], details["decision"], details["thresholds"]) == \
        (50, "deny", [30, 50])


def test_the_strictest_organization_thresholds_apply(app, tx, alice, make_org):
    from portal.models import Membership
    from portal.services import mfa, organizations
    from tests.conftest import CLI_CTX
    make_org("globex", "Globex")
    with tx() as session:
        acme, globex = organizations.get(session, "acme"), organizations.get(session, "globex")
        mfa.set_risk_thresholds(session, CLI_CTX, acme, "70", "101", (50, 80))
        mfa.set_risk_thresholds(session, CLI_CTX, globex, "", "60", (50, 80))
    client = app.test_client()
    sign_in(client, "alice@acme.test")
    assert last_risk(app)["thresholds"] == [70, 101]  # acme's own: lenient
    with tx() as session:
        session.add(Membership(user_id=alice.id, organization_id=globex.id))
    sign_out(client)
    sign_in(client, "alice@acme.test")
    assert last_risk(app)["thresholds"] == [50, 60]  # globex: the default step-up, deny 60


# ---- who sees the scores


def test_auditors_see_members_sign_in_risk_read_only(app, tx, alice, make_org, make_user):
    from portal.services import organizations
    from tests.integration.test_mfa import grant
    make_org("globex", "Globex Logistics")
    make_user("audrey@acme.test", org="acme")
    grant(tx, "audrey@acme.test", "auditor")
    make_user("gus@globex.test", org="globex")
    grant(tx, "gus@globex.test", "auditor", "globex")
    make_user("carol@globex.test", org="globex")
    member = app.test_client()
    for _ in range(2):
        sign_in(member, "alice@acme.test", WRONG)
    assert sign_in(member, "alice@acme.test").status_code == 302
    alice_risk = last_risk(app)
    assert sign_in(app.test_client(), "carol@globex.test").status_code == 302

    auditor = app.test_client()
    assert sign_in(auditor, "audrey@acme.test").status_code == 302
    answer = auditor.get("/o/acme/admin/security")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert 'href="/o/acme/admin/security"' in page  # in the auditor's navigation
    row = page.split("alice@acme.test", 1)[1].split("</tr>", 1)[0]
    assert f"<td>{alice_risk['score']}</td><td>{alice_risk['decision']}</td>" in row
    assert "new_device" in row and "new_network" in row and "failures" in row
    assert "carol@globex.test" not in page  # another organization's member
    # Read-only: the settings in effect, no form to change them.
    assert "Settings in effect" in page and "In effect: step-up from 50, deny from 80" in page
    assert 'name="policy"' not in page and 'name="risk_deny_at"' not in page
    assert "/o/acme/admin/security\" class=\"stacked\"" not in page
    token = csrf_token(auditor, "/o/acme/admin/security")
    refused = auditor.post("/o/acme/admin/security", data={
        "csrf_token": token, "policy": "all", "risk_step_up_at": "10", "risk_deny_at": "20"})
    assert refused.status_code == 403
    with tx() as session:
        org = organizations.get(session, "acme")
        assert (org.mfa_policy.value, org.risk_step_up_at, org.risk_deny_at) == \
            ("off", None, None)
    assert not audit_events(app, "organization.risk_thresholds")

    # An auditor of another organization sees only that organization's sign-ins.
    other = app.test_client()
    assert sign_in(other, "gus@globex.test").status_code == 302
    assert other.get("/o/acme/admin/security").status_code == 404
    theirs = other.get("/o/globex/admin/security").get_data(as_text=True)
    assert "carol@globex.test" in theirs and "alice@acme.test" not in theirs
    assert other.post("/o/acme/admin/security", data={
        "csrf_token": csrf_token(other, "/o/globex/admin/security"),
        "policy": "all"}).status_code == 404
    # A member without an admin role sees no scores.
    assert member.get("/o/acme/admin/security").status_code == 403
