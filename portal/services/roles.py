"""Organization role grants, with where each came from."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.models import RoleGrant


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
