"""Home-realm discovery: which connection(s) serve the organization that owns an email's
verified domain. Unverified domains never route anyone anywhere."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal.models import Connection, Domain

# Every sign-in form post runs this: one prebuilt statement, not two built per call.
FOR_DOMAIN = (sa.select(Connection)
              .join(Domain, Domain.organization_id == Connection.organization_id)
              .where(Domain.name == sa.bindparam("domain"), Domain.verified.is_(True),
                     Domain.suspended_at.is_(None), Connection.enabled.is_(True))
              .order_by(Connection.name))


def connections_for_email(session: Session, email: str) -> list[Connection]:
    domain = email.rpartition("@")[2].strip().lower()
    if not domain:
        return []
    return list(session.scalars(FOR_DOMAIN, {"domain": domain}))


def connections_for_org(session: Session, org_id: int) -> list[Connection]:
    return list(session.scalars(sa.select(Connection).where(
        Connection.organization_id == org_id, Connection.enabled.is_(True))
        .order_by(Connection.name)))


def platform_connections(session: Session) -> list[Connection]:
    """Sign-ins open to anyone (social or bring-your-own identity), shown on /login."""
    return list(session.scalars(sa.select(Connection).where(
        Connection.organization_id.is_(None), Connection.enabled.is_(True))
        .order_by(Connection.name)))
