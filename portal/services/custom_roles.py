"""Custom roles: an organization's owner composes a role from the permissions the platform's
policy allows for the organization's kind, and grants it like a built-in role.

The permissions on offer are the allow rules of the kind's template (and of the organization's
own policy file), each an :class:`Offer`: ``member/read`` from an unconditional rule, or
``purchase_order/approve`` from a conditional one (``buyer`` approving their organization's
orders up to 50,000), which keeps its condition. The owner may narrow any of them with the
refinements the platform allows (``policies.custom``: an amount limit, own-organization
objects, MFA). The engine reads custom roles as allow rows of this organization only
(``portal.authz``), composing template condition AND refinements, and a committed change
reaches every worker within the engine's version check.

A role's ``permissions`` are stored as ``[object, action]`` (unconditional, no refinement) or
``[object, action, {"when": <template condition>, <refinements>}]``.

No escalation: whoever creates or changes a role must hold every permission in it (the same
rule, or the permission unconditionally; a narrowed copy does not count), and granting a
custom role needs the same (``grantable``). A role still held by someone, offered
by an invitation or mapped from an identity provider's group is not deleted unless the
admin asks for its grants and invitations to be revoked with it (audited).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from policies import custom as refine
from portal import audit
from portal.db import utcnow
from portal.errors import Conflict, Forbidden, NotFound, ValidationError
from portal.models import Connection, CustomRole, Invitation, Organization, RoleGrant

NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
LABELS = {  # what a permission lets someone do, in the admins' words
    ("organization", "read"): "see the organization's portal",
    ("organization", "manage"): "manage organization settings and API tokens",
    ("app", "open"): "open the organization's apps",
    ("audit", "read"): "read the audit trail",
    ("risk", "read"): "see members' sign-ins with their risk score",
    ("member", "read"): "see members",
    ("member", "manage"): "suspend, resume and remove members; record identity checks",
    ("invitation", "manage"): "invite people",
    ("role", "grant"): "grant and revoke roles (only roles they hold)",
    ("connection", "read"): "see single sign-on connections",
    ("connection", "manage"): "set up and change single sign-on",
    ("connection", "test"): "run test sign-ins",
    ("domain", "manage"): "add, verify and remove domains",
    ("branding", "manage"): "change the branding",
    ("policy", "simulate"): "try decisions in the policy simulator",
}


Permission = tuple[str, str]  # (object type, action)
Held = frozenset[tuple[str, str, str]]  # (object type, action, condition or "True")


def label(permission: Any) -> str:
    obj, act = permission[0], permission[1]
    return LABELS.get((obj, act), f"{act} {obj}")


@dataclass(frozen=True)
class Offer:
    """A permission a custom role may have: an allow rule of the template, its condition
    (``"True"`` for none), and the refinements an owner may add to it."""

    object: str
    action: str
    when: str
    refinements: tuple[str, ...]

    @property
    def key(self) -> str:
        """``member/read``; a conditional rule's key carries a digest of its condition, so it
        stays the same while the template's rule does."""
        base = f"{self.object}/{self.action}"
        if self.when == "True":
            return base
        return f"{base}@{hashlib.sha256(self.when.encode()).hexdigest()[:8]}"

    @property
    def cap(self) -> int | None:
        return refine.amount_cap(self.when)

    @property
    def label(self) -> str:
        return label((self.object, self.action))


@dataclass(frozen=True)
class Usage:
    grants: int
    invitations: int
    connections: list[str]

    @property
    def in_use(self) -> bool:
        return bool(self.grants or self.invitations or self.connections)


def catalogue(files: Any, org: Organization) -> list[Offer]:
    """The permissions an owner may compose roles from: the allow rules of the kind's
    template and the organization's own file that name a role and no wildcard, with their
    conditions."""
    lines = [*files.kinds.get(org.kind.value, []), *files.orgs.get(org.slug, [])]
    found = {(line[3], line[4], line[5]) for line in lines
             if line[0] == "p" and line[1] != "*" and line[6] == "allow"
             and "*" not in line[3] and line[4] != "*"}
    return [Offer(obj, act, when, refine.applicable(obj, when, lines))
            for obj, act, when in sorted(found, key=lambda f: (f[0], f[1], f[2] != "True",
                                                              f[2]))]


def held_permissions(engine: Any, subject: dict[str, Any], org: Organization) -> Held:
    """What the subject holds in the organization: (object, action, condition) of every
    allow rule reaching them, ``"True"`` for an unconditional one."""
    return frozenset((p["object"], p["action"], p["condition"] or "True")
                     for p in engine.permissions(subject, org.slug))


def holds(held: Held, entry: Any) -> bool:
    """Whether ``held`` covers a stored permission entry: unconditionally, or through the
    very rule it was composed from (refinements only narrow it)."""
    obj, act = entry[0], entry[1]
    when = entry[2].get("when", "True") if len(entry) > 2 else "True"
    return (obj, act, "True") in held or (obj, act, when) in held


def describe(entry: Any, offers: Iterable[Offer] = ()) -> str:
    """``purchase_order/approve (amount at most 20000, with MFA)``: a stored permission as
    the pages, the API and the audit trail show it."""
    text = f"{entry[0]}/{entry[1]}"
    if len(entry) <= 2:
        return text
    details = entry[2]
    parts = []
    if details.get("when", "True") != "True":
        parts.append(f"when {details['when']}")
    if details.get("own_org"):
        parts.append("own organization's only")
    if "amount_max" in details:
        parts.append(f"amount at most {details['amount_max']}")
    if details.get("mfa"):
        parts.append("with MFA")
    return f"{text} ({', '.join(parts)})" if parts else text


def entry_key(entry: Any) -> str:
    """The offer key a stored entry was made from (``member/read``, ``x/y@digest``)."""
    when = entry[2].get("when", "True") if len(entry) > 2 else "True"
    return Offer(entry[0], entry[1], when, ()).key


def refinements_of(entry: Any) -> dict[str, Any]:
    return {k: v for k, v in entry[2].items() if k != "when"} if len(entry) > 2 else {}


def list_for(session: Session, org: Organization) -> list[CustomRole]:
    return list(session.scalars(sa.select(CustomRole).where(
        CustomRole.organization_id == org.id).order_by(CustomRole.name)))


def names(session: Session, org: Organization) -> list[str]:
    return [role.name for role in list_for(session, org)]


def grantable(session: Session, org: Organization, held: Held) -> frozenset[str]:
    """Custom roles whose every permission ``held`` covers: the ones this admin may grant."""
    return frozenset(role.name for role in list_for(session, org)
                     if all(holds(held, entry) for entry in role.permissions))


def get(session: Session, org: Organization, role_id: int) -> CustomRole:
    found = session.scalar(sa.select(CustomRole).where(CustomRole.id == role_id,
                                                       CustomRole.organization_id == org.id))
    if found is None:
        raise NotFound("There is no such role in this organization.", code="unknown_role")
    return found


def usage(session: Session, org: Organization, name: str) -> Usage:
    grants = session.scalar(sa.select(sa.func.count(sa.distinct(RoleGrant.user_id))).where(
        RoleGrant.organization_id == org.id, RoleGrant.role == name)) or 0
    invitations = session.scalar(sa.select(sa.func.count(Invitation.id)).where(
        Invitation.organization_id == org.id, Invitation.role == name,
        Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None))) or 0
    mapped = [c.name for c in session.scalars(sa.select(Connection).where(
        Connection.organization_id == org.id)) if name in (c.group_roles or {}).values()]
    return Usage(grants, invitations, mapped)


def _permissions(raw: Iterable[Any], offered: list[Offer], held: Held, operator: bool,
                 conditions: Mapping[str, Any] | None = None) -> list[list[Any]]:
    """Offer keys (``member/read``, ``purchase_order/approve@1a2b3c4d``; or ``[object,
    action]`` pairs) and, per key, the refinements chosen for it -> stored entries. Each must
    be on offer, each refinement allowed for it, and the admin must hold each permission."""
    by_key = {offer.key: offer for offer in offered}
    conditions = dict(conditions or {})
    chosen: dict[str, list[Any]] = {}
    for item in raw:
        if isinstance(item, list | tuple) and len(item) == 2 and all(
                isinstance(part, str) for part in item):
            item = f"{item[0]}/{item[1]}"
        if not isinstance(item, str) or "/" not in item:
            raise ValidationError("Each permission looks like member/read.",
                                  code="invalid_permission")
        offer = by_key.get(item)
        if offer is None:
            conditional = [o.key for o in offered if f"{o.object}/{o.action}" == item]
            hint = (f" It exists only with the platform's condition: choose "
                    f"{' or '.join(conditional)}." if conditional else "")
            raise ValidationError(f"{item} is not a permission roles of this organization "
                                  f"can have.{hint}", code="invalid_permission")
        chosen[item] = _entry(offer, conditions.pop(item, None))
    if conditions:
        raise ValidationError(f"Conditions for {', '.join(sorted(conditions))}, which the "
                              "role does not have.", code="invalid_condition")
    if not chosen:
        raise ValidationError("Choose at least one permission.", code="invalid_permission")
    missing = sorted(key for key, entry in chosen.items() if not holds(held, entry))
    if missing and not operator:
        raise Forbidden("You can only put permissions you hold yourself into a role; you do "
                        f"not hold {', '.join(missing)}.", code="escalation")
    return [chosen[key] for key in sorted(chosen)]


def _entry(offer: Offer, wanted: Any) -> list[Any]:
    """One stored permission: the offer, narrowed by the refinements it allows."""
    if wanted is None:
        wanted = {}
    if not isinstance(wanted, Mapping):
        raise ValidationError(f"The conditions of {offer.key} are an object such as "
                              '{"amount_max": 20000, "mfa": true}.', code="invalid_condition")
    not_here = sorted(set(wanted) - set(offer.refinements))
    if [k for k in not_here if wanted[k] not in (None, False)]:
        raise ValidationError(f"{offer.key} cannot have the condition "
                              f"{', '.join(not_here)}; it allows "
                              f"{', '.join(offer.refinements) or 'none'}.",
                              code="invalid_condition")
    try:
        picked = refine.clean({k: v for k, v in wanted.items() if k in offer.refinements})
    except refine.RefinementError as error:
        raise ValidationError(f"{offer.key}: {error.detail}.", code="invalid_condition") \
            from None
    cap = offer.cap
    if cap is not None and picked.get("amount_max", 0) > cap:
        raise ValidationError(f"{offer.key}: the amount limit can be at most {cap}, the "
                              "platform's own limit.", code="invalid_condition")
    if offer.when == "True" and not picked:
        return [offer.object, offer.action]
    return [offer.object, offer.action, {"when": offer.when, **picked}]


def _clean_name(name: str, reserved: Iterable[str]) -> str:
    name = (name or "").strip().lower()
    if not NAME.match(name):
        raise ValidationError("A role name is 2 to 40 lowercase letters, digits or "
                              "underscores, starting with a letter.", code="invalid_role_name")
    if name in set(reserved):
        raise Conflict(f"{name} is a built-in role; choose another name.", code="role_exists")
    return name


def _description(text: str) -> str:
    text = (text or "").strip()
    if len(text) > 300:
        raise ValidationError("The description must be at most 300 characters.",
                              code="invalid_description")
    return text


def create(session: Session, ctx: audit.Context, org: Organization, *, name: str,
           description: str, permissions: Iterable[Any], offered: list[Offer],
           built_in: Iterable[str], held: Held, actor_id: int | None,
           operator: bool = False, conditions: Mapping[str, Any] | None = None
           ) -> CustomRole:
    name = _clean_name(name, built_in)
    chosen = _permissions(permissions, offered, held, operator, conditions)
    if session.scalar(sa.select(CustomRole.id).where(CustomRole.organization_id == org.id,
                                                     CustomRole.name == name)) is not None:
        raise Conflict(f"This organization already has a role {name}.", code="role_exists")
    role = CustomRole(organization_id=org.id, name=name, description=_description(description),
                      permissions=chosen, created_by_id=actor_id)
    session.add(role)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"This organization already has a role {name}.",
                       code="role_exists") from None
    audit.record(session, ctx, "custom_role.create", target=f"role:{name}",
                 organization_id=org.id,
                 details={"permissions": [describe(e) for e in chosen],
                          "description": role.description})
    return role


def update(session: Session, ctx: audit.Context, org: Organization, role_id: int, *,
           description: str, permissions: Iterable[Any], offered: list[Offer],
           held: Held, operator: bool = False,
           conditions: Mapping[str, Any] | None = None) -> CustomRole:
    """Change the permissions (all must be held by the admin, the removed ones too: nobody
    takes away what they could not give) and the description."""
    role = get(session, org, role_id)
    chosen = _permissions(permissions, offered, held, operator, conditions)
    before = list(role.permissions)
    missing = [describe(e) for e in before if not holds(held, e)]
    if missing and not operator:
        raise Forbidden(f"This role has permissions you do not hold ({', '.join(missing)}); "
                        "only someone who holds them may change it.", code="escalation")
    role.permissions, role.description = chosen, _description(description)
    role.updated_at = utcnow()
    session.flush()
    audit.record(session, ctx, "custom_role.update", target=f"role:{role.name}",
                 organization_id=org.id,
                 details={"before": [describe(e) for e in before],
                          "after": [describe(e) for e in chosen]})
    return role


def delete(session: Session, ctx: audit.Context, org: Organization, role_id: int, *,
           held: Held, revoke: bool = False, operator: bool = False) -> Usage:
    """Delete the role. While someone holds it or an invitation offers it, this is refused
    unless ``revoke``: then those grants and invitations go with it, in the same audited
    transaction. A role mapped from an IdP group is always refused: change the mapping
    first, or the next sign-in would grant a role that no longer exists."""
    role = get(session, org, role_id)
    missing = [e for e in role.permissions if not holds(held, e)]
    if missing and not operator:
        raise Forbidden("This role has permissions you do not hold; only someone who holds "
                        "them may delete it.", code="escalation")
    used = usage(session, org, role.name)
    if used.connections:
        raise Conflict(f"The single sign-on connection {', '.join(used.connections)} maps a "
                       f"group to {role.name}. Change that mapping first.", code="role_in_use")
    if used.in_use and not revoke:
        raise Conflict(f"{role.name} is held by {used.grants} member(s) and offered by "
                       f"{used.invitations} open invitation(s). Revoke it from them first, or "
                       "delete it and revoke it everywhere at once.", code="role_in_use")
    if revoke:
        session.execute(sa.delete(RoleGrant).where(RoleGrant.organization_id == org.id,
                                                   RoleGrant.role == role.name))
        session.execute(sa.update(Invitation).where(
            Invitation.organization_id == org.id, Invitation.role == role.name,
            Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None))
            .values(revoked_at=utcnow()))
    name = role.name
    session.delete(role)
    session.flush()
    audit.record(session, ctx, "custom_role.delete", target=f"role:{name}",
                 organization_id=org.id,
                 details={"revoked_grants": used.grants if revoke else 0,
                          "revoked_invitations": used.invitations if revoke else 0,
                          "permissions": [describe(e) for e in role.permissions]})
    return used
