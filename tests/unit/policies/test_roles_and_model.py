"""Role semantics the fast path must share with Casbin's matcher, ``explain``'s role chain,
and the model file beside the policies."""

import itertools
import shutil
from pathlib import Path

import pytest

from policies import PolicyEngine, PolicyError, Sources

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.fixture
def folder(tmp_path):
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


def engine_for(folder, grants=(), platform=(), kinds=None):
    kinds = kinds or {"acme": "partner", "globex": "partner"}
    return PolicyEngine(folder, Sources(
        grants=lambda org: [(u, r) for u, r, o in grants if o == org],
        platform_roles=lambda: list(platform), org_kind=kinds.get))


def allowed(engine, user, org, obj, action, **context):
    return engine.decide({"id": user}, org, {"type": obj}, action, context).allowed


def test_a_platform_role_does_not_pick_up_an_organizations_inheritance(folder):
    # g2 (platform) and g (organization) links are separate relations in the matcher.
    with (folder / "kinds" / "partner.csv").open("a") as handle:
        handle.write("p, platform_auditor, *, ledger, close, True, allow\n"
                     "g, platform_auditor, org_owner, *\n")
    engine = engine_for(folder, platform=[("pat", "platform_auditor")])
    assert allowed(engine, "pat", "acme", "audit", "read")  # the platform role itself
    assert allowed(engine, "pat", "acme", "ledger", "close")
    assert not allowed(engine, "pat", "acme", "branding", "manage")  # org_owner: not via g2


def test_a_rule_naming_a_user_applies_to_that_user_only(folder):
    (folder / "orgs" / "acme.csv").write_text("p, 42, *, report, export, True, allow\n")
    engine = engine_for(folder, grants=[("43", "member", "acme")])
    assert allowed(engine, "42", "acme", "report", "export")
    assert not allowed(engine, "43", "acme", "report", "export")
    assert {"object": "report", "action": "export", "condition": None} in \
        engine.permissions({"id": "42"}, "acme")
    assert not allowed(engine, "42", "globex", "report", "export")


def test_inheritance_is_followed_as_deep_as_casbin_follows_it(folder):
    roles = [f"level{n}" for n in range(12)]
    with (folder / "kinds" / "partner.csv").open("a") as handle:
        for role in roles:
            handle.write(f"p, {role}, *, {role}, read, True, allow\n")
        for parent, child in itertools.pairwise(roles):
            handle.write(f"g, {parent}, {child}, *\n")
    engine = engine_for(folder, grants=[("deep", "level0", "acme")])
    reached = [role for role in roles if allowed(engine, "deep", "acme", role, "read")]
    assert reached == roles[:9]  # the user, then at most 9 links: Casbin's hierarchy level


def test_explain_gives_the_chain_to_the_deciding_rule(folder):
    engine = engine_for(folder, grants=[("owen", "org_owner", "acme")],
                        platform=[("olga", "platform_operator")])
    explanation = engine.explain({"id": "owen"}, "acme", {"type": "member"}, "manage")
    assert explanation.decision.allowed
    assert explanation.chain == ("owen", "org_owner", "user_manager")
    assert ("owen", "org_owner") in explanation.chains
    assert ("owen", "org_owner", "member") in explanation.chains
    operator = engine.explain({"id": "olga"}, "acme", {"type": "member"}, "manage")
    assert operator.chain == ("olga", "platform_operator")
    assert operator.platform_roles == ("platform_operator",) and operator.roles == ()
    nobody = engine.explain({"id": "nobody"}, "acme", {"type": "member"}, "manage")
    assert not nobody.decision.allowed and nobody.chain == () and nobody.chains == ()


def test_explain_names_the_deny_that_won(folder):
    engine = engine_for(folder, grants=[("alice", "buyer", "acme")])
    explanation = engine.explain({"id": "alice"}, "acme",
                                 {"type": "purchase_order", "owner_org": "acme", "amount": 5},
                                 "approve", {"assurance": 1})
    assert not explanation.decision.allowed
    assert explanation.decision.rule[0] == "*" and explanation.decision.rule[-1] == "deny"
    assert explanation.chain == ("*",)


def test_cross_organization_isolation_holds_for_every_shipped_role(folder):
    engine = engine_for(folder)
    files = engine.files
    objects = {(line[3], line[4]) for lines in [files.platform, *files.kinds.values()]
               for line in lines if line[0] == "p"}
    for role in files.roles():
        isolated = engine_for(folder, grants=[("u", role, "acme")])
        for obj, action in objects:
            if obj == "*" or action == "*":
                continue
            assert not allowed(isolated, "u", "globex", obj, action, assurance=2), \
                (role, obj, action)


# -- the model file -----------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "detail"), [
    (lambda t: t.replace("[matchers]", "[matcher]"), "model.conf:30: unknown section"),
    (lambda t: t.replace("g2 = _, _", "g2 _, _"), "model.conf:25: expected 'key = value'"),
    (lambda t: t.replace('p.dom == "*")', 'p.dom == "*" || True)'),
     "model.conf:31: m differs from the model the engine implements"),
    (lambda t: t.replace("e = some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                         "e = some(where (p.eft == allow))"),
     "model.conf:28: e differs"),
    (lambda t: t.replace("g2 = _, _\n", ""),
     "model.conf:23: 'g2' is missing from [role_definition]"),
    (lambda t: t.replace("r = sub", "p = sub"), "model.conf:18: 'p' does not belong in "
                                                 "[request_definition]"),
    (lambda t: "m = r.sub == p.sub\n" + t, "model.conf:1: a definition before the first"),
    (lambda t: t + "[matchers]\n", "model.conf:32: [matchers] appears twice"),
])
def test_a_malformed_or_different_model_is_refused_with_file_and_line(folder, edit, detail):
    model = folder / "model.conf"
    model.write_text(edit(model.read_text()))
    with pytest.raises(PolicyError) as caught:
        engine_for(folder)
    assert caught.value.code == "policy_invalid"
    assert caught.value.detail.startswith(detail), caught.value.detail


def test_comments_and_spacing_in_the_model_do_not_matter(folder):
    model = folder / "model.conf"
    model.write_text("# edited\n" + model.read_text().replace(" && ", "  &&  "))
    assert allowed(engine_for(folder, grants=[("a", "auditor", "acme")]), "a", "acme", "audit",
                   "read")


def test_a_broken_model_on_reload_keeps_the_last_good_policy(folder):
    engine = engine_for(folder, grants=[("a", "auditor", "acme")])
    assert allowed(engine, "a", "acme", "audit", "read")
    (folder / "model.conf").write_text("[matchers]\nm = True\n")
    with pytest.raises(PolicyError, match="policy_invalid"):
        engine.reload_files()
    assert allowed(engine, "a", "acme", "audit", "read")
