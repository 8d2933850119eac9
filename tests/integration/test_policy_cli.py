"""`trellis policy test` and `trellis policy lint`."""

from tests.integration.test_cli import trellis  # noqa: F401  (the CLI runner fixture)


def test_shipped_tables_pass_and_a_wrong_expectation_fails(trellis, tmp_path):  # noqa: F811
    from pathlib import Path

    from policies.decision_tables import run_tables
    shipped = Path(__file__).resolve().parents[2] / "policies"
    cases = len(run_tables(shipped, sorted((shipped / "tests").glob("*.yaml"))))
    assert cases >= 24
    assert trellis("policy", "test").output.endswith(f"{cases} passed, 0 failed\n")
    table = tmp_path / "wrong.yaml"
    table.write_text("orgs: {acme: partner}\ngrants: [[ann, auditor, acme]]\ncases:\n"
                     "  - name: auditors manage members\n    subject: {id: ann}\n"
                     "    org: acme\n    object: {type: member}\n    action: manage\n"
                     "    expect: allow\n")
    result = trellis("policy", "test", str(table), expect=1)
    assert result.output == ("FAIL wrong.yaml: auditors manage members: expected allow, got "
                             "deny (no rule allows it)\n0 passed, 1 failed\n")


def test_lint_reports_grants_of_undefined_roles(trellis, app, tx, make_org, make_user):  # noqa: F811
    make_org("acme", "Acme")
    user = make_user("a@acme.test", org="acme")
    assert "no problems" in trellis("policy", "lint").output
    from tests.conftest import services_of
    with tx() as session:
        services_of(app).role_grants.grant(session, user.id, 1, "wizard", "manual")
    result = trellis("policy", "lint", expect=1)
    assert result.stderr == ("warning: database: role 'wizard' is granted but no rule gives "
                             "it anything\n")


def test_lint_reports_unreachable_rules_in_an_uploaded_policy(trellis, app, make_org, tmp_path):  # noqa: F811
    make_org("acme", "Acme")
    policy = tmp_path / "acme.csv"
    policy.write_text("p, buyer, *, report, export, True, allow\n"
                      "p, buyer, *, report, export, True, allow\n")
    uploaded = trellis("policy", "upload", "acme", str(policy))
    assert "orgs/acme.csv:2: the same rule as orgs/acme.csv:1" in uploaded.stderr
    result = trellis("policy", "lint", expect=1)
    assert result.stderr == "warning: orgs/acme.csv:2: the same rule as orgs/acme.csv:1\n"
