"""Connects the policy engine to Trellis's database: grants from ``role_grants`` (and
``member`` for every active membership), platform roles from operator accounts,
organization kinds, and a version per organization that changes with every grant,
revocation, membership, operator or kind change, so every worker notices within the engine's
version check interval."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa

from policies import PolicyEngine, Sources
from policies.engine import PLATFORM
from portal.db import Database
from portal.models import Membership, MembershipStatus, Organization, RoleGrant, User

# Every active member holds "member"; other roles come from explicit grants.
GRANTS = sa.union(
    sa.select(RoleGrant.user_id, RoleGrant.role).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")),
    sa.select(Membership.user_id, sa.literal("member")).join(Organization)
    .where(Organization.slug == sa.bindparam("slug"),
           Membership.status == MembershipStatus.ACTIVE))
VERSION = sa.select(
    sa.select(sa.func.count(RoleGrant.id)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(RoleGrant.id), 0)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(Membership.updated_at), None)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.count(Membership.id)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.sum(User.id), 0)).where(User.is_operator.is_(True))
    .scalar_subquery(),
    sa.select(Organization.kind).where(Organization.slug == sa.bindparam("slug"))
    .scalar_subquery())
KIND = sa.select(Organization.kind).where(Organization.slug == sa.bindparam("slug"))
OPERATORS = sa.select(User.id).where(User.is_operator.is_(True))


def database_sources(db: Database) -> Sources:
    def grants(slug: str) -> list[tuple[str, str]]:
        with db.engine.connect() as connection:
            return [(str(user), role) for user, role in connection.execute(GRANTS,
                                                                           {"slug": slug})]

    def platform_roles() -> list[tuple[str, str]]:
        with db.engine.connect() as connection:
            return [(str(user), "platform_operator") for (user,) in
                    connection.execute(OPERATORS)]

    def org_kind(slug: str) -> str | None:
        if slug == PLATFORM:
            return "platform"  # platform rules only, platform roles only
        with db.engine.connect() as connection:
            kind = connection.execute(KIND, {"slug": slug}).scalar()
        return kind.value if kind is not None else None

    def version(slug: str) -> int:
        """The same number in every worker and after restarts, for the same data."""
        with db.engine.connect() as connection:
            row = connection.execute(VERSION, {"slug": slug}).one()
        digest = hashlib.sha256("|".join(str(value) for value in row).encode()).digest()
        return int.from_bytes(digest[:6], "big")

    return Sources(grants=grants, platform_roles=platform_roles, org_kind=org_kind,
                   version=version)


def create_engine(folder: Path, db: Database) -> PolicyEngine:
    return PolicyEngine(folder, database_sources(db))
