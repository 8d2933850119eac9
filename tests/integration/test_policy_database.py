"""The policy engine reading grants, memberships and operators from the database."""

import time

import sqlalchemy as sa

from policies.engine import VERSION_CHECK_SECONDS
from portal.models import Membership, MembershipStatus, User
from tests.conftest import services_of


def decide(app, user_id, org="acme", obj="member", action="manage"):
    engine = services_of(app).policy
    return engine.decide({"id": user_id}, org, {"type": obj}, action).allowed


def test_grants_members_and_operators_come_from_the_database(app, tx, make_org, make_user):
    make_org("acme", "Acme")
    make_org("globex", "Globex")
    alice = make_user("alice@acme.test", org="acme")
    ops = make_user("ops@trellis.test", operator=True)
    assert decide(app, alice.id, obj="organization", action="read")  # members read
    assert not decide(app, alice.id)  # but do not manage members
    assert not decide(app, alice.id, org="globex", obj="organization", action="read")
    assert decide(app, ops.id, org="globex")
    with tx() as session:
        services_of(app).role_grants.grant(session, alice.id, 1, "user_manager", "manual")
    time.sleep(VERSION_CHECK_SECONDS + 0.05)
    assert decide(app, alice.id)  # another request after the change sees it
    assert not decide(app, alice.id, org="globex")


def test_suspended_membership_loses_the_member_role(app, tx, make_org, make_user):
    make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    assert decide(app, alice.id, obj="organization", action="read")
    with tx() as session:
        session.scalar(sa.select(Membership)).status = MembershipStatus.SUSPENDED
    services_of(app).policy.invalidate("acme")
    assert not decide(app, alice.id, obj="organization", action="read")
    with tx() as session:
        assert session.get(User, alice.id) is not None


def test_a_broken_policy_folder_stops_the_start(settings, tmp_path):
    import shutil

    import pytest

    from portal import create_app
    from portal.config import ROOT, ConfigError
    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", folder)
    (folder / "kinds" / "vendor.csv").write_text("p, member, *, x, read, True\n")
    with pytest.raises(ConfigError, match=r"TRELLIS_POLICY_DIR: kinds/vendor.csv:1: a p rule"):
        create_app({**settings, "POLICY_DIR": str(folder)})


def test_policy_version_is_stable_across_processes(app, make_org, make_user, tx):
    import subprocess
    import sys

    from portal.authz import database_sources
    make_org("acme", "Acme")
    make_user("alice@acme.test", org="acme")
    here = database_sources(services_of(app).db).version("acme")
    code = ("from portal.authz import database_sources; from portal.db import Database; "
            f"print(database_sources(Database({app.config['DATABASE_URL']!r}))"
            ".version('acme'))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert str(here) == other
    make_user("ops@trellis.test", operator=True)
    assert database_sources(services_of(app).db).version("acme") != here


def test_commits_invalidate_only_the_organizations_they_touch(app, tx, make_org, make_user):
    """A grant in acme drops acme's cached enforcer at commit, not globex's; a new ordinary
    user drops nothing; a new operator drops every organization."""
    from portal.services import roles
    from tests.conftest import CLI_CTX, services_of
    engine = services_of(app).policy
    make_org("acme", "Acme")
    make_org("globex", "Globex")
    alice = make_user("alice@acme.test", org="acme")
    for org in ("acme", "globex"):
        engine.decide({"id": str(alice.id)}, org, {"type": "member"}, "read")
    cached = lambda: set(engine._cache)  # noqa: E731
    assert cached() == {"acme", "globex"}
    with tx() as session:
        from portal.models import Organization, User
        roles.grant_manually(session, CLI_CTX, session.get(User, alice.id),
                             session.get(Organization, 1), "auditor", {"auditor"})
    assert cached() == {"globex"}
    engine.decide({"id": str(alice.id)}, "acme", {"type": "member"}, "read")
    make_user("bob@example.test")
    assert cached() == {"acme", "globex"}
    make_user("olga@example.test", operator=True)
    assert cached() == set()


def test_bulk_statements_invalidate_the_organizations_they_name(app, tx, make_org, make_user):
    """Core inserts (as the directory sync and CSV import write memberships), IN lists, and a
    statement naming no organization (which drops every one)."""
    import sqlalchemy as sa

    from portal.db import utcnow
    from portal.models import Membership, RoleGrant
    from tests.conftest import services_of
    engine = services_of(app).policy
    acme, globex = make_org("acme", "Acme"), make_org("globex", "Globex")
    bob = make_user("bob@example.test")

    def warm():
        for org in ("acme", "globex"):
            engine.decide({"id": str(bob.id)}, org, {"type": "member"}, "read")
        assert set(engine._cache) == {"acme", "globex"}
    warm()
    with tx() as session:
        now = utcnow()
        session.execute(sa.insert(Membership.__table__), [
            {"user_id": bob.id, "organization_id": globex.id, "status": "active",
             "source": "ldap", "created_at": now, "updated_at": now}])
    assert set(engine._cache) == {"acme"}
    assert engine.decide({"id": str(bob.id)}, "globex", {"type": "organization"},
                         "read").allowed  # the new member at once
    warm()
    with tx() as session:
        session.execute(sa.update(Membership.__table__).where(
            Membership.organization_id.in_([globex.id])).values(status="suspended"))
    assert set(engine._cache) == {"acme"}
    warm()
    with tx() as session:
        session.execute(sa.delete(RoleGrant).where(RoleGrant.user_id == bob.id))
    assert set(engine._cache) == set()
    assert acme.id != globex.id
