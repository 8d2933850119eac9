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
