"""Policies as code: decision tables in YAML, run like unit tests (``trellis policy test``).

A table file holds the world it runs in and the cases to decide::

    orgs: {acme: partner}
    grants: [[alice, buyer, acme]]            # user, role, organization
    platform_roles: [[olga, platform_operator]]
    cases:
      - name: buyers approve small orders
        subject: {id: alice}
        org: acme
        object: {type: purchase_order, owner_org: acme, amount: 40000}
        action: approve
        context: {assurance: 2}
        expect: allow                          # or deny
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policies.engine import PolicyEngine, Sources
from policies.errors import PolicyError


@dataclass(frozen=True)
class CaseResult:
    file: str
    name: str
    expected: str
    got: str
    rule: tuple[str, ...] | None
    reason: str

    @property
    def passed(self) -> bool:
        return self.expected == self.got


def run_tables(policy_folder: Path, tables: list[Path]) -> list[CaseResult]:
    results = []
    for path in tables:
        results.extend(_run_table(policy_folder, path))
    return results


def _run_table(policy_folder: Path, path: Path) -> list[CaseResult]:
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError("table_invalid", "A decision table cannot be read.",
                          f"{path}: {exc}") from None
    orgs: dict[str, str] = table.get("orgs") or {}
    grants = [tuple(map(str, g)) for g in table.get("grants") or []]
    platform = [tuple(map(str, g)) for g in table.get("platform_roles") or []]
    engine = PolicyEngine(policy_folder, Sources(
        grants=lambda org: [(u, r) for u, r, o in grants if o == org],
        platform_roles=lambda: platform, org_kind=orgs.get))
    results = []
    for number, case in enumerate(table.get("cases") or [], start=1):
        name = str(case.get("name") or f"case {number}")
        expected = _expected(path, name, case)
        decision = engine.decide(_attrs(case.get("subject")), str(case.get("org", "")),
                                 _attrs(case.get("object")), str(case.get("action", "")),
                                 _attrs(case.get("context")))
        results.append(CaseResult(path.name, name, expected,
                                  "allow" if decision.allowed else "deny", decision.rule,
                                  decision.reason))
    return results


def _expected(path: Path, name: str, case: dict[str, Any]) -> str:
    expected = case.get("expect")
    if expected not in ("allow", "deny"):
        raise PolicyError("table_invalid", "A decision table is broken.",
                          f"{path.name}: {name}: expect must be allow or deny")
    return expected


def _attrs(value: Any) -> dict[str, Any]:
    return dict(value or {})
