"""Admin API tokens of an organization: made by its owners, shown once, stored hashed,
scoped, expiring, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound, ValidationError
from portal.models import Organization, OrgApiToken

PREFIX = "trt_"
SCOPES = {
    "members:read": "list and read members",
    "members:write": ("suspend, resume and remove members; grant and revoke roles; "
                      "record identity checks"),
    "invitations:write": "create, resend and revoke invitations",
    "connections:read": "read single sign-on connections",
    "connections:write": "switch single sign-on connections on and off",
    "domains:read": "read the organization's domains and their verification records",
    "domains:write": "add, verify and remove domains",
    "audit:read": "read and export the organization's audit trail",
    "roles:read": "read custom roles and the permissions they may use",
    "roles:write": "create, change and delete custom roles",
    "branding:write": "change colours, texts and the logo",
    "settings:read": "read organization settings (who may sign up)",
    "settings:write": "change organization settings (who may sign up)",
}
MAX_DAYS = 365


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, ctx: audit.Context, org: Organization, creator_id: int,
           name: str, scopes: list[str], days: int) -> tuple[OrgApiToken, str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValidationError(f"Choose scopes among {', '.join(SCOPES)}"
                              + (f" (unknown: {', '.join(unknown)})" if unknown else "") + ".",
                              code="invalid_scopes")
    if not 1 <= days <= MAX_DAYS:
        raise ValidationError(f"A token lasts between 1 and {MAX_DAYS} days.",
                              code="invalid_expiry")
    token = PREFIX + secrets.token_urlsafe(32)
    row = OrgApiToken(organization_id=org.id, name=(name.strip() or "API token")[:200],
                      token_hash=_digest(token), scopes=sorted(set(scopes)),
                      created_by_id=creator_id, expires_at=utcnow() + timedelta(days=days))
    session.add(row)
    session.flush()
    audit.record(session, ctx, "api_token.create", target=f"api_token:{row.id}",
                 organization_id=org.id, details={"name": row.name, "scopes": row.scopes,
                                                  "days": days})
    return row, token


def list_tokens(session: Session, org: Organization) -> list[OrgApiToken]:
    return list(session.scalars(sa.select(OrgApiToken).where(
        OrgApiToken.organization_id == org.id).order_by(OrgApiToken.id.desc())))


def revoke(session: Session, ctx: audit.Context, org: Organization, token_id: int) -> None:
    row = session.scalar(sa.select(OrgApiToken).where(OrgApiToken.id == token_id,
                                                      OrgApiToken.organization_id == org.id))
    if row is None:
        raise NotFound("There is no such token.", code="unknown_token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, ctx, "api_token.revoke", target=f"api_token:{row.id}",
                     organization_id=org.id, details={"name": row.name})


def authenticate(session: Session, token: str) -> OrgApiToken | None:
    """The live token for this secret, or None (unknown, revoked or expired look alike)."""
    if not token.startswith(PREFIX) or len(token) > 100:
        return None
    row = session.scalar(sa.select(OrgApiToken).where(
        OrgApiToken.token_hash == _digest(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    return row
