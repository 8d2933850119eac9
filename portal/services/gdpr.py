"""The data protection rights served so far: a copy of everything held about a person.

``export`` gathers every row about a user as plain JSON-ready data: profile, memberships and
roles, identities at identity providers, sessions, consents, the mail sent to them, and the
audit events they caused or that name them. Secrets (password hash, token hashes) are never
included: they are not personal data the person can use, and would help an attacker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound
from portal.models import (
    AuditEvent,
    AuthSession,
    Connection,
    ConsentRecord,
    FederatedIdentity,
    Membership,
    Organization,
    OutboxMessage,
    ProfileValue,
    RoleGrant,
    User,
)


def _when(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def export(session: Session, ctx: audit.Context, user_id: int) -> dict[str, Any]:
    """Everything about the user, and an audit event saying it was exported and by whom."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("There is no such user.", code="unknown_user")
    data = {
        "exported_at": _when(utcnow()),
        "profile": {"id": user.id, "email": user.email, "display_name": user.display_name,
                    "status": user.status.value, "created_at": _when(user.created_at),
                    "last_login_at": _when(user.last_login_at),
                    "has_password": user.password_hash is not None,
                    "platform_operator": user.is_operator},
        "memberships": _memberships(session, user_id),
        "identities": [
            {"provider": name, "protocol": protocol.value, "subject": subject,
             "linked_at": _when(created), "last_login_at": _when(last)}
            for name, protocol, subject, created, last in session.execute(
                sa.select(Connection.name, Connection.protocol, FederatedIdentity.subject,
                          FederatedIdentity.created_at, FederatedIdentity.last_login_at)
                .join(Connection, Connection.id == FederatedIdentity.connection_id)
                .where(FederatedIdentity.user_id == user_id))],
        "profile_fields": [
            {"field": v.field, "value": v.value, "collected_at": _when(v.collected_at),
             "collected_via": v.collected_via, "purpose": v.purpose}
            for v in session.scalars(sa.select(ProfileValue).where(
                ProfileValue.user_id == user_id).order_by(ProfileValue.field))],
        "sessions": [
            {"started_at": _when(s.created_at), "expires_at": _when(s.expires_at),
             "ended_at": _when(s.revoked_at), "ip": s.ip, "user_agent": s.user_agent}
            for s in session.scalars(sa.select(AuthSession).where(
                AuthSession.user_id == user_id).order_by(AuthSession.id))],
        "consents": [
            {"purpose": c.purpose, "version": c.document_version,
             "status": "granted" if c.granted else "withdrawn", "method": c.method,
             "recorded_at": _when(c.recorded_at)}
            for c in session.scalars(sa.select(ConsentRecord).where(
                ConsentRecord.user_id == user_id).order_by(ConsentRecord.id))],
        "emails": [
            {"subject": m.subject, "template": m.template, "status": m.status.value,
             "written_at": _when(m.created_at), "sent_at": _when(m.sent_at)}
            for m in session.scalars(sa.select(OutboxMessage).where(
                OutboxMessage.to_address == user.email).order_by(OutboxMessage.id))],
        "audit_events": [
            {"seq": e.seq, "occurred_at": _when(e.occurred_at), "action": e.action,
             "actor": e.actor, "target": e.target, "outcome": e.outcome, "reason": e.reason,
             "ip": e.ip, "user_agent": e.user_agent, "details": e.details}
            for e in session.scalars(sa.select(AuditEvent).where(sa.or_(
                AuditEvent.actor_id == user_id,
                AuditEvent.target == f"user:{user.email}")).order_by(AuditEvent.seq))],
    }
    audit.record(session, ctx, "gdpr.export", target=f"user:{user.email}",
                 details={"sections": {k: len(v) for k, v in data.items()
                                       if isinstance(v, list)}})
    return data


def _memberships(session: Session, user_id: int) -> list[dict[str, Any]]:
    roles: dict[int, list[str]] = {}
    for org_id, role in session.execute(sa.select(RoleGrant.organization_id, RoleGrant.role)
                                        .where(RoleGrant.user_id == user_id)):
        roles.setdefault(org_id, []).append(role)
    return [{"organization": org.slug, "name": org.name, "status": m.status.value,
             "source": m.source.value, "since": _when(m.created_at),
             "roles": sorted(roles.get(org.id, []))}
            for m, org in session.execute(
                sa.select(Membership, Organization)
                .join(Organization, Organization.id == Membership.organization_id)
                .where(Membership.user_id == user_id).order_by(Organization.slug))]
