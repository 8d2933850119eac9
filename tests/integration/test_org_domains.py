"""Domains: an organization's admin adds a domain, publishes the TXT record, and Trellis
verifies it by asking a real DNS server (dnslib on a loopback port). Re-verification suspends
home-realm discovery when the record goes away."""

from __future__ import annotations

import sqlalchemy as sa

from federation import discovery
from portal.models import Domain
from portal.services import domains
from tests.conftest import CLI_CTX, audit_events, services_of
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, post


def domain_row(tx, name, slug="acme"):
    from portal.models import Organization
    with tx() as session:
        row = session.scalar(sa.select(Domain).join(Organization).where(
            Domain.name == name, Organization.slug == slug))
        if row is not None:
            session.expunge(row)
        return row


def routes_to(tx, email):
    with tx() as session:
        return [c.organization_id for c in discovery.connections_for_email(session, email)]


class Cli:
    """The ``trellis`` command against this test's app (and its DNS settings)."""

    def __init__(self, app) -> None:
        self.app = app

    def invoke(self, args):
        from click.testing import CliRunner
        from flask.cli import ScriptInfo

        from portal.cli import main
        return CliRunner().invoke(main, args, obj=ScriptInfo(create_app=lambda: self.app))


def org_id(tx, slug):
    from portal.services import organizations
    with tx() as session:
        return organizations.get(session, slug).id


def test_add_publish_verify_in_the_page(app, tx, two_orgs, dns_server):
    alice = as_user(app, "alice@acme.test")
    added = post(alice, "/o/acme/admin/domains", name="Acme.Example")
    assert added.status_code == 302
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    row = domain_row(tx, "acme.example")
    record = f"trellis-verification={row.verification_token}"
    assert "acme.example" in page and record in page and "not verified" in page

    missing = post(alice, f"/o/acme/admin/domains/{row.id}/verify")
    assert missing.status_code == 302
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    assert f"No TXT record {record} was found on acme.example" in page
    assert not domain_row(tx, "acme.example").verified

    dns_server.publish("acme.example", "v=spf1 -all", record)
    post(alice, f"/o/acme/admin/domains/{row.id}/verify")
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    assert "acme.example is verified" in page
    stored = domain_row(tx, "acme.example")
    assert stored.verified and stored.verified_name == "acme.example"
    assert "acme.example" in dns_server.resolver.queries  # really asked the server
    outcomes = [(e.action, e.outcome) for e in audit_events(app) if e.action.startswith(
        "domain.")]
    assert outcomes == [("domain.add", "success"), ("domain.verify", "failure"),
                        ("domain.verify", "success")]


def test_lookup_timeout_is_a_clear_message_and_changes_nothing(app, tx, two_orgs, dns_server):
    alice = as_user(app, "alice@acme.test")
    post(alice, "/o/acme/admin/domains", name="slow.example")
    row = domain_row(tx, "slow.example")
    dns_server.go_silent("slow.example")
    post(alice, f"/o/acme/admin/domains/{row.id}/verify")
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    assert "The DNS lookup for slow.example timed out after 1 second." in page
    assert not domain_row(tx, "slow.example").verified
    event = audit_events(app, "domain.verify")[-1]
    assert event.outcome == "failure" and event.reason == "dns_timeout"
    auth = token_for(tx, "alice@acme.test")
    api = app.test_client().post(f"/api/v1/orgs/acme/domains/{row.id}/verify", headers=auth)
    assert api.status_code == 503 and api.get_json()["code"] == "dns_timeout"


def test_a_domain_verified_by_another_org_is_refused_and_audited(app, tx, two_orgs,
                                                                   dns_server):
    """Both may claim while unverified (nobody squats a name); the first to prove it owns it;
    the other's claim and verification are refused, audited in both trails, and the
    claimant learns nothing about the owner."""
    bob, alice = as_user(app, "bob@globex.test"), as_user(app, "alice@acme.test")
    assert post(bob, "/o/globex/admin/domains", name="shared.example").status_code == 302
    assert post(alice, "/o/acme/admin/domains", name="shared.example").status_code == 302
    globex_row = domain_row(tx, "shared.example", "globex")
    acme_row = domain_row(tx, "shared.example", "acme")
    dns_server.publish("shared.example",
                       f"trellis-verification={globex_row.verification_token}",
                       f"trellis-verification={acme_row.verification_token}")
    post(bob, f"/o/globex/admin/domains/{globex_row.id}/verify")
    assert domain_row(tx, "shared.example", "globex").verified
    post(alice, f"/o/acme/admin/domains/{acme_row.id}/verify")
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    assert "already verified by another organization" in page and "globex" not in page.lower()
    assert not domain_row(tx, "shared.example", "acme").verified
    assert post(alice, f"/o/acme/admin/domains/{acme_row.id}/remove").status_code == 302
    refused = post(alice, "/o/acme/admin/domains", name="SHARED.example.")
    assert refused.status_code == 409
    assert "already verified by another organization" in refused.get_data(as_text=True)
    acme, globex = org_id(tx, "acme"), org_id(tx, "globex")
    failures = [(e.organization_id, e.action) for e in audit_events(app)
                if e.outcome == "failure" and e.action.startswith("domain.")]
    assert failures == [(acme, "domain.verify"), (globex, "domain.claim_refused"),
                        (acme, "domain.add"), (globex, "domain.claim_refused")]
    assert routes_to(tx, "x@shared.example") == []  # no enabled connections: nothing routes
    with tx() as session:
        assert session.scalar(sa.select(Domain.organization_id).where(
            Domain.verified_name == "shared.example")) == globex


def test_reverify_suspends_discovery_and_restores_it(app, tx, two_orgs, dns_server):
    from portal.services import connections
    with tx() as session:
        connections.create_oidc(session, CLI_CTX, services_of(app).secrets, org_slug="acme",
                                name="Acme SSO", client_id="c", client_secret="s",
                                issuer="https://idp.acme.example", enabled=True)
    alice = as_user(app, "alice@acme.test")
    post(alice, "/o/acme/admin/domains", name="acme.example")
    row = domain_row(tx, "acme.example")
    record = f"trellis-verification={row.verification_token}"
    dns_server.publish("acme.example", record)
    post(alice, f"/o/acme/admin/domains/{row.id}/verify")
    acme = org_id(tx, "acme")
    assert routes_to(tx, "max@acme.example") == [acme]

    runner = Cli(app)
    kept = runner.invoke(args=["domain", "reverify"])
    assert kept.exit_code == 0 and "checked 1: 1 still verified, 0 suspended" in kept.output

    dns_server.unpublish("acme.example")
    gone = runner.invoke(args=["domain", "reverify"])
    assert "suspended acme.example: its verification record is gone" in gone.output
    assert routes_to(tx, "max@acme.example") == []
    page = alice.get("/o/acme/admin/domains").get_data(as_text=True)
    assert "suspended: record gone" in page and "is no longer published" in page
    shown = runner.invoke(["org", "show", "acme"]).output
    assert "domain:   acme.example verified, suspended (its TXT record is gone)" in shown
    event = audit_events(app, "domain.suspend")[-1]
    assert event.organization_id == acme and event.target == "domain:acme.example"

    dns_server.go_silent("acme.example")  # a DNS outage changes nothing
    silent = runner.invoke(args=["domain", "reverify"])
    assert silent.exit_code == 2 and "no answer for acme.example" in silent.output

    dns_server.resolver.silent.clear()
    dns_server.publish("acme.example", record)
    back = runner.invoke(args=["domain", "reverify"])
    assert "restored acme.example" in back.output
    assert routes_to(tx, "max@acme.example") == [acme]
    assert [e.action for e in audit_events(app) if e.action in (
        "domain.suspend", "domain.restore")] == ["domain.suspend", "domain.restore"]


def test_domains_over_the_api(app, tx, two_orgs, dns_server):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    created = client.post("/api/v1/orgs/acme/domains", headers=auth,
                          json={"name": "api.example"})
    assert created.status_code == 201
    body = created.get_json()
    assert body["state"] == "pending" and body["txt_record"].startswith("trellis-verification=")
    missing = client.post(f"/api/v1/orgs/acme/domains/{body['id']}/verify", headers=auth)
    assert missing.status_code == 409 and missing.get_json()["code"] == "record_missing"
    dns_server.publish("api.example", body["txt_record"])
    done = client.post(f"/api/v1/orgs/acme/domains/{body['id']}/verify", headers=auth)
    assert done.status_code == 200 and done.get_json()["state"] == "verified"
    listed = client.get("/api/v1/orgs/acme/domains", headers=auth).get_json()["domains"]
    assert [d["name"] for d in listed] == ["api.example"]
    bad = client.post("/api/v1/orgs/acme/domains", headers=auth, json={"name": "not a domain"})
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_domain"
    read_only = token_for(tx, "alice@acme.test", scopes=["domains:read"])
    refused = client.delete(f"/api/v1/orgs/acme/domains/{body['id']}", headers=read_only)
    assert refused.status_code == 403
    assert client.delete(f"/api/v1/orgs/acme/domains/{body['id']}",
                         headers=auth).status_code == 200
    assert domain_row(tx, "api.example") is None
    assert audit_events(app, "domain.remove")[-1].details["state"] == "verified"


def test_members_cannot_manage_domains(app, tx, two_orgs):
    member = as_user(app, "max@acme.test")
    assert member.get("/o/acme/admin/domains").status_code == 403
    assert post(member, "/o/acme/admin/domains", name="x.example").status_code == 403
    uma = as_user(app, "uma@acme.test")  # a user manager runs members, not domains
    assert uma.get("/o/acme/admin/domains").status_code == 403


def test_manual_verification_still_works_and_needs_the_org_when_shared(app, tx, two_orgs):
    with tx() as session:
        from portal.services import organizations
        organizations.add_domain(session, CLI_CTX, "acme", "both.example")
        organizations.add_domain(session, CLI_CTX, "globex", "both.example")
    runner = Cli(app)
    ambiguous = runner.invoke(args=["domain", "verify", "both.example", "--manual"])
    assert ambiguous.exit_code != 0 and "name one with --org" in ambiguous.output
    done = runner.invoke(args=["domain", "verify", "both.example", "--manual", "--org", "acme"])
    assert done.exit_code == 0 and domain_row(tx, "both.example").verified
    with tx() as session:
        assert domains.verify_manually  # the service the command used


def test_the_worker_rechecks_domains_that_are_due(app, tx, two_orgs, dns_server):
    from datetime import timedelta

    from portal.db import utcnow
    alice = as_user(app, "alice@acme.test")
    for name in ("old.example", "fresh.example"):
        post(alice, "/o/acme/admin/domains", name=name)
        row = domain_row(tx, name)
        dns_server.publish(name, f"trellis-verification={row.verification_token}")
        post(alice, f"/o/acme/admin/domains/{row.id}/verify")
    with tx() as session:
        session.execute(sa.update(Domain).where(Domain.name == "old.example")
                        .values(last_checked_at=utcnow() - timedelta(hours=25)))
    dns_server.unpublish("old.example")
    dns_server.unpublish("fresh.example")
    dns_server.resolver.queries.clear()
    result = Cli(app).invoke(["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "domain old.example: verification record gone, suspended" in result.output
    assert dns_server.resolver.queries == ["old.example"]  # fresh.example was not due
    assert domain_row(tx, "old.example").suspended_at is not None
    assert domain_row(tx, "fresh.example").suspended_at is None
