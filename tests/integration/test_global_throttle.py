"""The global sign-in throttle over HTTP: credential stuffing spread over many IPs and many
accounts engages it, people who signed in before from their network still get in, newcomers
are told to wait (Retry-After), the episode is audited once when it starts and once when it
lifts, and operators see it with ``trellis throttle status``. In process and in Redis."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from portal import create_app
from portal.cli import throttle_status
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of

ALICE_HOME, ALICE_CAFE, NEWCOMER = "192.0.2.10", "192.0.2.44", "203.0.113.200"
WINDOW = 60


@pytest.fixture(params=["memory", "redis"])
def global_app(settings, request):
    """Global throttle at 40 failures a minute; the request-rate limit is raised so that the
    throttles are what answer."""
    extra = {"LOGIN_RATE_LIMIT": "100000/minute", "GLOBAL_FAILURES": 40,
             "GLOBAL_WINDOW_SECONDS": WINDOW}
    if request.param == "redis":
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("Redis test skipped: REDIS_URL is not set")
        extra.update(REDIS_URL=url, THROTTLE_PREFIX=f"test:{uuid.uuid4().hex}:")
    app = create_app({**settings, **extra})
    from portal.services import users
    with services_of(app).db.transaction() as session:
        for email in ("alice@acme.test", "bob@acme.test"):
            users.create(session, CLI_CTX, services_of(app).passwords, email=email,
                         password=PASSWORD, display_name="", org_slug=None, operator=False)
    return app


def post_sign_in(client, email: str, ip: str, password: str = PASSWORD):
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_token(client)},
                       environ_base={"REMOTE_ADDR": ip})


def forgot(client, email: str, ip: str):
    return client.post("/password/forgot", data={
        "email": email, "csrf_token": csrf_token(client, "/password/forgot")},
        environ_base={"REMOTE_ADDR": ip})


def status(app) -> str:
    result = app.test_cli_runner().invoke(throttle_status, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_distributed_stuffing_slows_newcomers_not_people_with_a_clean_record(global_app):
    app = global_app
    clock = [(time.time() // WINDOW + 0.5) * WINDOW]  # mid-window, standing still
    services_of(app).throttle.clock = lambda: clock[0]
    assert post_sign_in(app.test_client(), "alice@acme.test", ALICE_HOME).status_code == 302
    assert "not engaged" in status(app)

    # 25 IPs x 4 accounts, one try each: no IP and no account reaches its own lockout.
    attacker, statuses = app.test_client(), []
    token = csrf_token(attacker)
    for i in range(25):
        for j in range(4):
            response = attacker.post("/login", data={
                "email": f"victim{i}.{j}@acme.test", "password": "Winter2026!",
                "csrf_token": token}, environ_base={"REMOTE_ADDR": f"198.51.100.{i * 4 + j}"})
            statuses.append(response.status_code)
    assert statuses[:40] == [401] * 40 and statuses[40:] == [429] * 60

    # A newcomer with the right password is told why and how long to wait.
    refused = post_sign_in(app.test_client(), "bob@acme.test", NEWCOMER)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW + 1
    assert "networks not seen before" in refused.get_data(as_text=True)
    # ... and cannot have reset mail sent either.
    reset = forgot(app.test_client(), "bob@acme.test", NEWCOMER)
    assert reset.status_code == 429 and "Retry-After" in reset.headers

    # Alice signed in from her network before: she gets in, from another address on it too.
    assert post_sign_in(app.test_client(), "alice@acme.test", ALICE_CAFE).status_code == 302
    assert forgot(app.test_client(), "alice@acme.test", ALICE_CAFE).status_code == 200

    shown = status(app)
    assert "ENGAGED" in shown and "lifts at" in shown
    engaged = audit_events(app, "throttle.global_engaged")
    assert len(engaged) == 1 and engaged[0].details["window_failures"] == 40
    assert audit_events(app, "throttle.global_lifted") == []

    # The attack stops; a window later the throttle lifts, and that is audited once.
    clock[0] += WINDOW + 1
    assert post_sign_in(app.test_client(), "bob@acme.test", NEWCOMER).status_code == 302
    assert post_sign_in(app.test_client(), "carol@acme.test", "203.0.113.201",
                        "wrong").status_code == 401
    assert "not engaged" in status(app)
    assert len(audit_events(app, "throttle.global_engaged")) == 1
    lifted = audit_events(app, "throttle.global_lifted")
    assert len(lifted) == 1 and lifted[0].details["until"] == engaged[0].details["until"]


def test_the_code_step_is_throttled_too_on_an_address_that_keeps_failing(global_app):
    """Alice's password is right from a shared address (a carrier NAT), which vouches for
    its network; bots behind the same address then fail there and elsewhere. Her code step
    from that address waits: the address has failures on record, so it is not known-good."""
    from tests.integration.test_mfa import enroll, next_code
    app = global_app
    clock = [(time.time() // WINDOW + 0.5) * WINDOW]
    throttle = services_of(app).throttle
    throttle.clock = lambda: clock[0]
    home = app.test_client()  # 127.0.0.1 by default
    assert home.post("/login", data={"email": "alice@acme.test", "password": PASSWORD,
                                     "csrf_token": csrf_token(home)}).status_code == 302
    secret, _ = enroll(home)
    away = app.test_client()
    away.environ_base["REMOTE_ADDR"] = NEWCOMER
    first = away.post("/login", data={"email": "alice@acme.test", "password": PASSWORD,
                                      "csrf_token": csrf_token(away)})
    assert first.status_code == 302 and "/login/mfa" in first.headers["Location"]
    for n in range(3):
        throttle.record_failure(f"target{n}@acme.test", NEWCOMER)
    for n in range(37):
        throttle.record_failure(f"victim{n}@acme.test", f"198.51.100.{n}")
    token = csrf_token(away, "/login/mfa")
    refused = away.post("/login/mfa", data={"code": next_code(secret), "csrf_token": token})
    assert refused.status_code == 429, refused.headers.get("Location")
    assert "Retry-After" in refused.headers
    assert "networks not seen before" in refused.get_data(as_text=True)
    assert away.get("/").status_code == 302  # not signed in
    # Another address on that network, with a clean record, is not held up.
    neighbour = app.test_client()
    neighbour.environ_base["REMOTE_ADDR"] = "203.0.113.201"
    assert neighbour.post("/login", data={"email": "bob@acme.test", "password": PASSWORD,
                                          "csrf_token": csrf_token(neighbour)}
                          ).status_code == 302
    assert len(audit_events(app, "throttle.global_engaged")) == 1
