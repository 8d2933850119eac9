"""Reading and checking policy files: ``platform.csv``, ``kinds/<kind>.csv`` and
``orgs/<slug>.csv`` beside ``model.conf``.

Every line is checked before anything is used, so a broken file is refused whole with its
file, line and reason, and the policy in force stays as it was.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from policies.errors import PolicyError

KINDS = ("partner", "vendor", "internal")
SHIPPED_MODEL = Path(__file__).resolve().parent / "model.conf"
MODEL_SECTIONS = {"request_definition": "r", "policy_definition": "p", "role_definition": "g",
                  "policy_effect": "e", "matchers": "m"}
EFFECTS = ("allow", "deny")
CONDITION_ROOTS = {"r"}
REQUEST_PARTS = {"sub", "obj", "ctx", "dom"}


@dataclass
class PolicyFiles:
    platform: list[list[str]] = field(default_factory=list)
    kinds: dict[str, list[list[str]]] = field(default_factory=dict)
    orgs: dict[str, list[list[str]]] = field(default_factory=dict)
    fingerprint: str = ""
    # "platform.csv", "kinds/partner.csv", "orgs/acme.csv" -> the line number of each rule
    line_numbers: dict[str, list[int]] = field(default_factory=dict)

    def lines_for(self, org: str, kind: str, extra: list[list[str]] | None = None
                  ) -> list[list[str]]:
        """The rules of one organization (``extra``: its uploaded policy): template domains
        (*) become the organization."""
        lines = [*self.platform, *self.kinds.get(kind, []), *self.orgs.get(org, []),
                 *(extra or [])]
        return [[*line[:3], org] if line[0] == "g" and line[3] == "*" else list(line)
                for line in lines]

    def locate(self, rule: tuple[str, ...] | list[str]) -> str:
        """Where a policy row (``sub, dom, obj, act, cond, eft``) is written: the first
        ``file:line`` holding it, or "" when no file does (an uploaded policy)."""
        index = self.__dict__.get("_where")
        if index is None:
            index = {}
            groups = [("platform.csv", self.platform),
                      *((f"kinds/{k}.csv", lines) for k, lines in self.kinds.items()),
                      *((f"orgs/{o}.csv", lines) for o, lines in self.orgs.items())]
            for label, lines in groups:
                numbers = self.line_numbers.get(label, [0] * len(lines))
                for number, line in zip(numbers, lines, strict=False):
                    if line[0] == "p":
                        index.setdefault(tuple(line[1:]), f"{label}:{number}")
            self.__dict__["_where"] = index
        return index.get(tuple(rule), "")

    def roles(self) -> set[str]:
        """Every role some rule gives permissions to."""
        groups = [self.platform, *self.kinds.values(), *self.orgs.values()]
        return {line[1] for lines in groups for line in lines
                if line[0] == "p" and line[1] != "*"}


def load_policy_files(folder: Path) -> PolicyFiles:
    folder = Path(folder)
    digest = hashlib.sha256()
    files = PolicyFiles()
    _check_model(folder / "model.conf")
    platform = folder / "platform.csv"
    if not platform.exists():
        raise PolicyError("policy_missing", "The platform policy file is missing.",
                          f"{platform} not found")
    files.platform = _read(platform, digest, files.line_numbers, allow_grants=False)
    for kind in KINDS:
        path = folder / "kinds" / f"{kind}.csv"
        files.kinds[kind] = _read(path, digest, files.line_numbers) if path.exists() else []
    for path in sorted((folder / "orgs").glob("*.csv")):
        files.orgs[path.stem] = _read(path, digest, files.line_numbers)
    _check_role_links(files)
    files.fingerprint = digest.hexdigest()[:12]
    return files


def _read(path: Path, digest, line_numbers: dict[str, list[int]],
          allow_grants: bool = True) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _broken(path, 0, f"cannot be read: {exc}") from None
    digest.update(path.name.encode() + b"\0" + text.encode())
    lines, numbers = _parse(path, text, allow_grants)
    line_numbers.setdefault(_label(path), []).extend(numbers)
    return lines


def _parse(path: Path, text: str, allow_grants: bool) -> tuple[list[list[str]], list[int]]:
    lines, numbers = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = [token.strip() for token in line.split(",")]
        lines.append(_check_line(path, number, tokens, allow_grants))
        numbers.append(number)
    return lines, numbers


MAX_ORG_POLICY_BYTES = 256 * 1024


def parse_org_policy(files: PolicyFiles, slug: str, text: str) -> list[list[str]]:
    """Check an organization's own policy (uploaded, or about to be) as ``orgs/<slug>.csv``:
    every line as in the folder, rules only for this organization (domain ``*`` or the slug),
    and inherited roles that some rule defines. Raises ``PolicyError`` naming
    ``orgs/<slug>.csv:<line>`` and the reason; returns the rules."""
    path = Path("orgs") / f"{slug}.csv"
    if len(text.encode("utf-8", "replace")) > MAX_ORG_POLICY_BYTES:
        raise _broken(path, 0, f"larger than {MAX_ORG_POLICY_BYTES // 1024} KiB")
    if "\x00" in text:
        raise _broken(path, 0, "not a text file")
    lines, numbers = _parse(path, text, allow_grants=True)
    defined = files.roles() | {line[1] for line in lines if line[0] == "p" and line[1] != "*"}
    for number, line in zip(numbers, lines, strict=True):
        if line[0] == "p" and line[2] not in ("*", slug):
            raise _broken(path, number, f"domain {line[2]!r}: an organization's file may only "
                          f"hold rules for * or {slug!r}")
        if line[0] == "g" and line[3] not in ("*", slug):
            raise _broken(path, number, f"domain {line[3]!r}: use * or {slug!r}")
        if line[0] == "g" and line[2] not in defined:
            raise _broken(path, number, f"role {line[1]!r} inherits {line[2]!r}, which no "
                          "rule defines")
    return lines


def read_model(path: Path) -> tuple[dict[str, tuple[int, str]], dict[str, int]]:
    """``key -> (line, value)`` and ``section -> line`` of a Casbin model file, checked line
    by line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _broken(path, 0, f"cannot be read: {exc}") from None
    section, found, sections = None, {}, {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name = line[1:-1].strip() if line.endswith("]") else None
            if name not in MODEL_SECTIONS:
                raise _broken(path, number, f"unknown section {line!r} (expected one of "
                              + ", ".join(f"[{n}]" for n in MODEL_SECTIONS) + ")")
            if name in sections:
                raise _broken(path, number, f"[{name}] appears twice")
            section, sections[name] = name, number
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), " ".join(value.split())
        if section is None:
            raise _broken(path, number, "a definition before the first [section]")
        if not equals or not key or not value:
            raise _broken(path, number, "expected 'key = value'")
        if not key.startswith(MODEL_SECTIONS[section]):
            raise _broken(path, number, f"{key!r} does not belong in [{section}]")
        if key in found:
            raise _broken(path, number, f"{key!r} is defined twice")
        found[key] = (number, value)
    return found, sections


def _check_model(path: Path) -> None:
    """The model beside the policy files must be the one the engine implements (its fast
    path decides as this matcher does): a malformed or different model is refused."""
    if not path.exists():
        return  # the shipped model is used
    model, sections = read_model(path)
    expected, _ = read_model(SHIPPED_MODEL)
    section_of = {prefix: name for name, prefix in MODEL_SECTIONS.items()}
    for key, (_, value) in expected.items():
        if key not in model:
            section = section_of[key[0]]
            raise _broken(path, sections.get(section, 0),
                          f"{key!r} is missing from [{section}]")
        number, given = model[key]
        if given != value:
            raise _broken(path, number, f"{key} differs from the model the engine "
                          f"implements ({value}); a new model needs a new engine")
    for key, (number, _) in model.items():
        if key not in expected:
            raise _broken(path, number, f"{key!r} is not part of the model the engine "
                          "implements")


def _check_line(path: Path, number: int, tokens: list[str], allow_grants: bool) -> list[str]:
    kind = tokens[0]
    if kind == "p":
        if len(tokens) != 7:
            raise _broken(path, number, "a p rule has 6 fields: role, domain, object, action, "
                          "condition, effect (a condition may not contain commas)")
        _, role, _domain, obj, action, condition, effect = tokens
        if not all((role, obj, action, condition)):
            raise _broken(path, number, "a field is empty")
        if effect not in EFFECTS:
            raise _broken(path, number, f"effect must be allow or deny, not {effect!r}")
        _check_condition(path, number, condition)
        return tokens
    if kind == "g" and allow_grants:
        if len(tokens) != 4 or (tokens[3] != "*" and path.parent.name != "orgs"):
            raise _broken(path, number, "a g rule here is: g, role, inherited role, *")
        return tokens
    raise _broken(path, number, f"unknown rule type {kind!r} (expected p"
                  f"{' or g' if allow_grants else ''})")


def _check_condition(path: Path, number: int, condition: str) -> None:
    source = condition.replace("&&", " and ").replace("||", " or ")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _broken(path, number, f"condition is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call | ast.Lambda | ast.Subscript | ast.NamedExpr):
            raise _broken(path, number, "conditions may only compare attributes and values")
        if isinstance(node, ast.Name) and node.id not in CONDITION_ROOTS | {"True", "False",
                                                                            "None"}:
            raise _broken(path, number, f"unknown name {node.id!r} in condition (use r.sub, "
                          "r.obj, r.ctx or r.dom)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "r" and node.attr not in REQUEST_PARTS:
            raise _broken(path, number, f"unknown request part r.{node.attr}")


def _check_role_links(files: PolicyFiles) -> None:
    """A template may only inherit roles that some rule defines."""
    defined = files.roles()
    sources = [("kinds/" + k, ls) for k, ls in files.kinds.items()] + \
        [("orgs/" + o, ls) for o, ls in files.orgs.items()]
    for name, lines in sources:
        for line in lines:
            if line[0] == "g" and line[2] not in defined:
                raise PolicyError("policy_invalid", "A policy file is broken; the previous "
                                  "policy stays in force.",
                                  f"{name}.csv: role {line[1]!r} inherits {line[2]!r}, which "
                                  "no rule defines")


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name in ("kinds", "orgs") \
        else path.name


def _broken(path: Path, number: int, reason: str) -> PolicyError:
    where = _label(path)
    return PolicyError("policy_invalid", "A policy file is broken; the previous policy stays "
                       "in force.", f"{where}:{number}: {reason}")
