"""Just-in-time provisioning, shared by every protocol.

``plan`` decides what a sign-in means for Trellis's data (which user, which membership, which
roles, or why it is refused) without writing anything: test mode shows that plan. ``apply``
carries it out inside the caller's transaction, with an audit event for every create, update,
link and refusal. A returning user is found only by (connection, subject); an email alone
never links accounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from federation.errors import FederationError
from federation.identity import ExternalIdentity
from portal import audit
from portal.db import core, utcnow
from portal.models import (
    Connection,
    Domain,
    FederatedIdentity,
    Membership,
    MembershipSource,
    MembershipStatus,
    Organization,
    Protocol,
    RoleGrant,
    User,
    UserStatus,
)


class RoleGrants(TypingProtocol):
    """Where organization roles live (the policy engine's grant store)."""

    def roles(self, session: Session, user_id: int, org_id: int, source: str) -> set[str]: ...
    def grant(self, session: Session, user_id: int, org_id: int, role: str,
              source: str) -> None: ...
    def revoke(self, session: Session, user_id: int, org_id: int, role: str,
               source: str) -> None: ...


@dataclass
class Plan:
    """What a sign-in will do. ``refusal`` set means it must not happen."""

    identity: ExternalIdentity
    user: User | None = None
    link: FederatedIdentity | None = None
    create_user: bool = False
    create_membership: bool = False
    membership: Membership | None = None
    roles: set[str] = field(default_factory=set)
    role_source: str = ""
    attribute_changes: dict[str, tuple[str, str]] = field(default_factory=dict)
    refusal: FederationError | None = None

    def as_report(self) -> dict:
        """A plain summary for the test-mode page and the audit trail."""
        return {"email": self.identity.email, "email_verified": self.identity.email_verified,
                "subject": self.identity.subject, "groups": list(self.identity.groups),
                "roles": sorted(self.roles), "create_user": self.create_user,
                "create_membership": self.create_membership,
                "existing_user": self.user.email if self.user else None,
                "attribute_changes": {k: list(v) for k, v in self.attribute_changes.items()},
                "refused": self.refusal.code if self.refusal else None}


def role_source(connection: Connection) -> str:
    return f"connection:{connection.id}"


def plan(session: Session, connection: Connection, identity: ExternalIdentity,
         test: bool = False) -> Plan:
    """``test``: a test-mode sign-in of a connection that is not enabled yet is planned as if
    it were, so the admin sees what enabling it would do."""
    result = Plan(identity=identity, role_source=role_source(connection))
    try:
        _decide(session, connection, identity, result, test)
    except FederationError as refusal:
        result.refusal = refusal
    return result


def _decide(session: Session, connection: Connection, identity: ExternalIdentity,
            result: Plan, test: bool = False) -> None:
    if not connection.enabled and not test:
        raise _refuse("connection_disabled", "Single sign-on for your organization is "
                      "switched off. Contact your administrator.")
    _check_allowed_domain(connection, identity)
    link = session.scalar(sa.select(FederatedIdentity).where(
        FederatedIdentity.connection_id == connection.id,
        FederatedIdentity.subject == identity.subject))
    if link is not None:
        result.link, result.user = link, session.get(User, link.user_id)
        _check_user_may_sign_in(result.user)
        result.attribute_changes = _attribute_changes(result.user, identity)
    else:
        _check_first_login(session, connection, identity)
        result.create_user = True
    if connection.organization_id is not None:
        _plan_membership(session, connection, result)
        result.roles = mapped_roles(connection, identity)


def allowed_domains(connection: Connection) -> frozenset[str]:
    """Email domains this connection may sign in (empty: no list, the usual domain rules).

    A partner whose IdP also serves a sister company, or a social sign-in meant for one
    company only, narrows the connection to the domains it is trusted for; the list applies
    at every sign-in, so narrowing it shuts out returning users of other domains too."""
    return frozenset(connection.settings.get("allowed_domains") or ())


def _domain_allowed(connection: Connection, email: str | None) -> bool:
    allowed = allowed_domains(connection)
    return not allowed or (bool(email) and email.rpartition("@")[2] in allowed)


def _check_allowed_domain(connection: Connection, identity: ExternalIdentity) -> None:
    if not _domain_allowed(connection, identity.email):
        raise _refuse("domain_not_allowed", "Your email domain may not sign in through this "
                      "identity provider. Contact your administrator.")


def _check_user_may_sign_in(user: User | None) -> None:
    if user is None or user.status != UserStatus.ACTIVE:
        raise _refuse("user_suspended", "Your account is suspended. Contact your "
                      "administrator.")


def _check_first_login(session: Session, connection: Connection,
                       identity: ExternalIdentity) -> None:
    if not connection.jit_enabled:
        raise _refuse("jit_disabled", "Your account has not been set up in this portal yet. "
                      "Ask your administrator for an invitation.")
    if not identity.email:
        raise _refuse("email_missing", "Your identity provider did not send an email address.")
    if not identity.email_verified:
        raise _refuse("email_unverified", "Your identity provider did not confirm your email "
                      "address.")
    domain = identity.email.rpartition("@")[2]
    if connection.organization_id is not None and not connection.allow_any_domain:
        owned = session.scalar(sa.select(Domain.id).where(
            Domain.name == domain, Domain.organization_id == connection.organization_id,
            Domain.verified.is_(True)))
        if owned is None:
            raise _refuse("domain_not_verified", "Your email domain is not registered for "
                          "this organization.")
    existing = session.scalar(sa.select(User).where(User.email == identity.email))
    if existing is not None:
        # Never link silently: the owner must prove control or an admin must link.
        raise _refuse("account_exists", "An account with your email address already exists. "
                      "Sign in with it first, or ask your administrator to link it.")


def _plan_membership(session: Session, connection: Connection, result: Plan) -> None:
    if result.user is not None:
        result.membership = session.scalar(sa.select(Membership).where(
            Membership.user_id == result.user.id,
            Membership.organization_id == connection.organization_id))
    if result.membership is None:
        result.create_membership = True
    elif result.membership.status != MembershipStatus.ACTIVE:
        raise _refuse("membership_suspended", "Your membership in this organization is "
                      "suspended. Contact your administrator.")


def mapped_roles(connection: Connection, identity: ExternalIdentity) -> set[str]:
    roles = {connection.group_roles[group] for group in identity.groups
             if group in (connection.group_roles or {})}
    if connection.default_role:
        roles.add(connection.default_role)
    return roles


def _attribute_changes(user: User, identity: ExternalIdentity) -> dict[str, tuple[str, str]]:
    name = _asserted_name(identity)
    changes = {}
    if name and name != user.display_name:
        changes["display_name"] = (user.display_name, name)
    return changes


def apply(session: Session, ctx: audit.Context, connection: Connection, result: Plan,
          grants: RoleGrants | None) -> User:
    """Carry out a plan in the caller's transaction; raise its refusal. Its audit events
    (provisioning, membership, roles, the sign-in) are appended to the chain at once."""
    identity, org_id = result.identity, connection.organization_id
    target = f"subject:{identity.subject}@connection:{connection.id}"
    if result.refusal is not None:
        raise result.refusal
    events: list[dict[str, Any]] = []
    now = utcnow()
    if result.create_user:
        user = User(email=identity.email, status=UserStatus.ACTIVE, password_hash=None,
                    display_name=_display_name(identity), last_login_at=now)
        session.add(user)
        session.flush()
        session.add(FederatedIdentity(connection_id=connection.id, subject=identity.subject,
                                      user_id=user.id, last_login_at=now))
        events.append({"action": "federation.provision", "target": target,
                       "organization_id": org_id,
                       "details": {"email": user.email, "connection": connection.id}})
    else:
        user = result.user
        user.last_login_at = result.link.last_login_at = now
        for attribute, (_old, new) in result.attribute_changes.items():
            setattr(user, attribute, new)
        if result.attribute_changes:
            events.append({"action": "federation.update", "target": target,
                           "organization_id": org_id,
                           "details": {k: list(v)
                                       for k, v in result.attribute_changes.items()}})
    if result.create_membership:
        session.add(Membership(user_id=user.id, organization_id=org_id,
                               source=MembershipSource.JIT))
        events.append({"action": "membership.add", "target": f"user:{user.email}",
                       "organization_id": org_id,
                       "details": {"source": "jit", "connection": connection.id}})
    if org_id is not None and grants is not None:
        session.flush()
        events += _sync_roles(session, grants, user, org_id, result,
                              new_user=result.create_user)
    if org_id is not None and (user.identity_level or 0) < 2:
        _raise_assurance(session, connection, user, events)
    events.append(login_event(connection, identity, user.email))
    audit.record_many(session, ctx.acting_as(user.id, user.email), events)
    return user


def _raise_assurance(session: Session, connection: Connection, user: User,
                     events: list[dict[str, Any]]) -> None:
    """A sign-in through the organization's own identity provider or directory proves the
    person to that organization's standard, when the address is in a domain the
    organization verified (its provider is authoritative for it): assurance level 2. Read
    only while the level is below 2, so once per user."""
    from portal import assurance
    domain = user.email.rpartition("@")[2]
    if session.scalar(sa.select(Domain.id).where(
            Domain.name == domain, Domain.organization_id == connection.organization_id,
            Domain.verified.is_(True))) is not None:
        method = "ldap" if connection.protocol == Protocol.LDAP else "idp"
        assurance.raise_to(session, None, user, method, connection.organization_id,
                           events=events)


def _sync_roles(session: Session, grants: RoleGrants, user: User, org_id: int,
                result: Plan, new_user: bool = False) -> list[dict[str, Any]]:
    """Roles from the IdP follow the IdP; roles granted by hand are never touched. Returns
    the audit event of a change, if any. (An account created just now holds none.)"""
    current = set() if new_user else grants.roles(session, user.id, org_id,
                                                  result.role_source)
    added, removed = result.roles - current, current - result.roles
    for role in sorted(added):
        grants.grant(session, user.id, org_id, role, result.role_source)
    for role in sorted(removed):
        grants.revoke(session, user.id, org_id, role, result.role_source)
    if not (added or removed):
        return []
    return [{"action": "federation.roles", "target": f"user:{user.email}",
             "organization_id": org_id,
             "details": {"added": sorted(added), "removed": sorted(removed),
                         "source": result.role_source}}]


def link(session: Session, ctx: audit.Context, connection: Connection,
         identity: ExternalIdentity, user_id: int, proof: str = "password") -> None:
    """Bind the identity to an account whose owner just proved control of it (``proof``:
    its password, or a link mailed to its address)."""
    user = session.get(User, user_id)
    if user is None or (user.email or "").lower() != (identity.email or "").lower():
        raise _refuse("link_mismatch", "This sign-in cannot be linked to that account.")
    session.add(FederatedIdentity(connection_id=connection.id, subject=identity.subject,
                                  user_id=user_id))
    session.flush()
    audit.record(session, ctx, "federation.link",
                 target=f"subject:{identity.subject}@connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"email": user.email, "proof": proof})


def record_refusal(session: Session, ctx: audit.Context, connection: Connection,
                   error: FederationError, identity: ExternalIdentity | None = None,
                   test: bool = False) -> None:
    """Every failed federated sign-in leaves an audit event naming the failed check."""
    subject = f"subject:{identity.subject}@" if identity else ""
    audit.record(session, ctx, "auth.test_login" if test else "auth.login",
                 outcome="failure", target=f"{subject}connection:{connection.id}",
                 organization_id=connection.organization_id, reason=error.code,
                 details={"method": connection.protocol.value, "detail": error.detail[:300],
                          "email": identity.email if identity else None})


def _asserted_name(identity: ExternalIdentity) -> str:
    return identity.display_name or " ".join(
        part for part in (identity.given_name, identity.family_name) if part)


def _display_name(identity: ExternalIdentity) -> str:
    return _asserted_name(identity)[:200]


# -- the returning user's short path -------------------------------------------------------

_LINKS, _USERS = FederatedIdentity.__table__, User.__table__
_MEMBERSHIPS, _GRANTS = Membership.__table__, RoleGrant.__table__
_ORGS = Organization.__table__
_ACTIVE_ORGS = (sa.select(sa.func.count()).select_from(_MEMBERSHIPS)
                .where(_MEMBERSHIPS.c.user_id == _USERS.c.id,
                       _MEMBERSHIPS.c.status == MembershipStatus.ACTIVE.value)
                .correlate(_USERS).scalar_subquery())
ROLE_SEPARATOR = "\x1f"  # no role name holds it
RETURNING_ROW = (
    sa.select(User, _LINKS.c.id.label("link_id"), _MEMBERSHIPS.c.status.label("membership"),
              _ACTIVE_ORGS.label("active_orgs"),
              sa.select(_ORGS.c.slug).where(_ORGS.c.id == sa.bindparam("org_id"))
              .scalar_subquery().label("org_slug"),
              sa.select(sa.func.aggregate_strings(_GRANTS.c.role, ROLE_SEPARATOR))
              .where(_GRANTS.c.user_id == _USERS.c.id,
                     _GRANTS.c.organization_id == sa.bindparam("org_id"),
                     _GRANTS.c.source == sa.bindparam("source"))
              .correlate(_USERS).scalar_subquery().label("sourced_roles"))
    .select_from(_LINKS.join(_USERS, _USERS.c.id == _LINKS.c.user_id).outerjoin(
        _MEMBERSHIPS, sa.and_(_MEMBERSHIPS.c.user_id == _USERS.c.id,
                              _MEMBERSHIPS.c.organization_id == sa.bindparam("org_id"))))
    .where(_LINKS.c.connection_id == sa.bindparam("connection_id"),
           _LINKS.c.subject == sa.bindparam("subject")))
TOUCH_LINK = _LINKS.update().where(_LINKS.c.id == sa.bindparam("link_id")).values(
    last_login_at=sa.bindparam("now"))
TOUCH_USER = _USERS.update().where(_USERS.c.id == sa.bindparam("user_id")).values(
    last_login_at=sa.bindparam("now"))


@dataclass(frozen=True)
class Returning:
    user: User
    organizations: int  # how many organizations the user is an active member of
    org_slug: str | None  # the connection's organization
    login: dict[str, Any]  # the sign-in's audit event, for the caller to append


def sign_in_returning(session: Session, ctx: audit.Context, connection: Connection,
                      identity: ExternalIdentity) -> Returning | None:
    """Most sign-ins are a known subject whose account, membership, name and IdP-mapped roles
    have not changed: this reads all of that (and the user) in one statement and records the
    sign-in with two prebuilt updates (the same writes as ``apply``), and returns its audit
    event for the caller to append with the new session's (one append to the chain). For
    anything else it returns None without writing, and the caller takes ``plan``/``apply``,
    which decide it."""
    org_id = connection.organization_id
    if not connection.enabled or not _domain_allowed(connection, identity.email):
        return None
    row = session.execute(RETURNING_ROW, {
        "org_id": org_id, "connection_id": connection.id, "subject": identity.subject,
        "source": role_source(connection)}).first()
    if row is None or row.User.status != UserStatus.ACTIVE:
        return None
    user = row.User
    name = _asserted_name(identity)
    if name and name != user.display_name:
        return None
    if org_id is not None:
        if row.membership != MembershipStatus.ACTIVE:
            return None
        current = set(row.sourced_roles.split(ROLE_SEPARATOR)) if row.sourced_roles else set()
        if current != mapped_roles(connection, identity):
            return None
    now = utcnow()
    statements = core(session)
    statements.execute(TOUCH_LINK, {"link_id": row.link_id, "now": now})
    statements.execute(TOUCH_USER, {"user_id": user.id, "now": now})
    set_committed_value(user, "last_login_at", now)
    return Returning(user, row.active_orgs, row.org_slug,
                     login_event(connection, identity, user.email))


def login_event(connection: Connection, identity: ExternalIdentity, email: str
                ) -> dict[str, Any]:
    """The ``auth.login`` event of a federated sign-in, as an ``audit.record_many`` item."""
    return {"action": "auth.login", "target": f"user:{email}",
            "organization_id": connection.organization_id,
            "details": {"method": connection.protocol.value, "connection": connection.id,
                        "amr": list(identity.auth.amr), "acr": identity.auth.acr}}


def _refuse(code: str, message: str) -> FederationError:
    return FederationError(code, message, status=403)
