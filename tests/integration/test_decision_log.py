"""Sampled decision log: a configured share of the decision API's decisions, and every deny
when asked, land in the audit trail where operators read them."""

import itertools

import pytest

from portal import create_app
from portal.cli import main
from portal.decision_log import DecisionLog
from portal.services import api_clients
from tests.conftest import CLI_CTX, audit_events, services_of


@pytest.fixture
def logged_app(settings):
    app = create_app({**settings, "DECISION_LOG_SAMPLE": 0.25, "DECISION_LOG_DENIES": True})
    yield app
    services_of(app).policy.close()
    services_of(app).db.dispose()


def world(app):
    from portal.services import organizations, users
    s = services_of(app)
    with s.db.transaction() as session:
        organizations.create(session, CLI_CTX, slug="acme", name="Acme", kind="partner")
        alice = users.create(session, CLI_CTX, s.passwords, email="alice@acme.test",
                             password=None, org_slug="acme")
        _, key = api_clients.create(session, CLI_CTX, "Supplier portal", ["acme"])
    return str(alice.id), key


def test_a_sample_of_allows_and_every_deny_reach_the_audit_trail(logged_app):
    alice, key = world(logged_app)
    decisions = services_of(logged_app).decisions
    draws = itertools.cycle([0.1, 0.5, 0.9, 0.6])  # one draw in four is under 0.25
    decisions.rng = lambda: next(draws)
    decisions.interval = 3600.0  # the test writes the batch itself
    client = logged_app.test_client()
    allow = {"subject": alice, "organization": "acme", "object": "organization",
             "action": "read"}
    deny = {**allow, "action": "manage"}
    answers = client.post("/api/v1/authz/batch", json={"checks": [allow] * 8 + [deny] * 3},
                          headers={"Authorization": f"Bearer {key}"}).get_json()["results"]
    assert decisions.flush() == 2 + 3
    events = audit_events(logged_app, "authz.decision")
    assert [e.outcome for e in events] == ["success", "success", "failure", "failure",
                                           "failure"]
    logged_ids = {e.details["decision_id"] for e in events}
    assert logged_ids <= {a["decision_id"] for a in answers}  # an app can find its decision
    first = events[0]
    assert first.details["subject"] == {"id": alice} and first.details["org"] == "acme"
    assert first.details["caller"] == "api_client:1" and first.organization_id is not None
    assert events[-1].details["rule"] is None and events[-1].reason == "no rule allows it"

    shown = logged_app.test_cli_runner().invoke(main, ["policy", "decisions", "--denied",
                                                       "--org", "acme"])
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert len(lines) == 3 and all(" deny  acme " in line for line in lines)
    assert "manage organization (no rule allows it) by api_client:1" in lines[0]
    verified = logged_app.test_cli_runner().invoke(main, ["audit", "verify"])
    assert "intact" in verified.output


def test_off_by_default_and_a_full_queue_drops_instead_of_waiting(app):
    assert services_of(app).decisions.enabled is False
    log = DecisionLog(services_of(app).db, sample=1.0)
    import portal.decision_log as module
    from policies.engine import Decision
    limit, module.MAX_QUEUE = module.MAX_QUEUE, 3
    try:
        for n in range(5):
            log.add(f"d{n}", {"id": "1"}, "nowhere", {"type": "x"}, "read", {},
                    Decision(True, None, "v"), "api_client:1")
        assert log.dropped == 2
        assert log.flush() == 3
    finally:
        module.MAX_QUEUE = limit
    actions = [e.action for e in audit_events(app)]
    assert actions == ["authz.decision"] * 3 + ["authz.decision_log.dropped"]


def test_the_portals_own_page_checks_are_logged_too(logged_app):
    from tests.conftest import sign_in
    alice, _ = world(logged_app)
    s = services_of(logged_app)
    decisions = s.decisions
    decisions.rng = lambda: 0.9  # nothing sampled: only the deny is logged
    decisions.interval = 3600.0
    client = logged_app.test_client()
    with s.db.transaction() as session:
        from portal.models import User
        user = session.get(User, int(alice))
        user.password_hash = s.passwords.hash("a long enough password")
    assert sign_in(client, "alice@acme.test", "a long enough password").status_code == 302
    assert client.get("/o/acme/admin/users").status_code == 403
    assert decisions.flush() == 1
    event = audit_events(logged_app, "authz.decision")[-1]
    assert event.outcome == "failure" and event.details["caller"] == "portal"
    assert event.details["object"]["type"] == "member" and event.details["org"] == "acme"
    assert event.details["decision_id"]  # the request id, as in the access log
