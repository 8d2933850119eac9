"""User accounts and their memberships."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from portal import audit
from portal.db import flush_or_conflict, utcnow
from portal.errors import Conflict, NotFound, ValidationError
from portal.models import (
    AuthSession,
    Membership,
    MembershipSource,
    MembershipStatus,
    Organization,
    User,
    UserStatus,
)
from portal.passwords import Passwords
from portal.services import organizations
from portal.validation import normalize_email


def create(session: Session, ctx: audit.Context, passwords: Passwords, *, email: str,
           password: str | None, display_name: str = "", org_slug: str | None = None,
           operator: bool = False) -> User:
    email = normalize_email(email)
    display_name = (display_name or "").strip()
    if len(display_name) > 200:
        raise ValidationError("The display name must be at most 200 characters.",
                              code="invalid_name")
    org = organizations.get(session, org_slug) if org_slug else None
    if session.scalar(sa.select(User.id).where(User.email == email)):
        raise Conflict(f"A user with the email {email} already exists.", code="duplicate_email")
    user = User(email=email, display_name=display_name, is_operator=operator,
                password_hash=passwords.hash(password) if password else None)
    session.add(user)
    flush_or_conflict(session, f"A user with the email {email} already exists.",
                       "duplicate_email")
    audit.record(session, ctx, "user.create", target=f"user:{email}",
                 details={"operator": operator, "local_password": bool(password)})
    if org is not None:
        add_membership(session, ctx, user, org, MembershipSource.MANUAL)
    return user


def add_membership(session: Session, ctx: audit.Context, user: User, org: Organization,
                   source: MembershipSource) -> Membership:
    membership = Membership(user=user, organization=org, source=source)
    session.add(membership)
    session.flush()
    audit.record(session, ctx, "membership.add", target=f"user:{user.email}",
                 organization_id=org.id, details={"source": source.value})
    return membership


def get_by_email(session: Session, email: str) -> User:
    user = session.scalar(sa.select(User).where(User.email == normalize_email(email)))
    if user is None:
        raise NotFound(f"There is no user with the email {email}.", code="unknown_user")
    return user


def list_users(session: Session, org_slug: str | None = None) -> list[User]:
    query = sa.select(User).options(selectinload(User.memberships)
                                    .selectinload(Membership.organization))
    if org_slug:
        org = organizations.get(session, org_slug)
        query = query.join(Membership).where(Membership.organization_id == org.id)
    return list(session.scalars(query.order_by(User.email)))


def suspend(session: Session, ctx: audit.Context, email: str, reason: str = "") -> User:
    """Suspension ends every session of the user at once."""
    user = get_by_email(session, email)
    if user.status == UserStatus.SUSPENDED:
        return user
    user.status = UserStatus.SUSPENDED
    ended = revoke_sessions(session, user.id)
    audit.record(session, ctx, "user.suspend", target=f"user:{user.email}", reason=reason,
                 details={"sessions_ended": ended})
    return user


def revoke_sessions(session: Session, user_id: int) -> int:
    result = session.execute(sa.update(AuthSession)
                             .where(AuthSession.user_id == user_id,
                                    AuthSession.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return result.rowcount or 0


def active_memberships(session: Session, user_id: int) -> list[Membership]:
    query = (sa.select(Membership).join(Organization)
             .options(selectinload(Membership.organization))
             .where(Membership.user_id == user_id,
                    Membership.status == MembershipStatus.ACTIVE)
             .order_by(Organization.name))
    return list(session.scalars(query))


def active_organization_slugs(session: Session, user_id: int, limit: int = 100) -> list[str]:
    return list(session.scalars(
        sa.select(Organization.slug).join(Membership)
        .where(Membership.user_id == user_id, Membership.status == MembershipStatus.ACTIVE)
        .order_by(Organization.name).limit(limit)))
