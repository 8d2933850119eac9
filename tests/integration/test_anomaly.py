"""Anomaly detection over sign-in events: a synthetic baseline of quiet windows, then a real
burst of failed sign-ins through the sign-in page; the worker's evaluation reports it in
the audit trail, to a SIEM file stream and by email to the organization's administrators
and the platform operators."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from portal import create_app
from portal.db import utcnow
from portal.models import AnomalyBaseline, Organization
from portal.services import anomaly, outbox, roles, siem, users
from tests.conftest import CLI_CTX, audit_events, services_of, sign_in
from tests.peers.smtp import text_of

WINDOW = timedelta(minutes=15)
SETTINGS = anomaly.Settings(window=WINDOW, z=3.0, min_count=10)
QUIET = [1, 2, 3, 2, 1, 2, 3, 2, 2, 1]


@pytest.fixture
def spiky_app(settings, smtp_server):
    """Generous per-IP limits: the burst below comes from one test client."""
    app = create_app({**settings, **smtp_server.settings(), "LOGIN_IP_FREE_FAILURES": 10000,
                      "LOGIN_RATE_LIMIT": "10000/minute"})
    yield app
    services_of(app).db.dispose()


def _people(app, make_org, make_user) -> int:
    make_org("acme", "Acme")
    make_user("owner@acme.test", org="acme")
    for n in range(6):
        make_user(f"member{n}@acme.test", org="acme")
    make_user("ops@platform.test", operator=True)
    with services_of(app).db.transaction() as session:
        org = session.scalar(sa.select(Organization).where(Organization.slug == "acme"))
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, "owner@acme.test"),
                             org, "org_owner", {"org_owner"})
        return org.id


def _feed_baseline(app, org_id: int, current_start) -> None:
    """Ten quiet windows before the current one, as the worker would have folded them in."""
    with services_of(app).db.transaction() as session:
        for k, failures in enumerate(QUIET):
            start = current_start - WINDOW * (len(QUIET) - k)
            found = {(org_id, "failures"): failures, (None, "failures"): failures + 1,
                     (org_id, "sign_ins"): 4, (None, "sign_ins"): 5}
            assert anomaly.observe(session, start, start + WINDOW, found, SETTINGS) == []


def test_a_burst_of_failed_sign_ins_is_an_anomaly_for_the_org_and_the_platform(
        spiky_app, make_org, make_user, smtp_server, tmp_path):
    app = spiky_app
    org_id = _people(app, make_org, make_user)
    current = anomaly.floor_window(utcnow(), WINDOW)
    _feed_baseline(app, org_id, current)
    log = tmp_path / "siem.jsonl"
    with services_of(app).db.transaction() as session:
        siem.create(session, CLI_CTX, services_of(app).secrets, name="soc", kind="file",
                    target=str(log), actions=["security."])

    # The burst: four wrong passwords for each of six members (below each account's lockout).
    for n in range(6):
        for _ in range(4):
            assert sign_in(app.test_client(), f"member{n}@acme.test", "wrong").status_code == 401
    assert sign_in(app.test_client(), "owner@acme.test").status_code == 302  # one sign-in

    db = services_of(app).db
    report = anomaly.evaluate(db, CLI_CTX, SETTINGS, now=current + WINDOW + timedelta(seconds=1),
                              link_for=lambda slug: f"https://portal.test/o/{slug}/admin/audit")
    assert report.windows == 1
    found = {(f.scope, f.metric): f for f in report.findings}
    assert set(found) == {(f"org:{org_id}", "failures"), ("platform", "failures")}
    assert found[(f"org:{org_id}", "failures")].count == 24 and \
        found[(f"org:{org_id}", "failures")].z > 3
    # The one real sign-in is far below the usual four: only rises are reported.

    events = audit_events(app, "security.anomaly")
    assert {e.organization_id for e in events} == {org_id, None}
    org_event = next(e for e in events if e.organization_id == org_id)
    assert org_event.outcome == "failure" and org_event.reason == "failures_spike"
    assert org_event.details["count"] == 24 and org_event.details["baseline_mean"] < 3

    # SIEM: the operators' stream receives both.
    siem.deliver(db, services_of(app).secrets, siem.SiemConfig())
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(str(line.get("organization_id")) for line in lines
                  if line.get("action") == "security.anomaly") == sorted([str(org_id), "None"])

    # Email: the organization's administrator, and the operators for the platform.
    outbox.deliver(db, outbox.MailConfig.from_settings(app.config))
    [mail] = smtp_server.wait_for("owner@acme.test")
    assert mail["Subject"] == "Unusual sign-in activity at Acme"
    body = text_of(mail)
    assert "24 failed sign-ins" in body and "https://portal.test/o/acme/admin/audit" in body
    [ops] = smtp_server.wait_for("ops@platform.test")
    assert "the whole platform" in text_of(ops)
    assert smtp_server.to("member0@acme.test") == []  # members are not told

    # Each window is judged once.
    again = anomaly.evaluate(db, CLI_CTX, SETTINGS, now=current + WINDOW + timedelta(minutes=2))
    assert again.windows == 0 and len(audit_events(app, "security.anomaly")) == 2


def test_quiet_windows_raise_nothing_and_feed_the_baseline(app, make_org, make_user):
    org_id = _people(app, make_org, make_user)
    current = anomaly.floor_window(utcnow(), WINDOW)
    _feed_baseline(app, org_id, current)
    sign_in(app.test_client(), "member0@acme.test", "wrong")
    report = anomaly.evaluate(services_of(app).db, CLI_CTX, SETTINGS,
                              now=current + WINDOW + timedelta(seconds=1))
    assert report.windows == 1 and report.findings == []
    assert audit_events(app, "security.anomaly") == []
    with services_of(app).db.sessions() as session:
        row = session.scalar(sa.select(AnomalyBaseline).where(
            AnomalyBaseline.scope == f"org:{org_id}", AnomalyBaseline.metric == "failures"))
        assert row.samples == len(QUIET) + 1 and 1 < row.mean < 3
        assert row.window_end == current + WINDOW


def test_a_flat_baseline_does_not_alert_on_a_small_rise():
    row = AnomalyBaseline(mean=0.0, variance=0.0, samples=0)
    for _ in range(20):
        anomaly._update(row, 5)
    assert row.variance == 0.0
    assert anomaly.judge(row, 9, SETTINGS) is None  # (9-5)/sqrt(5) < 3
    z, std = anomaly.judge(row, 20, SETTINGS)
    assert z > 6 and std == pytest.approx(5 ** 0.5)


def test_the_worker_evaluates_the_windows(app, settings, make_org, make_user, monkeypatch):
    from portal.cli import main
    _people(app, make_org, make_user)
    for name, value in {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
                        "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
                        "SECRET_KEY": settings["SECRET_KEY"],
                        "TRELLIS_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["worker", "--once"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with services_of(app).db.sessions() as session:
        ends = set(session.scalars(sa.select(AnomalyBaseline.window_end)
                                   .where(AnomalyBaseline.scope == "platform")))
    assert ends == {anomaly.floor_window(utcnow(), WINDOW)}
