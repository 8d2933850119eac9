"""Policy lint: what loads but cannot be what its author meant.

``load_policy_files`` already refuses what is broken (syntax, conditions, unknown rule types,
inheriting a role no rule defines). ``lint`` reports, with file and line:

- rules that can never decide: a duplicate of a rule seen in the same organizations, an
  allow that a deny without condition always overrides, a condition that is always false,
  a rule in ``orgs/<slug>.csv`` for another organization's domain;
- references to organizations that do not exist (``orgs/<slug>.csv``, a rule's domain),
  when the organizations are given;
- roles granted (in the database) that no rule gives anything, when the grants are given.

The portal passes what it knows from the database; with files only, the file checks run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from policies.files import KINDS, PolicyFiles, load_policy_files


@dataclass(frozen=True, order=True)
class Problem:
    where: str  # "kinds/partner.csv:12", or "database"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class _Rule:
    where: str
    file: str
    tokens: tuple[str, ...]  # p, role, domain, object, action, condition, effect

    @property
    def key(self) -> tuple[str, ...]:
        return self.tokens


def lint(files: PolicyFiles, *, organizations: Mapping[str, str] | None = None,
         granted_roles: Iterable[str] = ()) -> list[Problem]:
    """``organizations``: slug -> kind of every organization; ``granted_roles``: every role
    some grant (organization or platform) gives."""
    rules = _numbered(files)
    problems: set[Problem] = set()
    for view in _views(files, rules, organizations):
        problems.update(_unreachable(view))
    for rule in rules:
        domain, condition = rule.tokens[2], rule.tokens[5]
        if condition.strip() == "False":
            problems.add(Problem(rule.where, "the condition is always false: the rule never "
                                 "applies"))
        if rule.file.startswith("orgs/"):
            slug = rule.file[len("orgs/"):-len(".csv")]
            if domain not in ("*", slug):
                problems.add(Problem(rule.where, f"domain {domain!r} in the file of {slug!r}: "
                                     "the rule never applies (use *)"))
        elif organizations is not None and domain != "*" and domain not in organizations:
            problems.add(Problem(rule.where, f"there is no organization {domain!r}"))
    if organizations is not None:
        for slug in files.orgs:
            if slug not in organizations:
                problems.add(Problem(f"orgs/{slug}.csv", f"there is no organization "
                                     f"{slug!r}"))
    defined = files.roles() | _inheriting_roles(files) | {"member"}
    for role in sorted(set(granted_roles) - defined):
        problems.add(Problem("database", f"role {role!r} is granted but no rule gives it "
                             "anything"))
    return sorted(problems)


def lint_folder(folder: Path, **known) -> list[Problem]:
    return lint(load_policy_files(folder), **known)


def _numbered(files: PolicyFiles) -> list[_Rule]:
    sources = [("platform.csv", files.platform),
               *((f"kinds/{kind}.csv", lines) for kind, lines in files.kinds.items()),
               *((f"orgs/{slug}.csv", lines) for slug, lines in files.orgs.items())]
    rules = []
    for name, lines in sources:
        numbers = files.line_numbers.get(name, [0] * len(lines))
        for number, line in zip(numbers, lines, strict=True):
            if line[0] == "p":
                rules.append(_Rule(f"{name}:{number}", name, tuple(line)))
    return rules


def _views(files: PolicyFiles, rules: list[_Rule],
           organizations: Mapping[str, str] | None) -> list[list[_Rule]]:
    """The rule sets organizations see: platform + each kind's template, and for each
    organization file, platform + its kind (every kind when the kind is unknown) + it."""
    by_file: dict[str, list[_Rule]] = {}
    for rule in rules:
        by_file.setdefault(rule.file, []).append(rule)
    platform = by_file.get("platform.csv", [])
    views = [platform + by_file.get(f"kinds/{kind}.csv", []) for kind in KINDS]
    for slug in files.orgs:
        kind = (organizations or {}).get(slug)
        for each in ([kind] if kind in KINDS else KINDS):
            views.append(platform + by_file.get(f"kinds/{each}.csv", [])
                         + by_file.get(f"orgs/{slug}.csv", []))
    return views


def _unreachable(view: list[_Rule]) -> list[Problem]:
    problems = []
    seen: dict[tuple[str, ...], _Rule] = {}
    for rule in view:
        first = seen.setdefault(rule.key, rule)
        if first is not rule:
            problems.append(Problem(rule.where, f"the same rule as {first.where}"))
    denies = [rule for rule in view if rule.tokens[6] == "deny" and rule.tokens[5] == "True"]
    for rule in view:
        if rule.tokens[6] != "allow":
            continue
        for deny in denies:
            if _covers(deny.tokens, rule.tokens):
                problems.append(Problem(rule.where, f"never allows anything: the deny at "
                                        f"{deny.where} always wins"))
                break
    return problems


def _covers(deny: tuple[str, ...], allow: tuple[str, ...]) -> bool:
    """Every request the allow matches, the unconditional deny matches too."""
    _, role, domain, obj, action, _, _ = deny
    return (role in ("*", allow[1]) and domain in ("*", allow[2])
            and _pattern_covers(obj, allow[3]) and action in ("*", allow[4]))


def _pattern_covers(pattern: str, other: str) -> bool:
    """Whether ``pattern`` matches every object type ``other`` matches. Casbin's keyMatch
    compares up to the first * only: ``a*`` matches every type that starts with ``a``."""
    if "*" not in pattern:
        return pattern == other
    prefix = pattern[:pattern.index("*")]
    return other.split("*", 1)[0].startswith(prefix)


def _inheriting_roles(files: PolicyFiles) -> set[str]:
    groups = [*files.kinds.values(), *files.orgs.values()]
    return {line[1] for lines in groups for line in lines if line[0] == "g"}
