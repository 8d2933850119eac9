"""Directory sync against a real slapd: create, update, suspend, idempotence, dry run,
all-or-nothing pages, resuming, audit, the command."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.cli import ScriptInfo

from portal import audit
from portal.models import AuthSession, Connection, Membership, RoleGrant, User, UserStatus
from portal.services import auth, ldap_sync, locks, organizations, users
from tests.conftest import CLI_CTX, audit_events, services_of
from tests.integration.test_ldap_signin import add_ldap, post_login
from tests.peers.process import free_port
from tests.peers.slapd import USER_PASSWORD, group_dn, user_dn

META_DN = user_dn("p(x)*\\")  # the user whose name is made of filter metacharacters


@pytest.fixture
def synced_org(app, tx, make_org, fresh_slapd):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    return add_ldap(app, tx, fresh_slapd)


def sync(app, connection_id, **options):
    s = services_of(app)
    return ldap_sync.run(s.db, CLI_CTX, s.ldap, s.secrets, connection_id, **options)


def state(tx) -> dict[str, tuple[str, str, frozenset[str]]]:
    """email -> (status, display name, roles from the connection)"""
    with tx() as session:
        result = {}
        for user in session.scalars(sa.select(User)):
            roles = frozenset(session.scalars(sa.select(RoleGrant.role).where(
                RoleGrant.user_id == user.id, RoleGrant.source.like("connection:%"))))
            result[user.email] = (user.status.value, user.display_name, roles)
        return result


def test_first_sync_creates_members_with_nested_group_roles(app, tx, synced_org):
    summary = sync(app, synced_org)
    assert (summary.entries, summary.created, summary.suspended) == (7, 4, 0)
    assert summary.complete and summary.unchanged == 1  # erin: disabled, never provisioned
    # carol has no mail; dave2 shares dave's email: reported, the others went on
    assert summary.errors == 2
    reasons = dict(summary.error_rows)
    assert "no mail" in reasons[user_dn("carol")]
    assert "already exists" in reasons[user_dn("dave2")]
    assert state(tx) == {
        "alice@acme.test": ("active", "Alice Archer", frozenset({"member", "user_manager"})),
        "bob@acme.test": ("active", "Bob Baker", frozenset({"member", "auditor"})),
        "dup@acme.test": ("active", "Dave One", frozenset({"member"})),
        "meta@acme.test": ("active", "Meta Chars", frozenset({"member"}))}
    with tx() as session:
        sources = set(session.scalars(sa.select(Membership.source)))
    assert {s.value for s in sources} == {"ldap"}
    assert len(audit_events(app, "ldap.sync.create")) == 4
    run_event = audit_events(app, "ldap.sync")[-1]
    assert run_event.outcome == "success" and run_event.details["created"] == 4
    with tx() as session:  # events written in bulk still chain
        assert audit.verify(session).ok


def test_a_second_run_changes_nothing(app, tx, synced_org):
    sync(app, synced_org)
    before, events = state(tx), len(audit_events(app))
    again = sync(app, synced_org)
    assert (again.created, again.updated, again.suspended) == (0, 0, 0)
    assert again.unchanged == 5 and again.errors == 2
    assert state(tx) == before
    assert len(audit_events(app)) == events + 1  # only the run's own event


def test_dry_run_reports_and_changes_nothing(app, tx, synced_org):
    summary = sync(app, synced_org, dry_run=True)
    assert (summary.created, summary.dry_run) == (4, True)
    assert state(tx) == {}
    assert audit_events(app, "ldap.sync")[-1].details["dry_run"] is True


def test_directory_changes_are_followed(app, tx, synced_org, fresh_slapd):
    sync(app, synced_org)
    s = services_of(app)
    with s.db.transaction() as session:  # bob is signed in somewhere
        bob = session.scalar(sa.select(User).where(User.email == "bob@acme.test"))
        auth.start_session(session, bob, CLI_CTX, 8)
    fresh_slapd.modify(f"dn: {user_dn('alice')}\nchangetype: modify\nreplace: sn\nsn: Smith\n"
                       "-\nreplace: cn\ncn: Alice Smith\n\n"
                       f"dn: {group_dn('engineers')}\nchangetype: modify\nreplace: member\n"
                       f"member: {user_dn('dave')}\n\n"
                       f"dn: {META_DN}\nchangetype: modify\nadd: employeeType\n"
                       "employeeType: disabled\n")
    fresh_slapd.delete(user_dn("bob"))
    summary = sync(app, synced_org)
    assert (summary.updated, summary.suspended, summary.created) == (2, 2, 0)
    after = state(tx)
    assert after["alice@acme.test"] == ("active", "Alice Smith", frozenset({"member"}))
    assert after["dup@acme.test"][2] == frozenset({"member", "user_manager"})
    assert after["bob@acme.test"][0] == "suspended"  # gone: suspended, never deleted
    assert after["meta@acme.test"][0] == "suspended"  # disabled in the directory
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuthSession).where(
            AuthSession.revoked_at.is_(None))) == 0  # bob's session ended
    suspends = audit_events(app, "ldap.sync.suspend")
    assert {e.target for e in suspends} == {"user:bob@acme.test", "user:meta@acme.test"}
    # re-enabled in the directory: resumed
    fresh_slapd.modify(f"dn: {META_DN}\nchangetype: modify\ndelete: employeeType\n")
    assert sync(app, synced_org).updated == 1
    assert state(tx)["meta@acme.test"][0] == "active"


def test_an_admins_suspension_is_not_undone(app, tx, synced_org):
    sync(app, synced_org)
    with tx() as session:
        users.suspend(session, CLI_CTX, "alice@acme.test", reason="left the project")
    sync(app, synced_org)
    assert state(tx)["alice@acme.test"][0] == "suspended"


def test_a_synced_user_signs_in_as_the_same_account(app, tx, synced_org, client):
    sync(app, synced_org)
    assert post_login(client, "alice@acme.test", USER_PASSWORD).status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 4


def test_a_failed_page_lands_not_at_all_and_a_rerun_goes_on(app, tx, synced_org,
                                                            monkeypatch):
    with tx() as session:  # two entries a page
        row = session.get(Connection, synced_org)
        row.settings = {**row.settings, "page_size": 2}
    real, calls = audit.record_many, []

    def crash_on_second_page(session, context, events):
        calls.append(len(events))
        real(session, context, events)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
    monkeypatch.setattr(audit, "record_many", crash_on_second_page)
    with pytest.raises(RuntimeError):
        sync(app, synced_org)
    first_page = state(tx)
    assert set(first_page) == {"alice@acme.test", "bob@acme.test"}  # page 1 only, whole
    failed = audit_events(app, "ldap.sync")[-1]
    assert failed.outcome == "failure" and "went away" in failed.reason
    monkeypatch.setattr(audit, "record_many", real)
    resumed = sync(app, synced_org)
    assert resumed.complete and resumed.created == 2 and resumed.unchanged == 3
    assert len(state(tx)) == 4


def test_unreachable_directory_fails_the_run_and_changes_nothing(app, tx, synced_org):
    sync(app, synced_org)
    with tx() as session:
        row = session.get(Connection, synced_org)
        row.settings = {**row.settings, "urls": [f"ldap://127.0.0.1:{free_port()}"]}
    before = state(tx)
    with pytest.raises(ldap_sync.SyncFailed) as failed:
        sync(app, synced_org)
    assert "directory_unreachable" in failed.value.message
    assert state(tx) == before  # in particular: nobody suspended
    assert audit_events(app, "ldap.sync")[-1].outcome == "failure"


def test_an_empty_result_suspends_nobody(app, tx, synced_org):
    sync(app, synced_org)
    with tx() as session:
        row = session.get(Connection, synced_org)
        row.settings = {**row.settings, "user_filter": "(uid=nobody-at-all)"}
    summary = sync(app, synced_org)
    assert summary.suspended == 0 and summary.errors == 1
    assert all(status == "active" for status, _n, _r in state(tx).values())


def test_sync_command(app, tx, synced_org):
    from portal.cli import main
    info = ScriptInfo(create_app=lambda: app)
    runner = CliRunner()
    dry = runner.invoke(main, ["ldap", "sync", str(synced_org), "--dry-run"], obj=info)
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing changed: would have 7 entries" in dry.output
    assert "4 created" in dry.output and "no mail" in dry.output
    assert state(tx) == {}
    real = runner.invoke(main, ["ldap", "sync", str(synced_org)], obj=info)
    assert real.exit_code == 0 and "4 created" in real.output
    assert "7 entries:" in real.output  # progress
    assert len(state(tx)) == 4
    with tx() as session:
        assert session.scalar(sa.select(User.status).where(
            User.email == "alice@acme.test")) == UserStatus.ACTIVE
    wrong = runner.invoke(main, ["ldap", "sync", "999"], obj=info)
    assert wrong.exit_code == 1 and "no such connection" in wrong.output


def test_the_worker_syncs_scheduled_directories_when_due(app, tx, synced_org):
    from portal.cli import main
    info = ScriptInfo(create_app=lambda: app)
    runner = CliRunner()
    idle = runner.invoke(main, ["worker", "--once"], obj=info)
    assert idle.exit_code == 0 and "ldap sync" not in idle.output and state(tx) == {}
    bad = runner.invoke(main, ["ldap", "schedule", str(synced_org), "99999"], obj=info)
    assert bad.exit_code == 1 and "one week" in bad.output
    scheduled = runner.invoke(main, ["ldap", "schedule", str(synced_org), "60"], obj=info)
    assert scheduled.exit_code == 0 and "every 60 minutes" in scheduled.output
    first = runner.invoke(main, ["worker", "--once"], obj=info)
    assert first.exit_code == 0 and "4 created" in first.output, first.output
    assert len(state(tx)) == 4
    again = runner.invoke(main, ["worker", "--once"], obj=info)
    assert "ldap sync" not in again.output  # not due for another hour
    assert len(audit_events(app, "ldap.sync")) == 1


def test_a_second_run_while_one_is_writing_does_not_start(app, tx, synced_org):
    """A scheduled sync can outlast its interval: the overlapping run stops at once."""
    import threading
    paused, go_on, outcome = threading.Event(), threading.Event(), {}

    def slow_progress(_summary):
        paused.set()
        go_on.wait(30)

    def first_run():
        s = services_of(app)
        outcome["first"] = ldap_sync.run(s.db, CLI_CTX, s.ldap, s.secrets, synced_org,
                                         progress=slow_progress)
    worker = threading.Thread(target=first_run)
    worker.start()
    try:
        assert paused.wait(30), "the first run never reached its first page"
        with pytest.raises(locks.Busy) as busy:
            sync(app, synced_org)
        assert "already running" in busy.value.message
        assert sync(app, synced_org, dry_run=True).complete  # reading is harmless
    finally:
        go_on.set()
        worker.join(60)
    assert outcome["first"].complete and outcome["first"].created == 4
    again = sync(app, synced_org)  # the lock was let go
    assert again.complete and again.created == 0
