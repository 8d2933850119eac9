"""Organization role grants, with where each came from."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.errors import ValidationError
from portal.models import Organization, RoleGrant, User

MANUAL = "manual"


class DatabaseRoleGrants:
    """The grant store provisioning syncs IdP roles into (see ``federation.provisioning``)."""

    def roles(self, session: Session, user_id: int, org_id: int, source: str) -> set[str]:
        return set(session.scalars(sa.select(RoleGrant.role).where(
            RoleGrant.user_id == user_id, RoleGrant.organization_id == org_id,
            RoleGrant.source == source)))

    def grant(self, session: Session, user_id: int, org_id: int, role: str,
              source: str) -> None:
        session.add(RoleGrant(user_id=user_id, organization_id=org_id, role=role,
                              source=source))
        session.flush()

    def revoke(self, session: Session, user_id: int, org_id: int, role: str,
               source: str) -> None:
        session.execute(sa.delete(RoleGrant).where(
            RoleGrant.user_id == user_id, RoleGrant.organization_id == org_id,
            RoleGrant.role == role, RoleGrant.source == source))


def roles_of(session: Session, user_id: int, org_id: int) -> set[str]:
    """Every role the user holds in the organization, whatever granted it."""
    return set(session.scalars(sa.select(RoleGrant.role).where(
        RoleGrant.user_id == user_id, RoleGrant.organization_id == org_id)))


def grant_manually(session: Session, ctx: audit.Context, user: User, org: Organization,
                   role: str, known_roles: set[str]) -> bool:
    """An admin grants a role; False when the user already holds it that way."""
    if role not in known_roles:
        raise ValidationError(f"No policy defines the role {role!r}.", code="unknown_role")
    if role in DatabaseRoleGrants().roles(session, user.id, org.id, MANUAL):
        return False
    DatabaseRoleGrants().grant(session, user.id, org.id, role, MANUAL)
    audit.record(session, ctx, "role.grant", target=f"user:{user.email}",
                 organization_id=org.id, details={"role": role, "source": MANUAL})
    return True


def revoke_manually(session: Session, ctx: audit.Context, user: User, org: Organization,
                    role: str) -> bool:
    """An admin revokes a role granted by hand (roles from an IdP follow the IdP)."""
    if role not in DatabaseRoleGrants().roles(session, user.id, org.id, MANUAL):
        return False
    DatabaseRoleGrants().revoke(session, user.id, org.id, role, MANUAL)
    audit.record(session, ctx, "role.revoke", target=f"user:{user.email}",
                 organization_id=org.id, details={"role": role, "source": MANUAL})
    return True
