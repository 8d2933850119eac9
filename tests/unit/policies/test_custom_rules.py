"""Custom roles reach the engine as rows of one organization, and only for permissions the
organization's template still allows unconditionally."""

from pathlib import Path

from policies import PolicyEngine, Sources

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def engine_with(custom):
    return PolicyEngine(POLICIES, Sources(
        grants=lambda org: [("max", "helpdesk")],
        platform_roles=list, org_kind=lambda org: "partner",
        custom_rules=lambda org: custom.get(org, [])))


def allowed(engine, org, obj, act, **ctx):
    return engine.decide({"id": "max"}, org, {"type": obj, "amount": 1, "owner_org": org}, act,
                         {"org_status": "active", **ctx}).allowed


def test_custom_role_rows_apply_in_their_organization_only():
    engine = engine_with({"acme": [["p", "helpdesk", "acme", "member", "read", "True",
                                    "allow"]]})
    assert allowed(engine, "acme", "member", "read")
    assert not allowed(engine, "acme", "member", "manage")
    assert not allowed(engine, "globex", "member", "read")  # same role name, other org


def test_permissions_the_template_does_not_allow_are_dropped():
    engine = engine_with({"acme": [
        ["p", "helpdesk", "acme", "purchase_order", "approve", "True", "allow"],  # conditional
        ["p", "helpdesk", "acme", "ledger", "delete", "True", "allow"],  # nowhere
        ["p", "helpdesk", "acme", "*", "*", "True", "allow"],  # wildcard
        ["p", "helpdesk", "acme", "audit", "read", "True", "allow"]]})
    assert allowed(engine, "acme", "audit", "read")
    assert not allowed(engine, "acme", "purchase_order", "approve", assurance=2)
    assert not allowed(engine, "acme", "ledger", "delete")
    assert not allowed(engine, "acme", "member", "manage")


def test_platform_denies_still_win():
    engine = engine_with({"acme": [["p", "helpdesk", "acme", "member", "read", "True",
                                    "allow"]]})
    assert not engine.decide({"id": "max"}, "acme", {"type": "member"}, "read",
                             {"org_status": "suspended"}).allowed


APPROVE = "r.obj.owner_org == r.dom and r.obj.amount <= 50000"


def approve(engine, amount, owner_org="acme", assurance=2):
    return engine.decide({"id": "max"}, "acme", {"type": "purchase_order", "amount": amount,
                                                 "owner_org": owner_org}, "approve",
                         {"org_status": "active", "assurance": assurance}).allowed


def test_refinements_narrow_the_template_rule_and_never_widen_it():
    engine = engine_with({"acme": [["p", "helpdesk", "acme", "purchase_order", "approve",
                                    APPROVE, "allow", '{"amount_max": 90000}']]})
    assert approve(engine, 50000)
    assert not approve(engine, 60000)  # the template's 50,000 still holds
    assert not approve(engine, 100, owner_org="globex")
    assert not approve(engine, 100, assurance=1)  # the platform's deny wins
    narrow = engine_with({"acme": [["p", "helpdesk", "acme", "purchase_order", "approve",
                                    APPROVE, "allow", '{"amount_max": 100, "mfa": true}']]})
    assert approve(narrow, 100) and not approve(narrow, 101)


def test_rows_whose_rule_left_the_template_or_whose_refinements_are_foreign_are_dropped():
    engine = engine_with({"acme": [
        ["p", "helpdesk", "acme", "purchase_order", "approve",
         "r.obj.owner_org == r.dom and r.obj.amount <= 99999", "allow", "{}"],  # not the rule
        ["p", "helpdesk", "acme", "purchase_order", "approve", APPROVE, "allow",
         '{"amount_max": "1 or True"}'],  # text never becomes policy
        ["p", "helpdesk", "acme", "purchase_order", "approve", APPROVE, "allow",
         '{"sneaky": "True"}'],
        ["p", "helpdesk", "acme", "purchase_order", "read", "True", "allow", "not json"]]})
    assert not approve(engine, 10)
    assert not engine.decide({"id": "max"}, "acme", {"type": "purchase_order",
                                                     "owner_org": "acme"}, "read",
                             {"org_status": "active"}).allowed


def test_compose_is_a_fixed_conjunction():
    from policies.custom import MFA, OWN_ORG, RefinementError, compose
    assert compose("True", {}) == "True"
    assert compose("True", {"own_org": True, "mfa": True}) == f"{OWN_ORG} and {MFA}"
    assert compose(APPROVE, {"amount_max": 5}) == f"({APPROVE}) and r.obj.amount <= 5"
    for bad in ({"amount_max": True}, {"amount_max": 10**13}, {"mfa": "yes"}, {"x": 1}):
        try:
            compose("True", bad)
        except RefinementError:
            continue
        raise AssertionError(bad)
