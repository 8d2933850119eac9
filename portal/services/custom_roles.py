"""Custom roles: an organization's owner composes a role from the permissions the platform's
policy allows for the organization's kind, and grants it like a built-in role.

The permissions on offer are the unconditional allow rules of the kind's template (and of the
organization's own policy file): ``(object type, action)`` pairs such as ``member/read``.
Rules with a condition (``buyer`` approving orders up to an amount) are not offered; such
roles stay in the policy files. The engine reads custom roles as allow rows of this
organization only (``portal.authz``), and a committed change reaches every worker within the
engine's version check.

No escalation: whoever creates or changes a role must hold every permission in it, and
granting a custom role needs the same (``grantable``). A role still held by someone, offered
by an invitation or mapped from an identity provider's group is not deleted unless the
admin asks for its grants and invitations to be revoked with it (audited).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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
    ("member", "read"): "see members",
    ("member", "manage"): "suspend, resume and remove members",
    ("invitation", "manage"): "invite people",
    ("role", "grant"): "grant and revoke roles (only roles they hold)",
    ("connection", "read"): "see single sign-on connections",
    ("connection", "manage"): "set up and change single sign-on",
    ("connection", "test"): "run test sign-ins",
    ("domain", "manage"): "add, verify and remove domains",
    ("branding", "manage"): "change the branding",
    ("policy", "simulate"): "try decisions in the policy simulator",
}


def label(permission: Permission) -> str:
    return LABELS.get(tuple(permission), f"{permission[1]} {permission[0]}")
Permission = tuple[str, str]  # (object type, action)


@dataclass(frozen=True)
class Usage:
    grants: int
    invitations: int
    connections: list[str]

    @property
    def in_use(self) -> bool:
        return bool(self.grants or self.invitations or self.connections)


def catalogue(files: Any, org: Organization) -> list[Permission]:
    """The permissions an owner may compose roles from: unconditional allows of the kind's
    template and the organization's own file, without wildcards."""
    lines = [*files.kinds.get(org.kind.value, []), *files.orgs.get(org.slug, [])]
    found = {(line[3], line[4]) for line in lines
             if line[0] == "p" and line[1] != "*" and line[5] == "True"
             and line[6] == "allow" and "*" not in line[3] and line[4] != "*"}
    return sorted(found)


def held_permissions(engine: Any, subject: dict[str, Any], org: Organization
                     ) -> frozenset[Permission]:
    """The unconditional permissions the subject holds in the organization."""
    return frozenset((p["object"], p["action"]) for p in engine.permissions(subject, org.slug)
                     if p["condition"] is None)


def list_for(session: Session, org: Organization) -> list[CustomRole]:
    return list(session.scalars(sa.select(CustomRole).where(
        CustomRole.organization_id == org.id).order_by(CustomRole.name)))


def names(session: Session, org: Organization) -> list[str]:
    return [role.name for role in list_for(session, org)]


def grantable(session: Session, org: Organization, held: frozenset[Permission]) -> frozenset[str]:
    """Custom roles whose every permission ``held`` covers: the ones this admin may grant."""
    return frozenset(role.name for role in list_for(session, org)
                     if {tuple(p) for p in role.permissions} <= held)


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


def _permissions(raw: Iterable[Any], offered: list[Permission], held: frozenset[Permission],
                 operator: bool) -> list[list[str]]:
    """``member/read`` strings (or pairs) -> sorted [[object, action]]; each must be on offer
    and held by the admin."""
    chosen: set[Permission] = set()
    for item in raw:
        if isinstance(item, str) and "/" in item:
            obj, _, act = item.partition("/")
        elif isinstance(item, list | tuple) and len(item) == 2 and all(
                isinstance(part, str) for part in item):
            obj, act = item
        else:
            raise ValidationError("Each permission looks like member/read.",
                                  code="invalid_permission")
        if (obj, act) not in offered:
            raise ValidationError(f"{obj}/{act} is not a permission roles of this "
                                  "organization can have.", code="invalid_permission")
        chosen.add((obj, act))
    if not chosen:
        raise ValidationError("Choose at least one permission.", code="invalid_permission")
    missing = sorted(chosen - held)
    if missing and not operator:
        raise Forbidden("You can only put permissions you hold yourself into a role; you do "
                        f"not hold {', '.join(f'{o}/{a}' for o, a in missing)}.",
                        code="escalation")
    return [list(p) for p in sorted(chosen)]


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
           description: str, permissions: Iterable[Any], offered: list[Permission],
           built_in: Iterable[str], held: frozenset[Permission], actor_id: int | None,
           operator: bool = False) -> CustomRole:
    name = _clean_name(name, built_in)
    chosen = _permissions(permissions, offered, held, operator)
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
                 details={"permissions": [f"{o}/{a}" for o, a in chosen],
                          "description": role.description})
    return role


def update(session: Session, ctx: audit.Context, org: Organization, role_id: int, *,
           description: str, permissions: Iterable[Any], offered: list[Permission],
           held: frozenset[Permission], operator: bool = False) -> CustomRole:
    """Change the permissions (all must be held by the admin, the removed ones too: nobody
    takes away what they could not give) and the description."""
    role = get(session, org, role_id)
    chosen = _permissions(permissions, offered, held, operator)
    before = [tuple(p) for p in role.permissions]
    missing = sorted(set(before) - held)
    if missing and not operator:
        raise Forbidden("This role has permissions you do not hold "
                        f"({', '.join(f'{o}/{a}' for o, a in missing)}); only someone who "
                        "holds them may change it.", code="escalation")
    role.permissions, role.description = chosen, _description(description)
    role.updated_at = utcnow()
    session.flush()
    audit.record(session, ctx, "custom_role.update", target=f"role:{role.name}",
                 organization_id=org.id,
                 details={"before": [f"{o}/{a}" for o, a in before],
                          "after": [f"{o}/{a}" for o, a in chosen]})
    return role


def delete(session: Session, ctx: audit.Context, org: Organization, role_id: int, *,
           held: frozenset[Permission], revoke: bool = False, operator: bool = False) -> Usage:
    """Delete the role. While someone holds it or an invitation offers it, this is refused
    unless ``revoke``: then those grants and invitations go with it, in the same audited
    transaction. A role mapped from an IdP group is always refused: change the mapping
    first, or the next sign-in would grant a role that no longer exists."""
    role = get(session, org, role_id)
    missing = sorted({tuple(p) for p in role.permissions} - held)
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
                          "permissions": [f"{o}/{a}" for o, a in
                                          (tuple(p) for p in role.permissions)]})
    return used
