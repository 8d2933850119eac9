"""What an organization's delegated admins do to its members: list, inspect, suspend, resume,
remove, grant and revoke roles, invite.

Every function takes the organization explicitly and only ever reads or writes rows of that
organization: a user id from another organization is "not found", exactly like an unknown one.
The rules that stop escalation live here too, so every caller (pages, API, CLI) gets them:
an admin grants only roles they hold themselves, never changes their own roles, never acts on
platform operators, and the last owner cannot be removed, suspended or demoted.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from portal import audit
from portal.db import utcnow
from portal.errors import Conflict, Forbidden, NotFound, ValidationError
from portal.models import (
    AuditEvent,
    Connection,
    FederatedIdentity,
    Invitation,
    Membership,
    MembershipSource,
    MembershipStatus,
    Organization,
    RoleGrant,
    User,
    UserStatus,
)
from portal.services import users
from portal.services.roles import MANUAL, DatabaseRoleGrants
from portal.validation import normalize_email

OWNER = "org_owner"
PAGE_SIZE = 50
INVITATION_DAYS = 7


@dataclass(frozen=True)
class Actor:
    """Who is acting, as the policy sees them: their id, the roles they hold in this
    organization (inherited ones included), and whether they are a platform operator."""

    user_id: int
    roles: frozenset[str]
    operator: bool = False
    # custom roles whose every permission this admin holds (granting them is no escalation)
    custom: frozenset[str] = frozenset()

    def may_grant(self, role: str) -> bool:
        return self.operator or role in self.roles or role in self.custom


def actor_for(engine: Any, session: Session, org: Organization, user_id: int,
              operator: bool) -> Actor:
    """The acting admin as the policy sees them right now, custom roles included."""
    from portal.services import custom_roles
    subject = {"id": str(user_id), "platform_operator": operator}
    held = custom_roles.held_permissions(engine, subject, org)
    return Actor(user_id, engine.held_roles(subject, org.slug), operator,
                 custom_roles.grantable(session, org, held))


def known_roles(files: Any, session: Session, org: Organization) -> list[str]:
    """Roles that exist in this organization: the policy's and its custom roles."""
    from portal.services import custom_roles
    return sorted({*assignable_roles(files, org), *custom_roles.names(session, org)})


@dataclass(frozen=True)
class MemberRow:
    user_id: int
    email: str
    display_name: str
    status: str
    source: str
    last_login_at: datetime | None
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Page:
    rows: list[MemberRow]
    total: int
    next_after: str | None  # keyset: the last email of this page
    total_exact: bool = True  # False: more than COUNT_CAP match a search or role filter


# A search or role filter counts its matches up to this many: "more than 1,000 match" tells
# the admin to narrow it, and a short search matching a sixth of 100,000 members then costs
# what the page itself does instead of a scan of them all.
COUNT_CAP = 1000


def assignable_roles(files: Any, org: Organization) -> list[str]:
    """The roles the policy defines for this organization (its kind's template plus its own
    file); platform roles are not among them."""
    lines = [*files.kinds.get(org.kind.value, []), *files.orgs.get(org.slug, [])]
    roles = {line[1] for line in lines if line[0] == "p"}
    roles |= {name for line in lines if line[0] == "g" for name in line[1:3]}
    return sorted(roles - {"*"})


# -- reading -----------------------------------------------------------------------------

def list_members(session: Session, org: Organization, *, query: str = "", status: str = "",
                 role: str = "", after: str | None = None, limit: int = PAGE_SIZE) -> Page:
    """A page of members ordered by email, filtered on the server (keyset pagination, so the
    100,000th member costs what the first does). NUL never occurs in stored text (and
    PostgreSQL refuses it in a parameter), so it is dropped from the filters."""
    query, role = query.replace("\x00", ""), role.replace("\x00", "")
    after = after.replace("\x00", "") if after else after
    where = [Membership.organization_id == org.id]
    if query:
        pattern = f"%{_escape_like(query.strip().lower())}%"
        where.append(sa.or_(sa.func.lower(User.email).like(pattern, escape="\\"),
                            sa.func.lower(User.display_name).like(pattern, escape="\\")))
    if status in {s.value for s in MembershipStatus}:
        where.append(Membership.status == MembershipStatus(status))
    if role:  # IN, not EXISTS: PostgreSQL then walks the email order and probes the grant
        where.append(User.id.in_(sa.select(RoleGrant.user_id).where(
            RoleGrant.organization_id == org.id, RoleGrant.role == role)))
    base = sa.select(User, Membership).join(Membership, Membership.user_id == User.id).where(
        *where)
    exact = True
    if query or role:
        total = session.scalar(sa.select(sa.func.count()).select_from(
            base.with_only_columns(User.id).limit(COUNT_CAP + 1).subquery()))
        exact = total <= COUNT_CAP
        total = min(total or 0, COUNT_CAP)
    else:  # no search: count memberships alone (an index-only scan, no join to users)
        total = session.scalar(sa.select(sa.func.count()).select_from(Membership).where(
            *where))
    if after:
        base = base.where(User.email > after)
    found = session.execute(base.order_by(User.email).limit(limit + 1)).all()
    more = len(found) > limit
    found = found[:limit]
    grants = _roles_by_user(session, org.id, [user.id for user, _ in found])
    rows = [MemberRow(user.id, user.email, user.display_name, membership.status.value,
                      membership.source.value, user.last_login_at,
                      tuple(sorted(grants.get(user.id, ())))) for user, membership in found]
    return Page(rows, total or 0, rows[-1].email if more and rows else None, exact)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _roles_by_user(session: Session, org_id: int, user_ids: list[int]) -> dict[int, set[str]]:
    result: dict[int, set[str]] = {}
    if not user_ids:
        return result
    for user_id, role in session.execute(sa.select(RoleGrant.user_id, RoleGrant.role).where(
            RoleGrant.organization_id == org_id, RoleGrant.user_id.in_(user_ids))):
        result.setdefault(user_id, set()).add(role)
    return result


def membership(session: Session, org: Organization, user_id: int) -> Membership:
    """The membership of ``user_id`` in this organization, or NotFound (also for users of
    other organizations: their existence is not revealed)."""
    found = session.scalar(sa.select(Membership).where(Membership.organization_id == org.id,
                                                       Membership.user_id == user_id))
    if found is None:
        raise NotFound("There is no such member in this organization.", code="unknown_member")
    return found


def detail(session: Session, org: Organization, user_id: int) -> dict[str, Any]:
    """One member as this organization's admins may see them: nothing from other
    organizations (no other memberships, no identities of other organizations' connections,
    no sign-ins recorded elsewhere)."""
    found = membership(session, org, user_id)
    grants = session.execute(sa.select(RoleGrant.role, RoleGrant.source).where(
        RoleGrant.organization_id == org.id, RoleGrant.user_id == user_id)
        .order_by(RoleGrant.role)).all()
    identities = session.execute(
        sa.select(Connection.name, Connection.protocol, FederatedIdentity.subject,
                  FederatedIdentity.last_login_at)
        .join(Connection, Connection.id == FederatedIdentity.connection_id)
        .where(FederatedIdentity.user_id == user_id,
               Connection.organization_id == org.id)).all()
    sign_ins = session.scalars(
        sa.select(AuditEvent).where(AuditEvent.organization_id == org.id,
                                    AuditEvent.actor_id == user_id,
                                    AuditEvent.action == "auth.login")
        .order_by(AuditEvent.seq.desc()).limit(20)).all()
    return {"membership": found, "user": found.user, "grants": grants,
            "identities": identities, "sign_ins": sign_ins}


# -- changing ----------------------------------------------------------------------------

def _target(session: Session, org: Organization, actor: Actor, user_id: int,
            version: int | None) -> Membership:
    found = membership(session, org, user_id)
    if found.user.is_operator and not actor.operator:
        raise Forbidden("Platform operators are managed by the platform, not by an "
                        "organization's admins.", code="target_is_operator")
    if version is not None and found.version != version:
        raise Conflict("Someone else changed this member in the meantime. Reload the page and "
                       "try again.", code="stale_member")
    return found


def _owners(session: Session, org_id: int) -> int:
    return session.scalar(sa.select(sa.func.count(sa.distinct(RoleGrant.user_id)))
                          .join(Membership, sa.and_(Membership.user_id == RoleGrant.user_id,
                                                    Membership.organization_id == org_id))
                          .where(RoleGrant.organization_id == org_id, RoleGrant.role == OWNER,
                                 Membership.status == MembershipStatus.ACTIVE)) or 0


def _is_owner(session: Session, org_id: int, user_id: int) -> bool:
    return session.scalar(sa.select(RoleGrant.id).where(
        RoleGrant.organization_id == org_id, RoleGrant.user_id == user_id,
        RoleGrant.role == OWNER).limit(1)) is not None


def _keep_an_owner(session: Session, org: Organization, user_id: int) -> None:
    if _is_owner(session, org.id, user_id) and _owners(session, org.id) <= 1:
        raise Conflict("This is the organization's last owner. Make someone else an owner "
                       "first.", code="last_owner")


def _not_self(actor: Actor, user_id: int, what: str) -> None:
    if actor.user_id == user_id and not actor.operator:
        raise Forbidden(f"You cannot {what} yourself; ask another admin.", code="self_change")


def _save(session: Session) -> None:
    try:
        session.flush()
    except StaleDataError:
        raise Conflict("Someone else changed this member in the meantime. Reload the page and "
                       "try again.", code="stale_member") from None


def suspend(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
            user_id: int, version: int | None = None) -> Membership:
    """Suspend the membership and end the user's sessions at once."""
    _not_self(actor, user_id, "suspend")
    found = _target(session, org, actor, user_id, version)
    _keep_an_owner(session, org, user_id)
    found.status = MembershipStatus.SUSPENDED
    _save(session)
    ended = users.revoke_sessions(session, user_id)
    audit.record(session, ctx, "membership.suspend", target=f"user:{found.user.email}",
                 organization_id=org.id, details={"sessions_ended": ended})
    return found


def resume(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
           user_id: int, version: int | None = None) -> Membership:
    found = _target(session, org, actor, user_id, version)
    found.status = MembershipStatus.ACTIVE
    _save(session)
    audit.record(session, ctx, "membership.resume", target=f"user:{found.user.email}",
                 organization_id=org.id)
    return found


def remove(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
           user_id: int, version: int | None = None) -> None:
    """Remove from this organization (the account itself and other memberships stay); the
    roles held here go with it."""
    _not_self(actor, user_id, "remove")
    found = _target(session, org, actor, user_id, version)
    _keep_an_owner(session, org, user_id)
    email = found.user.email
    session.execute(sa.delete(RoleGrant).where(RoleGrant.organization_id == org.id,
                                               RoleGrant.user_id == user_id))
    session.delete(found)
    _save(session)
    users.revoke_sessions(session, user_id)
    audit.record(session, ctx, "membership.remove", target=f"user:{email}",
                 organization_id=org.id)


def grant(session: Session, ctx: audit.Context, org: Organization, actor: Actor, user_id: int,
          role: str, known_roles: list[str], version: int | None = None) -> bool:
    _not_self(actor, user_id, "change the roles of")
    if role not in known_roles:
        raise ValidationError(f"This organization has no role {role!r}.", code="unknown_role")
    if not actor.may_grant(role):
        raise Forbidden(f"You can only grant roles you hold yourself; you do not hold "
                        f"{role!r}.", code="escalation")
    found = _target(session, org, actor, user_id, version)
    if session.scalar(sa.select(RoleGrant.id).where(
            RoleGrant.organization_id == org.id, RoleGrant.user_id == user_id,
            RoleGrant.role == role, RoleGrant.source == MANUAL)) is not None:
        return False
    DatabaseRoleGrants().grant(session, user_id, org.id, role, MANUAL)
    _touch(found)
    _save(session)
    audit.record(session, ctx, "role.grant", target=f"user:{found.user.email}",
                 organization_id=org.id, details={"role": role, "source": MANUAL})
    return True


def revoke(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
           user_id: int, role: str, version: int | None = None) -> bool:
    """Revoke a role granted by hand (roles from an identity provider follow the IdP)."""
    _not_self(actor, user_id, "change the roles of")
    if not actor.may_grant(role):
        raise Forbidden(f"You can only revoke roles you hold yourself; you do not hold "
                        f"{role!r}.", code="escalation")
    found = _target(session, org, actor, user_id, version)
    if role == OWNER:
        _keep_an_owner(session, org, user_id)
    deleted = session.execute(sa.delete(RoleGrant).where(
        RoleGrant.organization_id == org.id, RoleGrant.user_id == user_id,
        RoleGrant.role == role, RoleGrant.source == MANUAL)).rowcount
    if not deleted:
        return False
    _touch(found)
    _save(session)
    audit.record(session, ctx, "role.revoke", target=f"user:{found.user.email}",
                 organization_id=org.id, details={"role": role, "source": MANUAL})
    return True


def verify_identity(session: Session, ctx: audit.Context, org: Organization, actor: Actor,
                    user_id: int, method: str, note: str) -> None:
    """An admin of the organization checked this member in person or from an identity
    document (portal.assurance: level 3). Members of this organization only; operators'
    accounts are the platform's business. Never one's own: policies may grant on level 3
    (``r.sub.identity_level``), so vouching for oneself would be an escalation."""
    from portal import assurance
    _not_self(actor, user_id, "verify the identity of")
    found = _target(session, org, actor, user_id, None)
    assurance.verify(session, ctx, found.user, method, note, organization_id=org.id)


def _touch(found: Membership) -> None:
    """A role change is a change of the member: bump its version (and updated_at)."""
    found.updated_at = utcnow()


# -- invitations -------------------------------------------------------------------------

def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(session: Session, ctx: audit.Context, org: Organization, actor: Actor, email: str,
           role: str, known_roles: list[str]) -> tuple[Invitation, str]:
    """Create an invitation; returns it and the token for the link (shown or mailed once)."""
    address = normalize_email(email)
    if role not in known_roles:
        raise ValidationError(f"This organization has no role {role!r}.", code="unknown_role")
    if not actor.may_grant(role):
        raise Forbidden(f"You can only invite to roles you hold yourself; you do not hold "
                        f"{role!r}.", code="escalation")
    existing = session.scalar(sa.select(Membership.id).join(User).where(
        Membership.organization_id == org.id, User.email == address))
    if existing is not None:
        raise Conflict(f"{address} is already a member of this organization.",
                       code="already_member")
    token = secrets.token_urlsafe(32)
    invitation = Invitation(organization_id=org.id, email=address, role=role,
                            token_hash=_digest(token), invited_by_id=actor.user_id,
                            expires_at=utcnow() + timedelta(days=INVITATION_DAYS))
    session.add(invitation)
    session.flush()
    audit.record(session, ctx, "invitation.create", target=f"invitation:{invitation.id}",
                 organization_id=org.id, details={"email": address, "role": role})
    return invitation, token


def resend(session: Session, ctx: audit.Context, org: Organization, invitation_id: int
           ) -> tuple[Invitation, str]:
    """A new link (the old one stops working) and a fresh expiry."""
    invitation = _invitation(session, org, invitation_id)
    if invitation.accepted_at or invitation.revoked_at:
        raise Conflict("This invitation was already accepted or revoked.",
                       code="invitation_closed")
    token = secrets.token_urlsafe(32)
    invitation.token_hash = _digest(token)
    invitation.expires_at = utcnow() + timedelta(days=INVITATION_DAYS)
    audit.record(session, ctx, "invitation.resend", target=f"invitation:{invitation.id}",
                 organization_id=org.id, details={"email": invitation.email})
    return invitation, token


def revoke_invitation(session: Session, ctx: audit.Context, org: Organization,
                      invitation_id: int) -> None:
    invitation = _invitation(session, org, invitation_id)
    if invitation.accepted_at is None and invitation.revoked_at is None:
        invitation.revoked_at = utcnow()
        audit.record(session, ctx, "invitation.revoke", target=f"invitation:{invitation.id}",
                     organization_id=org.id, details={"email": invitation.email})


def _invitation(session: Session, org: Organization, invitation_id: int) -> Invitation:
    found = session.scalar(sa.select(Invitation).where(Invitation.id == invitation_id,
                                                       Invitation.organization_id == org.id))
    if found is None:
        raise NotFound("There is no such invitation.", code="unknown_invitation")
    return found


def pending_invitations(session: Session, org: Organization) -> list[Invitation]:
    return list(session.scalars(sa.select(Invitation).where(
        Invitation.organization_id == org.id, Invitation.accepted_at.is_(None),
        Invitation.revoked_at.is_(None)).order_by(Invitation.created_at.desc()).limit(200)))


def open_invitation(session: Session, token: str) -> Invitation:
    """The invitation a link names, if it can still be accepted."""
    found = session.scalar(sa.select(Invitation).where(Invitation.token_hash == _digest(token)))
    if found is None or found.revoked_at is not None:
        raise NotFound("This invitation link is not valid. Ask your administrator for a new "
                       "one.", code="invitation_invalid")
    if found.accepted_at is not None:
        raise Conflict("This invitation was already used.", code="invitation_used")
    if found.expires_at <= utcnow():
        raise Conflict("This invitation has expired. Ask your administrator to send it again.",
                       code="invitation_expired")
    return found


def accept(session: Session, ctx: audit.Context, token: str, user: User) -> Organization:
    """The signed-in user accepts: only for the invited email, once, before expiry."""
    invitation = open_invitation(session, token)
    if normalize_email(user.email) != invitation.email:
        raise Forbidden(f"This invitation is for {invitation.email}. Sign in with that "
                        "address to accept it.", code="invitation_other_email")
    if user.status != UserStatus.ACTIVE:
        raise Forbidden("Your account is suspended.", code="user_suspended")
    org = session.get(Organization, invitation.organization_id)
    existing = session.scalar(sa.select(Membership).where(
        Membership.organization_id == org.id, Membership.user_id == user.id))
    if existing is None:
        session.add(Membership(user_id=user.id, organization_id=org.id,
                               source=MembershipSource.INVITE))
    if invitation.role != "member":
        DatabaseRoleGrants().grant(session, user.id, org.id, invitation.role, MANUAL)
    invitation.accepted_at, invitation.accepted_by_id = utcnow(), user.id
    session.flush()
    audit.record(session, ctx, "invitation.accept", target=f"invitation:{invitation.id}",
                 organization_id=org.id, details={"email": user.email,
                                                  "role": invitation.role})
    from portal import assurance
    assurance.raise_to(session, ctx, session.get(User, user.id), "email",
                       org.id)  # the invitation was mailed to this address
    return org
