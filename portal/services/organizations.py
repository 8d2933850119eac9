"""Organizations and their email domains."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import flush_or_conflict
from portal.errors import Conflict, NotFound, ValidationError
from portal.models import Domain, Organization, OrgKind, OrgStatus
from portal.validation import clean_branding, normalize_slug


def create(session: Session, ctx: audit.Context, *, slug: str, name: str, kind: str,
           branding: dict[str, str | None] | None = None) -> Organization:
    slug = normalize_slug(slug)
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationError("An organization needs a name of at most 200 characters.",
                              code="invalid_name")
    try:
        org_kind = OrgKind(kind)
    except ValueError:
        raise ValidationError("The kind must be partner, vendor or internal.",
                              code="invalid_kind") from None
    if session.scalar(sa.select(Organization.id).where(Organization.slug == slug)):
        raise Conflict(f"An organization with the slug '{slug}' already exists.",
                       code="duplicate_slug")
    org = Organization(slug=slug, name=name, kind=org_kind,
                       branding=clean_branding(branding or {}))
    session.add(org)
    flush_or_conflict(session, f"An organization with the slug '{slug}' already exists.",
                       "duplicate_slug")
    audit.record(session, ctx, "org.create", target=f"org:{slug}", organization_id=org.id,
                 details={"name": name, "kind": org_kind.value, "branding": org.branding})
    return org


def update_branding(session: Session, ctx: audit.Context, slug: str,
                    branding: dict[str, str | None]) -> Organization:
    org = get(session, slug)
    before, org.branding = org.branding, clean_branding(branding)
    audit.record(session, ctx, "org.branding", target=f"org:{org.slug}",
                 organization_id=org.id, details={"before": before, "after": org.branding})
    return org


def set_status(session: Session, ctx: audit.Context, slug: str, status: str,
               reason: str = "") -> Organization:
    """Suspending an organization makes the platform policy deny everything in it (except to
    platform operators); its members keep their accounts."""
    org = get(session, slug)
    new = OrgStatus(status)
    if org.status != new:
        org.status = new
        audit.record(session, ctx, f"org.{'suspend' if new == OrgStatus.SUSPENDED else 'resume'}",
                     target=f"org:{org.slug}", organization_id=org.id, reason=reason)
    return org


def get(session: Session, slug: str) -> Organization:
    org = session.scalar(sa.select(Organization).where(Organization.slug == slug.lower()))
    if org is None:
        raise NotFound(f"There is no organization with the slug '{slug}'.", code="unknown_org")
    return org


def list_all(session: Session) -> list[Organization]:
    return list(session.scalars(sa.select(Organization).order_by(Organization.name)))


def add_domain(session: Session, ctx: audit.Context, slug: str, name: str) -> Domain:
    """Claim a domain for the organization (unverified); see ``services.domains``."""
    from portal.services import domains
    return domains.add(session, ctx, get(session, slug), name)


def verify_domain_manually(session: Session, ctx: audit.Context, name: str,
                           slug: str | None = None) -> Domain:
    """An operator vouches for the domain; the audit event records who did."""
    from portal.services import domains
    return domains.verify_manually(session, ctx, name, slug)
