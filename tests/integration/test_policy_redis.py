"""Invalidation across workers over Redis pub/sub. The database version check is switched
off (checked once an hour) so that only Redis can carry a change."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from policies import PolicyEngine, PolicyError, Sources
from tests.conftest import services_of

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
HOUR = 3600.0


@pytest.fixture
def channel() -> str:
    return f"trellis:policy:test:{uuid.uuid4().hex}"


def until(predicate, seconds: float = 1.0) -> float:
    """Seconds until ``predicate()`` held; fails after ``seconds``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "not within the deadline"
        time.sleep(0.002)
    return time.monotonic() - started


class World:
    def __init__(self):
        self.grants = {"acme": [], "globex": []}

    def sources(self):
        return Sources(grants=lambda org: list(self.grants.get(org, [])), platform_roles=list,
                       org_kind={"acme": "partner", "globex": "partner"}.get)


def worker(world, redis_url, channel) -> PolicyEngine:
    engine = PolicyEngine(POLICIES, world.sources(), version_check_seconds=HOUR,
                          redis_url=redis_url, redis_channel=channel)
    assert engine.notifier.wait_until_listening()
    return engine


def manages(engine, user="bob", org="acme"):
    return engine.decide({"id": user}, org, {"type": "member"}, "manage").allowed


def test_an_invalidation_reaches_the_other_worker_at_once(redis_url, channel):
    world = World()
    first, second = worker(world, redis_url, channel), worker(world, redis_url, channel)
    try:
        assert not manages(first) and not manages(second)
        assert not manages(second, org="globex")
        world.grants["acme"].append(("bob", "user_manager"))
        world.grants["globex"].append(("bob", "user_manager"))
        first.invalidate("acme")
        assert manages(first)  # this worker: at once
        seconds = until(lambda: manages(second))
        assert seconds < 1.0
        assert not manages(second, org="globex")  # only the organization named
        first.invalidate()  # every organization
        until(lambda: manages(second, org="globex"))
        assert first.notifier.received == 0 and second.notifier.received == 2
    finally:
        first.close()
        second.close()


def test_a_reconnected_listener_drops_every_cached_organization(redis_url, channel):
    world = World()
    engine = worker(world, redis_url, channel)
    try:
        assert not manages(engine)
        world.grants["acme"].append(("bob", "user_manager"))
        assert not manages(engine)  # cached
        admin = redis.Redis.from_url(redis_url)
        name = f"trellis-policy-{engine.notifier.sender[:12]}"
        ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
        assert len(ids) == 1
        admin.client_kill_filter(_id=ids[0])  # messages may be lost while it is down
        admin.close()
        until(lambda: manages(engine), seconds=5.0)
    finally:
        engine.close()


WORKER = """
import sys
from policies import PolicyEngine
from portal.authz import database_sources
from portal.db import Database
url, redis_url, channel, folder = sys.argv[1:5]
engine = PolicyEngine(folder, database_sources(Database(url)), version_check_seconds=3600.0,
                      redis_url=redis_url, redis_channel=channel)
assert engine.notifier.wait_until_listening()
print("ready", flush=True)
for line in sys.stdin:
    allowed = engine.decide({"id": line.strip()}, "acme", {"type": "member"}, "manage").allowed
    print("allow" if allowed else "deny", flush=True)
"""


def test_a_grant_reaches_another_process_through_redis(app, tx, make_org, make_user,
                                                         redis_url, channel):
    from portal.authz import database_sources
    org = make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    here = PolicyEngine(POLICIES, database_sources(services_of(app).db),
                        version_check_seconds=HOUR, redis_url=redis_url,
                        redis_channel=channel)
    other = subprocess.Popen(
        [sys.executable, "-c", WORKER, app.config["DATABASE_URL"], redis_url, channel,
         str(POLICIES)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"

        def ask() -> str:
            other.stdin.write(f"{alice.id}\n")
            other.stdin.flush()
            return other.stdout.readline().strip()
        assert ask() == "deny"
        assert here.notifier.wait_until_listening()
        with tx() as session:
            services_of(app).role_grants.grant(session, alice.id, org.id, "user_manager",
                                               "manual")
        here.invalidate("acme")
        seconds = until(lambda: ask() == "allow")
        assert seconds < 1.0
    finally:
        here.close()
        other.stdin.close()
        other.terminate()
        other.wait(timeout=10)


def test_two_app_instances_share_changes_through_redis(settings, redis_url, channel):
    """Two portals on one database and one Redis, database version check off: a grant made
    through one (by the role service, as an admin page does) and a revocation by a bulk
    statement reach the other within a second; so does an uploaded organization policy."""
    from portal import create_app
    from portal.services import org_policies, roles
    from tests.conftest import CLI_CTX

    config = {**settings, "REDIS_URL": redis_url, "POLICY_CHANNEL": channel}
    first, second = create_app(config), create_app(config)
    engines = [services_of(first).policy, services_of(second).policy]
    try:
        for engine in engines:
            engine.version_check_seconds = HOUR
            assert engine.notifier.wait_until_listening()
        one, two = services_of(first), services_of(second)
        from portal.services import organizations, users
        with one.db.transaction() as session:
            org = organizations.create(session, CLI_CTX, slug="acme", name="Acme",
                                       kind="partner")
            bob = users.create(session, CLI_CTX, one.passwords, email="bob@acme.test",
                               password=None, org_slug="acme")
        bob_id = str(bob.id)

        def manages(engine):
            return engine.decide({"id": bob_id}, "acme", {"type": "member"}, "manage").allowed
        assert not manages(engines[0]) and not manages(engines[1])
        known = engines[0].files.roles() | {"member"}
        with one.db.transaction() as session:
            roles.grant_manually(session, CLI_CTX, session.get(type(bob), bob.id),
                                 session.get(type(org), org.id), "user_manager", known)
        assert manages(engines[0])  # this instance: at once
        assert until(lambda: manages(engines[1])) < 1.0
        with two.db.transaction() as session:  # a bulk DELETE ... WHERE organization_id = ..
            roles.revoke_manually(session, CLI_CTX, session.get(type(bob), bob.id),
                                  session.get(type(org), org.id), "user_manager")
        assert not manages(engines[1])
        assert until(lambda: not manages(engines[0])) < 1.0
        with one.db.transaction() as session:
            org_policies.upload(session, CLI_CTX, engines[0].files, "acme",
                                "p, member, *, member, manage, True, allow\n")
        assert until(lambda: manages(engines[1])) < 1.0
    finally:
        for app in (first, second):
            services_of(app).policy.close()
            services_of(app).db.dispose()


def test_a_file_reload_reaches_the_other_worker_at_once(redis_url, channel, tmp_path):
    """The other worker's clock stands still, so it never re-reads the folder by itself: only
    the reload message over Redis can make it."""
    import shutil
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    world = World()
    first = PolicyEngine(folder, world.sources(), version_check_seconds=HOUR,
                         redis_url=redis_url, redis_channel=channel)
    second = PolicyEngine(folder, world.sources(), version_check_seconds=HOUR,
                          redis_url=redis_url, redis_channel=channel, clock=lambda: 0.0)
    try:
        assert first.notifier.wait_until_listening() and second.notifier.wait_until_listening()

        def exports(engine):
            return engine.decide({"id": "bob"}, "acme", {"type": "report"}, "export").allowed
        assert not exports(first) and not exports(second)
        (folder / "orgs" / "acme.csv").write_text("p, *, *, report, export, True, allow\n")
        first.reload_files()
        assert exports(first)
        assert until(lambda: exports(second)) < 1.0
        (folder / "orgs" / "acme.csv").write_text("p, *, *, report, export, True, alow\n")
        with pytest.raises(PolicyError) as refused:
            first.reload_files()
        assert "orgs/acme.csv:1: effect must be allow or deny" in refused.value.detail
        assert exports(first) and exports(second)  # the broken edit is kept out everywhere
    finally:
        first.close()
        second.close()
