"""The risk signals beyond devices, networks and failure counts: many accounts failing from
one IP (credential stuffing, counted in the throttle store: in process or Redis), a common
password, an unusual hour, impossible travel with a GeoIP database; each degrades when it
cannot be read."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal import create_app, risk
from portal.db import utcnow
from portal.models import KnownSignal, User
from tests.conftest import PASSWORD, audit_events, csrf_token, services_of
from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)

PARIS, SYDNEY, NOWHERE = "198.51.100.7", "203.0.113.9", "192.0.2.1"


def post_sign_in(client, email: str, password: str = PASSWORD, ip: str = "127.0.0.1"):
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_token(client)},
                       environ_base={"REMOTE_ADDR": ip})


def last_risk(app) -> dict:
    return audit_events(app, "auth.risk")[-1].details


def sign_out(client) -> None:
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})


@pytest.fixture(params=["memory", "redis"])
def stuffing_app(settings, request):
    """The app with its throttle in process, or in Redis (skipped without REDIS_URL); the
    request-rate limit is raised so that the failure throttle is what answers."""
    extra = {"LOGIN_RATE_LIMIT": "100000/minute"}
    if request.param == "redis":
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("Redis test skipped: REDIS_URL is not set")
        extra.update(REDIS_URL=url, THROTTLE_PREFIX=f"test:{uuid.uuid4().hex}:")
    return create_app({**settings, **extra})


def test_credential_stuffing_from_one_ip_is_throttled_and_flagged(stuffing_app):
    from portal.services import users
    from tests.conftest import CLI_CTX
    app = stuffing_app
    with services_of(app).db.transaction() as session:
        users.create(session, CLI_CTX, services_of(app).passwords, email="bob@acme.test",
                     password=PASSWORD, display_name="", org_slug=None, operator=False)
    # The throttle's clock stands still mid-window: the run never straddles two windows.
    now = (time.time() // risk.STUFFING_WINDOW_SECONDS + 0.5) * risk.STUFFING_WINDOW_SECONDS
    services_of(app).throttle.clock = lambda: now
    attacker, statuses = app.test_client(), []
    token = csrf_token(attacker)
    for n in range(1000):
        response = attacker.post("/login", data={
            "email": f"user{n}@victims.test", "password": "Summer2026!pass",
            "csrf_token": token}, environ_base={"REMOTE_ADDR": "203.0.113.66"})
        statuses.append(response.status_code)
    # Throttled: only the first attempts were checked at all; the rest were refused.
    assert statuses.count(401) <= app.config["LOGIN_IP_FREE_FAILURES"]
    assert statuses.count(429) >= 980
    assert set(statuses) <= {401, 429}
    checked = [e for e in audit_events(app, "auth.login") if e.outcome == "failure"]
    assert len(checked) == statuses.count(401)
    # Flagged once, when the 20th distinct account failed; every attempt was counted.
    flagged = audit_events(app, "auth.credential_stuffing")
    assert len(flagged) == 1
    assert flagged[0].target == "ip:203.0.113.66" and flagged[0].reason == "many_accounts"
    assert flagged[0].details["accounts"] == app.config["RISK_IP_ACCOUNTS"]
    throttle = services_of(app).throttle
    assert risk.accounts_failing_from(throttle, "203.0.113.66") == 1000
    # The IP stays locked for the longest lockout, even for a real account's password.
    assert post_sign_in(app.test_client(), "bob@acme.test", ip="203.0.113.66"
                        ).status_code == 429
    # Another IP is untouched, and its sign-in does not carry the flag.
    elsewhere = app.test_client()
    assert post_sign_in(elsewhere, "bob@acme.test", ip="198.51.100.20").status_code == 302
    assert last_risk(app)["signals"]["ip_accounts"] == 0
    # Once the lock has run out, a sign-in from the flagged IP scores the signal.
    throttle.store.reset(throttle.ip_key("203.0.113.66"))
    assert post_sign_in(app.test_client(), "bob@acme.test", ip="203.0.113.66"
                        ).status_code == 302
    details = last_risk(app)
    assert details["signals"]["ip_accounts"] == 1001  # bob's refused attempt counted too
    assert details["score"] == 100  # 40 + new device and network + the IP's failures
    assert details["decision"] == "deny"


def test_a_throttle_store_that_is_down_loses_only_the_count(app, make_user, monkeypatch):
    make_user("bob@acme.test")
    store = services_of(app).throttle.store

    def down(*args, **kwargs):
        raise ConnectionError("redis is down")
    monkeypatch.setattr(store, "add_member", down)
    monkeypatch.setattr(store, "members", down)
    client = app.test_client()
    assert post_sign_in(client, "nobody@acme.test", "wrong password here").status_code == 401
    assert post_sign_in(client, "bob@acme.test").status_code == 302
    assert "ip_accounts" in last_risk(app)["missing"]


def test_a_common_password_is_a_signal_and_never_stored(app, make_user, tx):
    make_user("carol@acme.test", password="password1234")
    client = app.test_client()
    assert post_sign_in(client, "carol@acme.test", "password1234").status_code == 302
    details = last_risk(app)
    assert details["signals"]["common_password"] is True
    assert details["score"] == 30 + 20 + risk.WEIGHTS["common_password"]
    assert details["decision"] == "step_up"
    for event in audit_events(app):
        assert "password1234" not in str(event.details)
    sign_out(client)
    make_user("dave@acme.test")
    post_sign_in(client, "dave@acme.test")
    assert last_risk(app)["signals"]["common_password"] is False


def _history(tx, email: str, hour: int, days: int) -> None:
    with tx() as session:
        user_id = session.scalar(sa.select(User.id).where(User.email == email))
        session.add(KnownSignal(user_id=user_id, kind="hour", value=str(hour), hits=days,
                                first_seen_at=utcnow() - timedelta(days=60),
                                last_seen_at=utcnow() - timedelta(days=2)))


def test_an_unusual_hour_counts_only_after_enough_history(app, make_user, tx):
    make_user("erin@acme.test")
    other_side = (utcnow().hour + 12) % 24
    _history(tx, "erin@acme.test", other_side, risk.MIN_HOUR_HISTORY - 1)
    client = app.test_client()
    post_sign_in(client, "erin@acme.test")
    assert "unusual_hour" not in last_risk(app)["signals"]  # too little history yet
    with tx() as session:
        session.execute(sa.update(KnownSignal).where(KnownSignal.kind == "hour",
                                                     KnownSignal.value == str(other_side))
                        .values(hits=risk.MIN_HOUR_HISTORY))
        session.execute(sa.delete(KnownSignal).where(KnownSignal.kind == "hour",
                                                     KnownSignal.value != str(other_side)))
    sign_out(client)
    post_sign_in(client, "erin@acme.test")
    details = last_risk(app)
    assert details["signals"]["unusual_hour"] is True
    assert details["score"] == risk.WEIGHTS["unusual_hour"]  # known device and network
    # This sign-in's hour is now part of the history: the next one is not unusual.
    sign_out(client)
    post_sign_in(client, "erin@acme.test")
    assert last_risk(app)["signals"]["unusual_hour"] is False


def _geoip_file(path) -> str:
    import netaddr
    from mmdb_writer import MmdbF64, MMDBWriter
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    for network, (lat, lon) in (("198.51.100.0/24", (48.86, 2.35)),
                                ("203.0.113.0/24", (-33.87, 151.21))):
        writer.insert_network(netaddr.IPSet([network]), {
            "location": {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon)}})
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture
def geo_app(settings, tmp_path):
    return create_app({**settings, "GEOIP_DATABASE": _geoip_file(tmp_path / "city.mmdb")})


def test_impossible_travel_with_a_geoip_database(geo_app, tx):
    from portal.services import users
    from tests.conftest import CLI_CTX
    app = geo_app
    with services_of(app).db.transaction() as session:
        users.create(session, CLI_CTX, services_of(app).passwords, email="frank@acme.test",
                     password=PASSWORD, display_name="", org_slug=None, operator=False)
    client = app.test_client()
    post_sign_in(client, "frank@acme.test", ip=PARIS)
    first = last_risk(app)
    assert "impossible_travel" not in first["signals"] and first["missing"] == []
    sign_out(client)
    post_sign_in(client, "frank@acme.test", ip=SYDNEY)  # minutes later, 17,000 km away
    details = last_risk(app)
    assert details["signals"]["impossible_travel"] is True
    assert details["score"] == risk.WEIGHTS["impossible_travel"] + 20  # plus the network
    # Days later, the same trip is possible.
    with services_of(app).db.transaction() as session:
        session.execute(sa.update(KnownSignal).where(KnownSignal.kind == "place")
                        .values(last_seen_at=utcnow() - timedelta(days=2)))
    sign_out(client)
    post_sign_in(client, "frank@acme.test", ip=PARIS)
    assert last_risk(app)["signals"]["impossible_travel"] is False
    # An address the database does not know leaves the signal missing.
    sign_out(client)
    assert post_sign_in(client, "frank@acme.test", ip=NOWHERE).status_code == 302
    assert "impossible_travel" in last_risk(app)["missing"]


def test_a_missing_geoip_file_degrades(settings, tmp_path):
    from portal.services import users
    from tests.conftest import CLI_CTX
    app = create_app({**settings, "GEOIP_DATABASE": str(tmp_path / "absent.mmdb")})
    with services_of(app).db.transaction() as session:
        users.create(session, CLI_CTX, services_of(app).passwords, email="gina@acme.test",
                     password=PASSWORD, display_name="", org_slug=None, operator=False)
    client = app.test_client()
    response = post_sign_in(client, "gina@acme.test", ip=PARIS)
    assert response.status_code == 302 and client.get("/").status_code == 200
    assert "impossible_travel" in last_risk(app)["missing"]


def test_operators_set_risk_thresholds_from_the_command_line(trellis, app, make_org):  # noqa: F811
    from portal.services import organizations
    make_org("acme", "Acme Supplies")
    assert trellis("org", "risk-thresholds", "acme", "--step-up", "40", "--deny", "101"
                   ).output == "risk thresholds of acme: step-up from 40, deny from 101\n"
    assert "risk_deny_at" in trellis("org", "risk-thresholds", "acme", "--step-up", "90",
                                     "--deny", "60", expect=1).output
    with services_of(app).db.sessions() as session:
        org = organizations.get(session, "acme")
        assert (org.risk_step_up_at, org.risk_deny_at) == (40, 101)
    assert trellis("org", "risk-thresholds", "acme").output == \
        "risk thresholds of acme: step-up from 50, deny from 80\n"
    assert [e.details["after"] for e in audit_events(app, "organization.risk_thresholds")] \
        == [[40, 101], [None, None]]


def test_a_sign_in_completed_at_the_code_step_moves_the_place(geo_app):
    from portal.services import mfa, users
    from tests.conftest import CLI_CTX
    from tests.integration.test_mfa import previous_code
    app = geo_app
    s = services_of(app)
    with s.db.transaction() as session:
        user = users.create(session, CLI_CTX, s.passwords, email="hana@acme.test",
                            password=PASSWORD, display_name="", org_slug=None,
                            operator=False)
        secret = mfa.begin_totp(session, s.secrets, user).secret
        mfa.confirm_totp(session, CLI_CTX, s.secrets, s.passwords, user,
                         previous_code(secret))
    client = app.test_client()
    assert post_sign_in(client, "hana@acme.test", ip=PARIS).headers["Location"] == \
        "/login/mfa"
    token = csrf_token(client, "/login/mfa")
    import pyotp
    response = client.post("/login/mfa", data={"code": pyotp.TOTP(secret).now(),
                                               "csrf_token": token},
                           environ_base={"REMOTE_ADDR": PARIS})
    assert response.status_code == 302
    with s.db.sessions() as session:
        places = session.scalars(sa.select(KnownSignal.value).where(
            KnownSignal.kind == "place")).all()
    assert places == ["48.86,2.35"]
    sign_out(client)
    post_sign_in(client, "hana@acme.test", ip=SYDNEY)
    assert last_risk(app)["signals"]["impossible_travel"] is True
