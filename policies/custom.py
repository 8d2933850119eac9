"""The conditions an organization's owner may attach to a permission of a custom role.

A custom role's permission comes from an allow rule of the organization's kind template (or
its own policy file): ``member/read`` from an unconditional rule, or
``purchase_order/approve`` *when* ``r.obj.owner_org == r.dom and r.obj.amount <= 50000``
from a conditional one. The owner may narrow it further with the refinements below, and
only narrow it: the rule the engine builds is the template rule's condition AND each chosen
refinement, so no choice can reach beyond the template (nor beyond the platform's denies,
which still win). The refinements are fixed expressions with at most one whole number in
them; nothing an owner types becomes policy text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from policies.errors import PolicyError

OWN_ORG = "r.obj.owner_org == r.dom"
MFA = "r.ctx.assurance != None and r.ctx.assurance >= 2"
AMOUNT_LIMIT = 10**12
REFINEMENTS = {  # key -> what it means, in the admins' words
    "own_org": "only objects of this organization",
    "amount_max": "amount at most",
    "mfa": "only after a two-step sign-in (MFA)",
}
_CAP = re.compile(r"r\.obj\.amount\s*<=\s*(\d+)")


class RefinementError(PolicyError):
    """A stored or submitted refinement the platform does not allow."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_condition", detail, detail)


def applicable(object_type: str, when: str, lines: Iterable[list[str]]) -> tuple[str, ...]:
    """Which refinements make sense for a permission on ``object_type``: the amount limit
    where some rule on that type compares ``r.obj.amount``, own-organization objects where
    some rule reads ``r.obj.owner_org`` (unless the rule already requires it), and MFA
    always."""
    conditions = [line[5] for line in lines
                  if line and line[0] == "p" and len(line) > 5 and line[3] == object_type]
    found = []
    if OWN_ORG not in when and any("r.obj.owner_org" in c for c in conditions):
        found.append("own_org")
    if any("r.obj.amount" in c for c in conditions):
        found.append("amount_max")
    found.append("mfa")
    return tuple(found)


def amount_cap(when: str) -> int | None:
    """The template's own amount limit in ``when`` (``r.obj.amount <= 50000``), if any."""
    caps = [int(n) for n in _CAP.findall(when)]
    return min(caps) if caps else None


def clean(refinements: Mapping[str, Any] | None) -> dict[str, Any]:
    """Refinements as stored: only known keys, only set values, an amount a whole number."""
    result: dict[str, Any] = {}
    for key, value in (refinements or {}).items():
        if key not in REFINEMENTS:
            raise RefinementError(f"unknown condition {key!r}")
        if key == "amount_max":
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value <= AMOUNT_LIMIT:
                raise RefinementError(f"the amount limit must be a whole number from 0 to "
                                      f"{AMOUNT_LIMIT}")
            result[key] = value
        elif value is True:
            result[key] = True
        elif value not in (False, None):
            raise RefinementError(f"{key} is true or false")
    return result


def compose(when: str, refinements: Mapping[str, Any] | None) -> str:
    """The condition of the engine's rule: the template rule's AND the refinements."""
    chosen = clean(refinements)
    parts = [] if when == "True" else [f"({when})"]
    if chosen.get("own_org"):
        parts.append(OWN_ORG)
    if "amount_max" in chosen:
        parts.append(f"r.obj.amount <= {chosen['amount_max']}")
    if chosen.get("mfa"):
        parts.append(MFA)
    return " and ".join(parts) or "True"
