"""Which decisions change between two policy versions (``trellis policy diff``).

The requests come from two places: every case of the decision tables (each in its own small
world), and a sample of real requests the caller builds — subjects with their organizations,
and every object type and action the two versions' rules name, with the attribute values
their conditions compare against (``r.obj.amount <= 50000`` -> 50000 and 50001) and both
assurance levels. Both versions decide each request with the same grants, so only the files
differ.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies.engine import Decision, PolicyEngine, Sources
from policies.errors import PolicyError
from policies.files import KINDS, PolicyFiles, load_policy_files


@dataclass(frozen=True)
class Request:
    subject: dict[str, Any]
    org: str
    obj: dict[str, Any]
    action: str
    context: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # the decision table case, if it is one

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(self.obj.items()) if k != "type")
        context = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        return (f"subject {self.subject.get('id')} in {self.org}: {self.action} "
                f"{self.obj.get('type')}" + (f" ({attrs})" if attrs else "")
                + (f" [{context}]" if context else ""))


@dataclass(frozen=True)
class Change:
    request: Request
    before: Decision
    after: Decision

    def describe(self) -> str:
        def side(decision: Decision) -> str:
            verdict = "allow" if decision.allowed else "deny"
            return f"{verdict} ({', '.join(decision.rule) if decision.rule else decision.reason})"
        where = f"{self.request.label}: " if self.request.label else ""
        return f"{where}{self.request.describe()}: {side(self.before)} -> {side(self.after)}"


@contextmanager
def candidate_folder(current: Path, candidate: Path, replaces: str | None = None
                     ) -> Iterator[Path]:
    """A policy folder to compare with: ``candidate`` itself when it is a folder, else a copy
    of ``current`` with the candidate file in place of ``replaces`` (default: guessed from
    its name — platform.csv, model.conf, <kind>.csv under kinds/, anything else under orgs/)."""
    if candidate.is_dir():
        yield candidate
        return
    target = replaces or _guess(candidate.name)
    with tempfile.TemporaryDirectory(prefix="trellis-policy-") as scratch:
        folder = Path(scratch) / "policies"
        shutil.copytree(current, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        destination = folder / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate, destination)
        yield folder


def _guess(name: str) -> str:
    if name in ("platform.csv", "model.conf"):
        return name
    if name.removesuffix(".csv") in KINDS:
        return f"kinds/{name}"
    return f"orgs/{name}"


def compare(current: Path, candidate: Path, sources: Sources,
            requests: Iterable[Request]) -> tuple[int, list[Change]]:
    """Decide every request with both folders; returns (requests decided, changes)."""
    before = PolicyEngine(current, sources)
    after = PolicyEngine(candidate, sources)
    count, changes = 0, []
    for request in requests:
        count += 1
        args = (request.subject, request.org, request.obj, request.action, request.context)
        old, new = before.decide(*args), after.decide(*args)
        if old.allowed != new.allowed:
            changes.append(Change(request, old, new))
    return count, changes


def compare_tables(current: Path, candidate: Path, tables: Iterable[Path]
                   ) -> tuple[int, list[Change]]:
    """The decision tables' cases, each table in its own world, decided by both folders."""
    count, changes = 0, []
    for path in tables:
        try:
            table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError("table_invalid", "A decision table cannot be read.",
                              f"{path}: {exc}") from None
        orgs: dict[str, str] = table.get("orgs") or {}
        grants = [tuple(map(str, g)) for g in table.get("grants") or []]
        platform = [tuple(map(str, g)) for g in table.get("platform_roles") or []]
        sources = Sources(grants=lambda org, grants=grants: [(u, r) for u, r, o in grants
                                                            if o == org],
                          platform_roles=lambda platform=platform: platform,
                          org_kind=orgs.get)
        requests = [Request(dict(case.get("subject") or {}), str(case.get("org", "")),
                            dict(case.get("object") or {}), str(case.get("action", "")),
                            dict(case.get("context") or {}),
                            f"{path.name}: {case.get('name') or f'case {n}'}")
                    for n, case in enumerate(table.get("cases") or [], start=1)]
        decided, found = compare(current, candidate, sources, requests)
        count += decided
        changes += found
    return count, changes


OBJ_COMPARISON = re.compile(r"r\.obj\.(\w+)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)")


def sample_requests(files: Iterable[PolicyFiles], subjects: Iterable[tuple[dict, str]],
                    org_status: dict[str, str | None] | None = None) -> list[Request]:
    """For each (subject, organization): every object type and action the rules name,
    with the numbers their conditions compare object attributes to (and one above), the
    object owned by that organization, at assurance 1 and 2."""
    shapes: set[tuple[str, str]] = set()
    numbers: dict[str, set[float]] = {}
    for policy in files:
        rows = [*policy.platform, *(r for rs in policy.kinds.values() for r in rs),
                *(r for rs in policy.orgs.values() for r in rs)]
        for row in rows:
            if row[0] != "p":
                continue
            obj, action = row[3].split("*", 1)[0] or "thing", row[4]
            shapes.add((obj, "read" if action == "*" else action))
            for name, _op, value in OBJ_COMPARISON.findall(row[5]):
                number = float(value)
                number = int(number) if number.is_integer() else number
                numbers.setdefault(name, set()).update({number, number + 1})
    requests = []
    for subject, org in subjects:
        status = (org_status or {}).get(org)
        for obj_type, action in sorted(shapes):
            variants = [{"type": obj_type, "owner_org": org}]
            for name, values in sorted(numbers.items()):
                variants += [{"type": obj_type, "owner_org": org, name: v}
                             for v in sorted(values)]
            for obj in variants:
                for assurance in (1, 2):
                    requests.append(Request(subject, org, obj, action,
                                            {"org_status": status, "assurance": assurance}))
    return requests


def load_both(current: Path, candidate: Path) -> tuple[PolicyFiles, PolicyFiles]:
    """Both versions' files; a broken candidate raises with its file, line and reason."""
    return load_policy_files(current), load_policy_files(candidate)
