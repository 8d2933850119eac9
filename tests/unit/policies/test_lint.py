"""Policy lint: rules that can never decide, unknown organizations, unknown roles."""

import shutil
from pathlib import Path

import pytest
from casbin.util import key_match
from hypothesis import given
from hypothesis import strategies as st

from policies.lint import Problem, _pattern_covers, lint_folder

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.fixture
def folder(tmp_path):
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


def append(path: Path, text: str) -> int:
    """Append lines; the line number of the first one."""
    before = len(path.read_text().splitlines())
    with path.open("a") as handle:
        handle.write(text)
    return before + 1


def test_the_shipped_policy_is_clean():
    assert lint_folder(POLICIES, organizations={}, granted_roles=["buyer", "org_owner"]) == []


def test_an_allow_that_an_unconditional_deny_always_overrides(folder):
    partner = folder / "kinds" / "partner.csv"
    line = append(partner, "p, *, *, report*, *, True, deny\n"
                           "p, buyer, *, report_monthly, read, True, allow\n"
                           "p, buyer, *, reports, read, r.obj.owner_org == r.dom, allow\n"
                           "p, buyer, *, invoice, read, True, allow\n")
    problems = lint_folder(folder)
    assert problems == [
        Problem(f"kinds/partner.csv:{line + 1}",
                f"never allows anything: the deny at kinds/partner.csv:{line} always wins"),
        Problem(f"kinds/partner.csv:{line + 2}",
                f"never allows anything: the deny at kinds/partner.csv:{line} always wins")]


def test_a_conditional_deny_leaves_the_allow_alone(folder):
    append(folder / "kinds" / "vendor.csv", "p, *, *, report, read, r.ctx.hour > 20, deny\n"
                                            "p, member, *, report, read, True, allow\n")
    assert lint_folder(folder) == []


def test_duplicates_false_conditions_and_foreign_domains(folder):
    line = append(folder / "kinds" / "internal.csv", "p, member, *, app, open, True, allow\n"
                                                     "p, member, *, x, read, False, allow\n")
    (folder / "orgs" / "acme.csv").write_text("p, member, globex, y, read, True, allow\n"
                                              "p, member, *, organization, read, True, allow\n")
    problems = [str(p) for p in lint_folder(folder, organizations={"acme": "partner",
                                                                   "globex": "vendor"})]
    first = next(n for n, text in enumerate((folder / "kinds" / "internal.csv").read_text()
                                            .splitlines(), start=1)
                 if text == "p, member, *, app, open, True, allow")
    assert problems == [
        f"kinds/internal.csv:{line}: the same rule as kinds/internal.csv:{first}",
        f"kinds/internal.csv:{line + 1}: the condition is always false: the rule never applies",
        "orgs/acme.csv:1: domain 'globex' in the file of 'acme': the rule never applies (use *)",
        "orgs/acme.csv:2: the same rule as kinds/partner.csv:"
        f"{_line_of(folder / 'kinds' / 'partner.csv', 'p, member, *, organization, read')}",
    ]


def _line_of(path: Path, start: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), start=1)
                if text.startswith(start))


def test_unknown_organizations_and_roles(folder):
    (folder / "orgs" / "initech.csv").write_text("p, member, *, y, read, True, allow\n")
    append(folder / "platform.csv", "p, platform_auditor, globex, audit, export, True, allow\n")
    problems = [str(p) for p in lint_folder(folder, organizations={"acme": "partner"},
                                            granted_roles=["buyer", "wizard", "member"])]
    line = _line_of(folder / "platform.csv", "p, platform_auditor, globex")
    assert problems == [
        "database: role 'wizard' is granted but no rule gives it anything",
        "orgs/initech.csv: there is no organization 'initech'",
        f"platform.csv:{line}: there is no organization 'globex'",
    ]


patterns = st.from_regex(r"\A[ab]{0,2}\*?[ab]{0,1}\Z", fullmatch=True)


@given(pattern=patterns, other=patterns, key=st.from_regex(r"\A[ab]{0,3}\Z", fullmatch=True))
def test_pattern_coverage_agrees_with_casbins_key_match(pattern, other, key):
    if _pattern_covers(pattern, other) and key_match(key, other):
        assert key_match(key, pattern)
