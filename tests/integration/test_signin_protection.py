"""The operators' *Sign-in protection* page and ``trellis throttle status`` / ``unlock``:
failed sign-ins that lock an account and an IP show up there with when each lock ends, an
operator lifts one lock (audited) and the account signs in again; org admins and forged
posts are refused. In process and in Redis."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from portal.cli import throttle_status, throttle_unlock
from tests.conftest import PASSWORD, audit_events, csrf_token, services_of, sign_in

ALICE_IP, ATTACKER_IP = "192.0.2.10", "203.0.113.66"
PAGE = "/admin/signin-protection"


@pytest.fixture(params=["memory", "redis"])
def settings(settings, request):
    """Locks after 5 failures on an account or 6 from an IP; a global throttle at 40 a
    minute; the request-rate limit raised so that the throttles are what answer."""
    settings.update(LOGIN_RATE_LIMIT="100000/minute", LOGIN_IP_FREE_FAILURES=6,
                    GLOBAL_FAILURES=40, GLOBAL_WINDOW_SECONDS=60)
    if request.param == "redis":
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("Redis test skipped: REDIS_URL is not set")
        settings.update(REDIS_URL=url, THROTTLE_PREFIX=f"test:{uuid.uuid4().hex}:")
    return settings


def attempt(app, email: str, ip: str, password: str = PASSWORD):
    client = app.test_client()
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_token(client)},
                       environ_base={"REMOTE_ADDR": ip})


def lock_alice_and_the_attacker(app) -> None:
    for _ in range(5):
        assert attempt(app, "alice@acme.test", ALICE_IP, "wrong").status_code == 401
    for i in range(6):
        assert attempt(app, f"nobody{i}@acme.test", ATTACKER_IP, "guess").status_code == 401
    assert attempt(app, "alice@acme.test", ALICE_IP).status_code == 429
    assert attempt(app, "bob@acme.test", ATTACKER_IP).status_code == 429


def operator(app, make_user):
    make_user("ops@trellis.test", operator=True)
    client = app.test_client()
    assert sign_in(client, "ops@trellis.test").status_code == 302
    return client


def row_of(page: str, label: str) -> str:
    match = re.search(r"<tr><td>" + re.escape(label) + r"</td>.*?</tr>", page, re.S)
    assert match, f"no row for {label}"
    return match.group(0)


def key_in(row: str) -> str:
    return re.search(r'name="key" value="([^"]+)"', row).group(1)


def test_operator_sees_the_locks_and_lifting_one_lets_the_account_in(app, make_user):
    make_user("alice@acme.test")
    make_user("bob@acme.test")
    lock_alice_and_the_attacker(app)
    ops = operator(app, make_user)

    page = ops.get(PAGE)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert f'href="{PAGE}"' in body  # in the operator navigation
    assert "Not engaged" in body and re.search(r"\b\d+ of 40 per 60 s", body)
    alice = row_of(body, "alice@acme.test")
    assert "<td>5</td>" in alice and " UTC</time>" in alice
    assert re.search(r"<td>(1 minute|\d+ seconds)</td>", alice)
    assert "Lift lock" in alice
    attacker = row_of(body, ATTACKER_IP)
    assert "<td>6</td>" in attacker
    assert ALICE_IP not in body  # five failures from her IP lock nothing

    lifted = ops.post(PAGE + "/unlock", data={"csrf_token": csrf_token(ops, PAGE),
                                              "key": key_in(alice)}, follow_redirects=True)
    body = lifted.get_data(as_text=True)
    assert lifted.status_code == 200
    assert "The lock on alice@acme.test was lifted" in body
    assert "No account is locked." in body and ATTACKER_IP in body
    [event] = audit_events(app, "throttle.unlock")
    assert (event.actor, event.target, event.reason) == (
        "ops@trellis.test", "user:alice@acme.test", "account_unlocked")
    assert event.details["failures"] == 5 and "locked_until" in event.details

    assert attempt(app, "alice@acme.test", ALICE_IP).status_code == 302
    # The IP stays locked until it is lifted too.
    assert attempt(app, "bob@acme.test", ATTACKER_IP).status_code == 429
    ops.post(PAGE + "/unlock", data={"csrf_token": csrf_token(ops, PAGE),
                                     "key": f"ip:{ATTACKER_IP}"})
    assert attempt(app, "bob@acme.test", ATTACKER_IP).status_code == 302
    assert audit_events(app, "throttle.unlock")[-1].target == f"ip:{ATTACKER_IP}"

    # A lock lifted meanwhile (another operator, or it ran out) is said so.
    again = ops.post(PAGE + "/unlock", data={"csrf_token": csrf_token(ops, PAGE),
                                             "key": f"ip:{ATTACKER_IP}"},
                     follow_redirects=True)
    assert "is not locked (any more)" in again.get_data(as_text=True)
    assert len(audit_events(app, "throttle.unlock")) == 2


def test_org_admins_and_members_are_refused(app, two_orgs):
    lock_alice_and_the_attacker(app)
    for email in ("bob@globex.test", "uma@acme.test", "max@acme.test"):  # owner, admin, member
        client = app.test_client()
        assert sign_in(client, email).status_code == 302
        assert client.get(PAGE).status_code == 403
        token = csrf_token(client, "/")
        refused = client.post(PAGE + "/unlock", data={"csrf_token": token,
                                                      "key": f"ip:{ATTACKER_IP}"})
        assert refused.status_code == 403
        assert f'href="{PAGE}"' not in client.get("/").get_data(as_text=True)
    assert attempt(app, "bob@globex.test", ATTACKER_IP).status_code == 429
    assert audit_events(app, "throttle.unlock") == []


def test_a_post_without_csrf_token_is_refused(app, make_user):
    make_user("alice@acme.test")
    lock_alice_and_the_attacker(app)
    ops = operator(app, make_user)
    forged = ops.post(PAGE + "/unlock", data={"key": f"ip:{ATTACKER_IP}"})
    assert forged.status_code == 400
    assert attempt(app, "alice@acme.test", ATTACKER_IP).status_code == 429
    assert audit_events(app, "throttle.unlock") == []


def test_the_command_line_lists_and_lifts_the_same_locks(app, make_user):
    make_user("alice@acme.test")
    lock_alice_and_the_attacker(app)
    runner = app.test_cli_runner()
    shown = runner.invoke(throttle_status, catch_exceptions=False).output
    assert "global throttle: not engaged" in shown and "limit 40 per 60 s" in shown
    assert "locked accounts: 1" in shown and "alice@acme.test  until " in shown
    assert "locked IPs: 1" in shown and f"{ATTACKER_IP}  until " in shown

    lifted = runner.invoke(throttle_unlock, ["Alice@ACME.test"], catch_exceptions=False)
    assert lifted.exit_code == 0 and "lifted the lock on alice@acme.test" in lifted.output
    assert attempt(app, "alice@acme.test", ALICE_IP).status_code == 302
    assert runner.invoke(throttle_unlock, [ATTACKER_IP]).exit_code == 0
    [account, ip] = audit_events(app, "throttle.unlock")
    assert account.target == "user:alice@acme.test" and account.actor.startswith("cli:")
    assert ip.target == f"ip:{ATTACKER_IP}"
    assert "locked accounts: none" in runner.invoke(throttle_status).output
    refused = runner.invoke(throttle_unlock, [ATTACKER_IP])
    assert refused.exit_code != 0 and "not locked" in refused.output + str(refused.exception)


def test_a_second_factor_lock_is_named_and_lifted(app, make_user):
    """Code failures lock the ``mfa:<user id>`` key; the page names it by the user."""
    from portal import audit
    from portal.services import signin_protection
    user = make_user("alice@acme.test")
    throttle = services_of(app).throttle
    for _ in range(5):
        lockout = throttle.record_failure(f"mfa:{user.id}", ALICE_IP)
    with services_of(app).db.transaction() as tx:
        audit.record(tx, audit.Context(ip=ALICE_IP), "auth.lockout", outcome="failure",
                     target="user:alice@acme.test", reason="mfa_account_locked",
                     details={"seconds": lockout.seconds})
    ops = operator(app, make_user)
    row = row_of(ops.get(PAGE).get_data(as_text=True), "alice@acme.test (second factor)")
    ops.post(PAGE + "/unlock", data={"csrf_token": csrf_token(ops, PAGE), "key": key_in(row)})
    [event] = audit_events(app, "throttle.unlock")
    assert event.target == "user:alice@acme.test" and event.details["second_factor"] is True
    with services_of(app).db.sessions() as session:
        assert signin_protection.status(session, throttle).accounts == []
