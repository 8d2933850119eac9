"""Risk signals recorded per sign-in: a new device (signed cookie), a new network, failed
attempts just before; a sign-in whose signals cannot be read still works."""

from __future__ import annotations

import pytest

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
                                "account_failures": 0, "ip_failures": 0}
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
    def broken(*args, **kwargs):
        raise RuntimeError("the audit table is unreadable")
    monkeypatch.setattr(risk, "_failures", broken)
    response = client.post("/login", data={
        "email": "alice@acme.test", "password": "correct horse battery",
        "csrf_token": csrf_token(client)}, environ_base={"REMOTE_ADDR": ""})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    details = last_risk(app)
    assert set(details["missing"]) == {"new_network", "account_failures", "ip_failures"}
    assert details["signals"] == {"new_device": True}
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
