"""The data protection rights: a copy of everything held about a person, and erasure.

``export`` gathers every row about a user as plain JSON-ready data: profile, memberships and
roles, identities at identity providers, sessions, consents, the mail sent to them, and the
audit events they caused or that name them. Secrets (password hash, token hashes) are never
included: they are not personal data the person can use, and would help an attacker.

Erasure is asked by the person (``request_erasure``, confirmed by their password or a recent
sign-in) or by an operator; it waits ``grace_days`` during which signing in or the account
page cancels it, then ``erase`` (run by ``trellis worker``) removes the personal data and
leaves a tombstone user row, so that foreign keys, the consent ledger's anonymous counts and
the audit trail stay whole. Audit events keep a keyed hash (``audit.pseudonym``) instead of
the email, and the chain still verifies (see portal/audit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import Conflict, NotFound, ValidationError
from portal.models import (
    AuditEvent,
    AuthSession,
    Connection,
    ConsentRecord,
    FederatedIdentity,
    Invitation,
    KnownSignal,
    Membership,
    MembershipStatus,
    OAuthCode,
    OAuthConsent,
    OAuthDeviceCode,
    OAuthToken,
    Organization,
    OutboxMessage,
    ProfileValue,
    RecoveryCode,
    Registration,
    RoleGrant,
    TotpFactor,
    User,
    UserStatus,
    UserToken,
    WebAuthnCredential,
)


def _when(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def export(session: Session, ctx: audit.Context, user_id: int) -> dict[str, Any]:
    """Everything about the user, and an audit event saying it was exported and by whom."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("There is no such user.", code="unknown_user")
    addresses = sorted(addresses_of(session, user_id))  # before an email change too
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
                OutboxMessage.to_address.in_(addresses)).order_by(OutboxMessage.id))],
        "audit_events": [
            {"seq": e.seq, "occurred_at": _when(e.occurred_at), "action": e.action,
             "actor": e.actor, "target": e.target, "outcome": e.outcome, "reason": e.reason,
             "ip": e.ip, "user_agent": e.user_agent, "details": e.details}
            for e in session.scalars(sa.select(AuditEvent).where(sa.or_(
                AuditEvent.actor_id == user_id,
                AuditEvent.target.in_([f"user:{a}" for a in addresses])))
                .order_by(AuditEvent.seq))],
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


# -- erasure -------------------------------------------------------------------------------

OWNER = "org_owner"
ERASED_DOMAIN = "erased.invalid"


def organizations_left_without_owner(session: Session, user_id: int) -> list[str]:
    """Slugs of the organizations where this user is the only active owner: erasing them
    would leave nobody able to administer it."""
    mine = sa.select(RoleGrant.organization_id).where(RoleGrant.user_id == user_id,
                                                      RoleGrant.role == OWNER)
    owners = (sa.select(RoleGrant.organization_id,
                        sa.func.count(sa.distinct(RoleGrant.user_id)).label("n"))
              .join(Membership, sa.and_(Membership.user_id == RoleGrant.user_id,
                                        Membership.organization_id == RoleGrant.organization_id))
              .where(RoleGrant.role == OWNER, Membership.status == MembershipStatus.ACTIVE,
                     RoleGrant.organization_id.in_(mine))
              .group_by(RoleGrant.organization_id).subquery())
    return list(session.scalars(
        sa.select(Organization.slug)
        .outerjoin(owners, owners.c.organization_id == Organization.id)
        .where(Organization.id.in_(mine), sa.func.coalesce(owners.c.n, 0) <= 1)
        .order_by(Organization.slug)))


def _refuse_last_owner(session: Session, user_id: int) -> None:
    orgs = organizations_left_without_owner(session, user_id)
    if orgs:
        raise Conflict(
            f"You are the last owner of {', '.join(orgs)}. Make someone else an owner "
            "(or ask an operator to) before the account can be deleted.", code="last_owner")


def request_erasure(session: Session, ctx: audit.Context, user_id: int, *, grace_days: int,
                    confirmed: bool, by_operator: bool = False) -> datetime:
    """Schedule the erasure of the account after the grace period; returns when it happens.

    ``confirmed`` is the caller's proof that the person re-authenticated (current password,
    or a sign-in within the last minutes for people without one). Refused while the person
    is the last owner of an organization."""
    user = session.get(User, user_id)
    if user is None or user.erased_at is not None:
        raise NotFound("There is no such user.", code="unknown_user")
    if not confirmed:
        raise ValidationError("Confirm with your current password (or sign in again) to "
                              "delete your account.", code="reauthentication_required")
    _refuse_last_owner(session, user_id)
    when = utcnow() + timedelta(days=grace_days)
    user.erase_after = when
    audit.record(session, ctx, "gdpr.erase_requested", target=f"user:{user.email}",
                 details={"erase_after": _when(when), "grace_days": grace_days,
                          "by_operator": by_operator})
    return when


def cancel_erasure(session: Session, ctx: audit.Context, user_id: int, *, how: str) -> bool:
    """Call off a scheduled erasure (the person signed in, or pressed the button). Returns
    whether there was one."""
    user = session.get(User, user_id)
    if user is None or user.erase_after is None or user.erased_at is not None:
        return False
    user.erase_after = None
    audit.record(session, ctx, "gdpr.erase_cancelled", target=f"user:{user.email}",
                 details={"how": how})
    return True


@dataclass
class Erased:
    user_id: int
    pseudonym: str
    removed: dict[str, int]
    events_pseudonymized: int


def erase(session: Session, ctx: audit.Context, user_id: int, *, key: str) -> Erased:
    """Remove the person's personal data now, in the caller's transaction.

    Left behind: a tombstone ``users`` row (id, status ``deleted``, a placeholder address),
    the consent ledger's rows without their IP and browser hashes (the ledger stays
    insert-only in meaning: who, purpose, version, when), and the audit events with the
    email replaced by its keyed hash."""
    user = session.get(User, user_id)
    if user is None or user.erased_at is not None:
        raise NotFound("There is no such user.", code="unknown_user")
    _refuse_last_owner(session, user_id)
    email = user.email
    emails = addresses_of(session, user_id)
    alias = audit.pseudonym(key, email)
    removed: dict[str, int] = {}

    def gone(name: str, statement) -> None:
        removed[name] = session.execute(statement).rowcount or 0

    # Consents still granted end with the account (a record per purpose, for apps syncing).
    for purpose, row in _latest_consents(session, user_id).items():
        if row.granted:
            session.add(ConsentRecord(user_id=user_id, purpose=purpose,
                                      document_version=row.document_version, granted=False,
                                      method="erasure", recorded_at=utcnow()))
    session.flush()
    gone("consent_fingerprints", sa.update(ConsentRecord).where(
        ConsentRecord.user_id == user_id).values(ip_hash="", user_agent_hash=""))
    gone("profile_values", sa.delete(ProfileValue).where(ProfileValue.user_id == user_id))
    gone("identities", sa.delete(FederatedIdentity).where(
        FederatedIdentity.user_id == user_id))
    gone("role_grants", sa.delete(RoleGrant).where(RoleGrant.user_id == user_id))
    gone("memberships", sa.delete(Membership).where(Membership.user_id == user_id))
    gone("app_tokens", sa.delete(OAuthToken).where(OAuthToken.user_id == user_id))
    gone("app_codes", sa.delete(OAuthCode).where(OAuthCode.user_id == user_id))
    gone("app_consents", sa.delete(OAuthConsent).where(OAuthConsent.user_id == user_id))
    gone("device_codes", sa.delete(OAuthDeviceCode).where(OAuthDeviceCode.user_id == user_id))
    gone("sessions", sa.delete(AuthSession).where(AuthSession.user_id == user_id))
    for name, model in (("totp", TotpFactor), ("passkeys", WebAuthnCredential),
                        ("known_signals", KnownSignal), ("recovery_codes", RecoveryCode),
                        ("links", UserToken)):
        gone(name, sa.delete(model).where(model.user_id == user_id))
    gone("emails", sa.delete(OutboxMessage).where(OutboxMessage.to_address.in_(emails)))
    # An old address another account uses now: the mail sent to it before that account
    # existed was this person's (e.g. the notice of their email change).
    for address, since in session.execute(sa.select(User.email, User.created_at).where(
            User.email.in_(_every_address(session, user_id) - emails), User.id != user_id)):
        removed["emails"] += session.execute(sa.delete(OutboxMessage).where(
            OutboxMessage.to_address == address,
            OutboxMessage.created_at < since)).rowcount or 0
    gone("sign_ups", sa.delete(Registration).where(Registration.email.in_(emails)))
    gone("invitations", sa.delete(Invitation).where(Invitation.email.in_(emails),
                                                    Invitation.accepted_by_id.is_(None)))
    session.execute(sa.update(Invitation).where(Invitation.accepted_by_id == user_id)
                    .values(email=f"{alias.replace(':', '-')}@{ERASED_DOMAIN}"))
    user.email = f"erased-{user.id}@{ERASED_DOMAIN}"
    user.display_name = ""
    user.password_hash = None
    user.status = UserStatus.DELETED
    user.is_operator = False
    user.last_login_at = None
    user.erase_after = None
    user.erased_at = utcnow()
    session.flush()
    changed = audit.pseudonymize(session, key, user_id, sorted(emails))
    audit.record(session, ctx, "gdpr.erase", target=f"user:{alias}",
                 details={"user_id": user_id, "removed": removed,
                          "events_pseudonymized": changed})
    return Erased(user_id, alias, removed, changed)


def addresses_of(session: Session, user_id: int) -> set[str]:
    """Every email address the person has had: the current one, those of their pending links,
    and the addresses on either side of each completed email change (the audit trail is the
    only place that remembers an address once its link is used). An old address that now
    belongs to another account is that person's, not this one's, and is left out."""
    found = _every_address(session, user_id)
    others = set(session.scalars(sa.select(User.email).where(User.email.in_(found),
                                                             User.id != user_id)))
    return found - others


def _every_address(session: Session, user_id: int) -> set[str]:
    user = session.get(User, user_id)
    found = {user.email} if user is not None else set()
    found |= set(session.scalars(
        sa.select(UserToken.email).where(UserToken.user_id == user_id, UserToken.email != "")))
    changes = session.execute(sa.select(AuditEvent.action, AuditEvent.outcome,
                                        AuditEvent.details).where(
        AuditEvent.actor_id == user_id,
        AuditEvent.action.in_(("user.email_change", "user.email_change_request"))))
    for action, outcome, details in changes:
        if not isinstance(details, dict):
            continue
        if action == "user.email_change":
            found |= {details.get("from"), details.get("to")}
        elif outcome == "success":  # an address that was taken was never this person's
            found.add(details.get("new_email"))
    found = {a for a in found if isinstance(a, str) and "@" in a
             and not a.startswith(audit.PSEUDONYM_PREFIX) and not a.endswith(ERASED_DOMAIN)}
    return found


def _latest_consents(session: Session, user_id: int) -> dict[str, ConsentRecord]:
    rows = session.scalars(sa.select(ConsentRecord).where(ConsentRecord.user_id == user_id)
                           .order_by(ConsentRecord.recorded_at, ConsentRecord.id))
    return {row.purpose: row for row in rows}


def pseudonym_key(config) -> str:
    """TRELLIS_AUDIT_PSEUDONYM_KEY, or a key derived from SECRET_KEY (never SECRET_KEY
    itself: a pseudonym must not help anyone forge a session cookie)."""
    import hashlib
    import hmac
    if config["AUDIT_PSEUDONYM_KEY"]:
        return config["AUDIT_PSEUDONYM_KEY"]
    return hmac.new(config["SECRET_KEY"].encode(), b"trellis audit pseudonyms",
                    hashlib.sha256).hexdigest()


def due_for_erasure(session: Session, now: datetime | None = None) -> list[int]:
    """Users whose grace period is over."""
    return list(session.scalars(sa.select(User.id).where(
        User.erase_after.is_not(None), User.erase_after <= (now or utcnow()),
        User.erased_at.is_(None)).order_by(User.id)))
