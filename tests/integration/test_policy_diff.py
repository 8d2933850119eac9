"""`trellis policy diff`: which decisions a candidate policy would change."""

from pathlib import Path

from portal.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def run(app, *args):
    return app.test_cli_runner().invoke(main, list(args))


def test_an_unchanged_policy_changes_nothing(app, make_org, make_user):
    make_org("acme", "Acme")
    make_user("alice@acme.test", org="acme")
    result = run(app, "policy", "diff", str(SHIPPED))
    assert result.exit_code == 0, result.output
    assert ": 0 of " in result.output and "over 1 organizations" in result.output


def test_a_lower_approval_limit_shows_the_changed_decisions(app, make_org, make_user, tmp_path):
    make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    assert run(app, "role", "grant", "alice@acme.test", "acme", "buyer").exit_code == 0
    partner = (SHIPPED / "kinds" / "partner.csv").read_text()
    assert "r.obj.amount <= 50000" in partner
    candidate = tmp_path / "partner.csv"
    candidate.write_text(partner.replace("r.obj.amount <= 50000", "r.obj.amount <= 10000"))
    result = run(app, "policy", "diff", str(candidate))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    # The shipped table case at 50,000 flips, and so does the sampled buyer at 10,001.
    assert any(line.startswith("partner.yaml: buyers approve up to 50,000 with MFA: ")
               and line.endswith("-> deny (no rule allows it)") for line in lines)
    assert any(line.startswith(f"subject {alice.id} in acme: approve purchase_order "
                               "(amount=10001, owner_org=acme) [assurance=2, org_status=active]")
               for line in lines)
    assert all("assurance=1" not in line for line in lines)  # no MFA: denied either way
    assert "decisions change" in lines[-1]


def test_a_broken_candidate_is_named_with_file_and_line(app, tmp_path):
    candidate = tmp_path / "partner.csv"
    candidate.write_text("p, buyer, *, purchase_order, read, True, alow\n")
    result = run(app, "policy", "diff", str(candidate))
    assert result.exit_code == 1
    assert "kinds/partner.csv:1: effect must be allow or deny" in result.output
