"""The policy engine: shipped decision tables, broken files, cache and reload."""

import shutil
from pathlib import Path

import pytest

from policies import PolicyEngine, PolicyError, Sources
from policies.decision_tables import run_tables

POLICIES = Path(__file__).resolve().parents[3] / "policies"
TABLES = sorted((POLICIES / "tests").glob("*.yaml"))


@pytest.mark.parametrize("result", run_tables(POLICIES, TABLES),
                         ids=lambda r: f"{r.file}: {r.name}")
def test_shipped_decision_tables(result):
    assert result.passed, f"expected {result.expected}, got {result.got} ({result.reason})"


class World:
    """Grants and organizations the engine reads, changeable by the test."""

    def __init__(self):
        self.grants = {"acme": [("alice", "user_manager")], "globex": []}
        self.kinds = {"acme": "partner", "globex": "partner"}
        self.versions = {"acme": 0, "globex": 0}
        self.loads = []

    def sources(self):
        def grants(org):
            self.loads.append(org)
            return self.grants.get(org, [])
        return Sources(grants=grants, platform_roles=list, org_kind=self.kinds.get,
                       version=lambda org: self.versions.get(org, 0))


@pytest.fixture
def folder(tmp_path):
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def allowed(engine, user, org="acme", obj="member", action="manage"):
    return engine.decide({"id": user}, org, {"type": obj}, action).allowed


def test_grant_changes_are_seen_after_the_version_moves(folder):
    world, clock = World(), Clock()
    engine = PolicyEngine(folder, world.sources(), clock=clock)
    assert allowed(engine, "alice") and not allowed(engine, "bob")
    world.grants["acme"].append(("bob", "user_manager"))
    assert not allowed(engine, "bob")  # cached, version unchanged
    world.versions["acme"] += 1
    clock.now += 0.6  # another worker's change: seen at the next version check
    assert allowed(engine, "bob")


def test_invalidate_takes_effect_at_once(folder):
    world = World()
    engine = PolicyEngine(folder, world.sources())
    assert not allowed(engine, "bob")
    world.grants["acme"].append(("bob", "user_manager"))
    engine.invalidate("acme")
    assert allowed(engine, "bob")


def test_cache_is_bounded_and_loads_one_organization_at_a_time(folder):
    world = World()
    world.kinds.update({f"org{n}": "partner" for n in range(10)})
    engine = PolicyEngine(folder, world.sources(), cache_size=3)
    for n in range(10):
        allowed(engine, "alice", org=f"org{n}")
    assert len(engine._cache) == 3 and world.loads == [f"org{n}" for n in range(10)]


@pytest.mark.parametrize(("content", "detail"), [
    ("p, member, *, member, read, True\n", "platform.csv:2: a p rule has 6 fields"),
    ("p, member, *, member, read, True, maybe\n", "platform.csv:2: effect must be allow"),
    ("p, member, *, member, read, __import__('os'), allow\n",
     "platform.csv:2: conditions may only compare"),
    ("p, member, *, member, read, r.sub.id ==, allow\n",
     "platform.csv:2: condition is not an expression"),
    ("p, member, *, member, read, os.name == 1, allow\n", "platform.csv:2: unknown name 'os'"),
    ("p, member, *, member, read, r.env.x == 1, allow\n",
     "platform.csv:2: unknown request part r.env"),
    ("g, alice, admin, *\n", "platform.csv:2: unknown rule type 'g' (expected p)"),
])
def test_broken_platform_file_is_refused_with_file_line_and_reason(folder, content, detail):
    (folder / "platform.csv").write_text("# header\n" + content)
    with pytest.raises(PolicyError) as caught:
        PolicyEngine(folder, World().sources())
    assert caught.value.code == "policy_invalid" and caught.value.detail.startswith(detail)


def test_inheriting_an_undefined_role_is_refused(folder):
    with (folder / "kinds" / "partner.csv").open("a") as handle:
        handle.write("g, org_owner, superuser, *\n")
    with pytest.raises(PolicyError, match="policy_invalid") as caught:
        PolicyEngine(folder, World().sources())
    assert "inherits 'superuser', which no rule defines" in caught.value.detail


def test_a_broken_reload_keeps_the_last_good_policy(folder):
    engine = PolicyEngine(folder, World().sources())
    assert allowed(engine, "alice")
    fingerprint = engine.files.fingerprint
    (folder / "kinds" / "partner.csv").write_text("p, member, broken\n")
    with pytest.raises(PolicyError) as caught:
        engine.reload_files()
    assert caught.value.detail.startswith("kinds/partner.csv:1:")
    assert allowed(engine, "alice") and engine.files.fingerprint == fingerprint


def test_organization_file_adds_rules_for_that_organization_only(folder):
    (folder / "orgs" / "acme.csv").write_text(
        "p, member, *, report, export, True, allow\n")
    world = World()
    world.grants["globex"] = [("gina", "member")]
    world.grants["acme"].append(("gina", "member"))
    engine = PolicyEngine(folder, world.sources())
    assert allowed(engine, "gina", "acme", "report", "export")
    assert not allowed(engine, "gina", "globex", "report", "export")
    assert engine.decide({"id": "gina"}, "acme", {"type": "x"}, "y").version.startswith(
        engine.files.fingerprint)


def test_explain_names_the_rule_and_the_role_chain(folder):
    world = World()
    world.grants["acme"] = [("owen", "org_owner")]
    engine = PolicyEngine(folder, world.sources())
    explanation = engine.explain({"id": "owen"}, "acme", {"type": "member"}, "manage")
    assert explanation.decision.allowed
    assert explanation.decision.rule[:4] == ("user_manager", "*", "member", "manage")
    assert {"org_owner", "user_manager", "member"} <= set(explanation.roles)


def test_edited_files_are_picked_up_and_broken_edits_kept_out(folder):
    import os
    world, clock = World(), Clock()
    engine = PolicyEngine(folder, world.sources(), clock=clock)
    assert not allowed(engine, "alice", obj="report", action="export")
    extra = folder / "orgs" / "acme.csv"
    extra.write_text("p, user_manager, *, report, export, True, allow\n")
    clock.now += 2.5
    assert allowed(engine, "alice", obj="report", action="export")
    extra.write_text("p, user_manager, *, report, export, True, allowed\n")
    os.utime(extra, ns=(1, 10**18))
    clock.now += 2.5
    assert allowed(engine, "alice", obj="report", action="export")  # last good in force
    assert engine.reload_error.detail.startswith("orgs/acme.csv:1: effect must be")



def test_an_edit_landing_while_the_files_are_read_is_read_at_the_next_check(folder,
                                                                            monkeypatch):
    """The folder's stamp is taken before the files are read: one taken after would already
    match the finished edit, and the half of it that was read would stay in force for good."""
    import policies.engine
    world, clock = World(), Clock()
    engine = PolicyEngine(folder, world.sources(), clock=clock)
    extra = folder / "orgs" / "acme.csv"
    extra.write_text("")  # the editor has truncated the file, and is about to write it
    read = policies.engine.load_policy_files

    def read_then_finish_the_edit(path):
        files = read(path)
        extra.write_text("p, user_manager, *, report, export, True, allow\n")
        return files
    monkeypatch.setattr(policies.engine, "load_policy_files", read_then_finish_the_edit)
    clock.now += 2.5
    assert not allowed(engine, "alice", obj="report", action="export")  # half an edit read
    monkeypatch.setattr(policies.engine, "load_policy_files", read)
    clock.now += 2.5
    assert allowed(engine, "alice", obj="report", action="export")


class Notifier:
    def __init__(self):
        self.published = []

    def publish(self, org):
        self.published.append(org)

    def close(self):
        pass


def test_a_worker_told_of_a_reload_reads_the_files_without_telling_the_others_again(folder):
    """Answering would make the sender and every other worker read the folder once more,
    perhaps in the middle of the next edit (which then stayed in force there)."""
    from policies.engine import FILES
    world, clock = World(), Clock()
    engine = PolicyEngine(folder, world.sources(), clock=clock)
    engine.notifier = Notifier()
    (folder / "orgs" / "acme.csv").write_text("p, user_manager, *, report, export, True, allow\n")
    engine._remote(FILES)  # as the Redis listener does for another worker's reload
    assert allowed(engine, "alice", obj="report", action="export")
    assert engine.notifier.published == []
    (folder / "orgs" / "acme.csv").write_text("p, user_manager, *, report, export, True, deny\n")
    clock.now += 2.5  # an edit this worker notices itself is announced
    assert not allowed(engine, "alice", obj="report", action="export")
    assert engine.notifier.published == [FILES]

def test_cached_organizations_keep_deciding_when_the_database_is_down(folder):
    world, clock = World(), Clock()
    sources = world.sources()
    engine = PolicyEngine(folder, sources, clock=clock)
    assert allowed(engine, "alice")

    def down(org):
        raise ConnectionError("database unreachable")
    sources.version = down
    clock.now += 1
    assert allowed(engine, "alice")  # the last good policy of a cached organization
    assert isinstance(engine.source_error, ConnectionError)
    with pytest.raises(ConnectionError):
        engine.decide({"id": "alice"}, "globex", {"type": "member"}, "read")  # never loaded
