"""An organization's admins read and export their own audit trail, and never another
organization's events."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from portal.models import AuditEvent
from tests.conftest import audit_events
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, grant, post


def org_id(tx, slug):
    from portal.services import organizations
    with tx() as session:
        return organizations.get(session, slug).id


def acme_events(app, tx):
    acme = org_id(tx, "acme")
    return [e for e in audit_events(app) if e.organization_id == acme]


def test_owner_reads_only_their_organizations_events(app, tx, two_orgs):
    grant(tx, "carol@globex.test", "globex", "auditor")  # a Globex event with a Globex actor
    alice = as_user(app, "alice@acme.test")
    post(alice, f"/o/acme/admin/users/{two_orgs['max@acme.test']}/suspend")
    page = alice.get("/o/acme/admin/audit").get_data(as_text=True)
    assert "membership.suspend" in page and "user:max@acme.test" in page
    assert "globex" not in page.lower() and "carol" not in page
    expected = acme_events(app, tx)
    assert len(expected) < len(audit_events(app))  # there are other organizations' events
    for fmt in ("csv", "jsonl"):
        body = alice.get(f"/o/acme/admin/audit/export.{fmt}").get_data(as_text=True)
        assert "globex" not in body.lower() and "carol" not in body
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(body)))
        else:
            rows = [json.loads(line) for line in body.splitlines()]
        assert [int(r["seq"]) for r in rows] == [e.seq for e in expected]
        assert rows[-1]["action"] == "membership.suspend"


def test_filters_by_actor_action_and_time(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    max_id = two_orgs["max@acme.test"]
    post(alice, f"/o/acme/admin/users/{max_id}/roles", role="auditor")
    post(alice, f"/o/acme/admin/users/{max_id}/suspend")
    by_action = alice.get("/o/acme/admin/audit?action=role").get_data(as_text=True)
    assert "role.grant</code>" in by_action and "membership.suspend</code>" not in by_action
    exact = alice.get("/o/acme/admin/audit?action=membership.suspend").get_data(as_text=True)
    assert "membership.suspend</code>" in exact and "role.grant</code>" not in exact
    by_actor = alice.get("/o/acme/admin/audit?actor=ALICE").get_data(as_text=True)
    assert "membership.suspend" in by_actor and "cli:test" not in by_actor
    today = datetime.now(UTC).date()
    inside = alice.get(f"/o/acme/admin/audit?from={today}&to={today}").get_data(as_text=True)
    assert "membership.suspend" in inside
    old = today - timedelta(days=30)
    outside = alice.get(f"/o/acme/admin/audit?from={old}&to={old}").get_data(as_text=True)
    assert "No events match." in outside
    exported = alice.get("/o/acme/admin/audit/export.jsonl?action=role").get_data(as_text=True)
    assert {json.loads(line)["action"] for line in exported.splitlines()} == {"role.grant"}
    bad = alice.get("/o/acme/admin/audit?from=yesterday")
    assert bad.status_code == 400 and "2026-01-31" in bad.get_data(as_text=True)
    wildcard = alice.get("/o/acme/admin/audit?actor=%25").get_data(as_text=True)
    assert "No events match." in wildcard  # LIKE wildcards are searched literally


def test_pages_newest_first_over_the_api(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    expected = [e.seq for e in reversed(acme_events(app, tx))]
    seen, before = [], None
    while True:
        url = "/api/v1/orgs/acme/audit?limit=3" + (f"&before={before}" if before else "")
        body = client.get(url, headers=auth).get_json()
        seen += [e["seq"] for e in body["events"]]
        before = body["next_before"]
        if before is None:
            break
    assert seen == [s for s in expected if s in seen] and len(seen) >= len(expected)
    assert set(seen) <= set(expected) | {e.seq for e in acme_events(app, tx)}
    no_scope = token_for(tx, "alice@acme.test", scopes=["members:read"])
    assert client.get("/api/v1/orgs/acme/audit", headers=no_scope).status_code == 403
    other = client.get("/api/v1/orgs/globex/audit", headers=auth)
    assert other.status_code == 404


def test_who_may_read_the_trail(app, tx, two_orgs):
    grant(tx, "mia@acme.test", "acme", "auditor")
    assert as_user(app, "mia@acme.test").get("/o/acme/admin/audit").status_code == 200
    assert as_user(app, "uma@acme.test").get("/o/acme/admin/audit").status_code == 403
    assert as_user(app, "max@acme.test").get(
        "/o/acme/admin/audit/export.csv").status_code == 403
    assert as_user(app, "alice@acme.test").get("/o/globex/admin/audit").status_code == 404


def test_platform_events_without_an_organization_never_show(app, tx, two_orgs):
    from portal import audit
    from tests.conftest import CLI_CTX
    with tx() as session:
        audit.record(session, CLI_CTX, "platform.secret_thing", target="acme")
    body = as_user(app, "alice@acme.test").get("/o/acme/admin/audit/export.jsonl").get_data(
        as_text=True)
    assert "platform.secret_thing" not in body
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "platform.secret_thing")) == 1
