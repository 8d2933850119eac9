"""For random policies and requests, the per-organization cached engine decides exactly as a
plain pycasbin Enforcer loaded with every organization's rules."""

import shutil
from pathlib import Path

import casbin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Attrs, PolicyEngine, Sources
from policies.engine import MODEL, _LinesAdapter

ORGS = ["acme", "globex", "initech"]
USERS = ["u1", "u2", "u3", "u4"]
ROLES = ["r1", "r2", "r3"]
OBJECTS = ["doc", "order", "ticket"]
ACTIONS = ["read", "write"]
CONDITIONS = ["True", "True", "True", "r.obj.amount <= 10", "r.obj.owner == r.dom",
              "r.ctx.level >= 2"]

rules = st.tuples(st.sampled_from([*ROLES, *ROLES, *ROLES, "*"]), st.sampled_from(["*", *ORGS]),
                  st.sampled_from([*OBJECTS, "*"]), st.sampled_from([*ACTIONS, "*"]),
                  st.sampled_from(CONDITIONS), st.sampled_from(["allow", "allow", "deny"]))
grants = st.tuples(st.sampled_from(USERS), st.sampled_from(ROLES), st.sampled_from(ORGS))
inherits = st.tuples(st.sampled_from(ROLES), st.sampled_from(ROLES))
requests = st.tuples(st.sampled_from(USERS), st.sampled_from(ORGS), st.sampled_from(OBJECTS),
                     st.integers(0, 20), st.sampled_from([*ORGS, "other"]),
                     st.sampled_from(ACTIONS), st.integers(0, 3))


def world_folder(base: Path, policy, links) -> Path:
    folder = base / "p"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "kinds").mkdir(parents=True)
    (folder / "orgs").mkdir()
    shutil.copy(MODEL, folder / "model.conf")
    lines = [", ".join(["p", *rule]) for rule in policy]
    (folder / "platform.csv").write_text("\n".join(lines) + "\n")
    defined = {rule[0] for rule in policy if rule[0] != "*"}
    template = [f"g, {a}, {b}, *" for a, b in links if b in defined and a != b]
    (folder / "kinds" / "partner.csv").write_text("\n".join(template) + "\n")
    return folder


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.lists(rules, min_size=1, max_size=8), granted=st.lists(grants, max_size=16),
       links=st.lists(inherits, max_size=3), asked=st.lists(requests, min_size=1, max_size=15))
def test_cached_engine_matches_a_plain_enforcer(tmp_path, policy, granted, links, asked):
    folder = world_folder(tmp_path, policy, links)
    engine = PolicyEngine(folder, Sources(
        grants=lambda org: [(u, r) for u, r, o in granted if o == org],
        platform_roles=list, org_kind=lambda org: "partner"))
    everything = [[*line[:3], org] if line[0] == "g" else line
                  for org in ORGS for line in engine.files.lines_for(org, "partner")]
    unique = [list(t) for t in dict.fromkeys(tuple(line) for line in everything)]
    unique += [["g", u, r, o] for u, r, o in granted]
    plain = casbin.Enforcer(str(MODEL), _LinesAdapter(unique))
    for user, org, obj, amount, owner, action, level in asked:
        subject, target = {"id": user}, {"type": obj, "amount": amount, "owner": owner}
        context = {"level": level}
        expected = plain.enforce(Attrs(subject), org, Attrs(target), action, Attrs(context))
        assert engine.decide(subject, org, target, action, context).allowed == expected


# A richer world: organizations of different kinds with their own files, platform roles (g2)
# whose names may also be organization roles, and rules that name a user directly.
KINDS = ["partner", "vendor"]
SUBJECTS = [*ROLES, *ROLES, "*", "u1"]
kind_rules = st.tuples(st.sampled_from(SUBJECTS), st.just("*"), st.sampled_from([*OBJECTS, "*"]),
                       st.sampled_from([*ACTIONS, "*"]), st.sampled_from(CONDITIONS),
                       st.sampled_from(["allow", "allow", "deny"]))
platform_grants = st.tuples(st.sampled_from(USERS), st.sampled_from(ROLES))


def rich_folder(base: Path, platform, by_kind, by_org, links) -> Path:
    folder = base / "rich"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "kinds").mkdir(parents=True)
    (folder / "orgs").mkdir()
    shutil.copy(MODEL, folder / "model.conf")

    def write(path, rules, extra=()):
        path.write_text("".join(f"{line}\n" for line in
                                [*(", ".join(["p", *rule]) for rule in rules), *extra]))
    write(folder / "platform.csv", platform)
    defined = {rule[0] for rule in [*platform, *by_kind, *by_org] if rule[0] != "*"}
    template = [f"g, {a}, {b}, *" for a, b in links if b in defined and a != b]
    for kind in KINDS:
        write(folder / "kinds" / f"{kind}.csv", by_kind if kind == "partner" else by_kind[::2],
              template)
    write(folder / "orgs" / "acme.csv", by_org)
    return folder


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(platform=st.lists(rules, max_size=4), by_kind=st.lists(kind_rules, max_size=6),
       by_org=st.lists(kind_rules, max_size=3), granted=st.lists(grants, max_size=12),
       on_platform=st.lists(platform_grants, max_size=3), links=st.lists(inherits, max_size=4),
       kinds=st.lists(st.sampled_from(KINDS), min_size=len(ORGS), max_size=len(ORGS)),
       asked=st.lists(requests, min_size=1, max_size=15))
def test_kinds_org_files_and_platform_roles_decide_as_casbin(
        tmp_path, platform, by_kind, by_org, granted, on_platform, links, kinds, asked):
    if not (platform or by_kind or by_org):
        platform = [("r1", "*", "doc", "read", "True", "allow")]
    folder = rich_folder(tmp_path, platform, by_kind, by_org, links)
    kind_of = dict(zip(ORGS, kinds, strict=True))
    engine = PolicyEngine(folder, Sources(
        grants=lambda org: [(u, r) for u, r, o in granted if o == org],
        platform_roles=lambda: on_platform, org_kind=kind_of.get))
    # Everything in one enforcer: templates and organization files become rules of their
    # organization (their domain * means "this organization"); platform rules stay global.
    platform_lines = {tuple(line) for line in engine.files.platform}
    everything = []
    for org in ORGS:
        for line in engine.files.lines_for(org, kind_of[org]):
            if line[0] == "p" and tuple(line) not in platform_lines and line[2] == "*":
                line = [line[0], line[1], org, *line[3:]]
            everything.append(tuple(line))
    unique = [list(t) for t in dict.fromkeys(everything)]
    unique += [["g", u, r, o] for u, r, o in granted]
    unique += [["g2", u, r] for u, r in on_platform]
    plain = casbin.Enforcer(str(MODEL), _LinesAdapter(unique))
    for user, org, obj, amount, owner, action, level in asked:
        subject, target = {"id": user}, {"type": obj, "amount": amount, "owner": owner}
        context = {"level": level}
        expected = plain.enforce(Attrs(subject), org, Attrs(target), action, Attrs(context))
        decision = engine.decide(subject, org, target, action, context)
        assert decision.allowed == expected, (user, org, obj, action, decision)
