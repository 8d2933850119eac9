"""The data model. Alembic migrations under ``portal/migrations`` are the only way it changes."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import Base, UTCDateTime, utcnow


class OrgKind(enum.StrEnum):
    PARTNER = "partner"
    VENDOR = "vendor"
    INTERNAL = "internal"


class OrgStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class MembershipStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class MembershipSource(enum.StrEnum):
    JIT = "jit"
    INVITE = "invite"
    LDAP = "ldap"
    SCIM = "scim"
    MANUAL = "manual"


def _enum(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as short strings with a CHECK constraint: portable and readable in SQL.
    return sa.Enum(enum_cls, name=name, native_enum=False, create_constraint=True, length=16,
                   values_callable=lambda cls: [member.value for member in cls])


class RegistrationMode(enum.StrEnum):
    INVITE = "invite"  # only people an admin invited
    DOMAINS = "domains"  # anyone with an address in one of the organization's verified domains
    OPEN = "open"  # anyone


class MfaPolicy(enum.StrEnum):
    """Who must use a second factor to sign in to an organization's members."""

    OFF = "off"
    ADMINS = "admins"  # holders of an administrator role in the organization
    ALL = "all"
    RISK = "risk"  # asked when the sign-in's risk score calls for it


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(63), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[OrgKind] = mapped_column(_enum(OrgKind, "org_kind"))
    status: Mapped[OrgStatus] = mapped_column(_enum(OrgStatus, "org_status"),
                                              default=OrgStatus.ACTIVE)
    # Branding: {"primary_color": "#1a73e8", "logo_url": "https://…", "footer_text": "…"}
    branding: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    # Who may create an account here by themselves: see RegistrationMode.
    registration: Mapped[RegistrationMode] = mapped_column(
        _enum(RegistrationMode, "registration_mode"), default=RegistrationMode.INVITE,
        server_default=RegistrationMode.INVITE.value)
    mfa_policy: Mapped[MfaPolicy] = mapped_column(_enum(MfaPolicy, "mfa_policy"),
                                                  default=MfaPolicy.OFF, server_default="off")
    # Risk scores at which a sign-in is stepped up or denied (None: the platform defaults,
    # TRELLIS_RISK_STEP_UP_AT and TRELLIS_RISK_DENY_AT).
    risk_step_up_at: Mapped[int | None] = mapped_column(sa.SmallInteger)
    risk_deny_at: Mapped[int | None] = mapped_column(sa.SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    domains: Mapped[list[Domain]] = relationship(back_populates="organization",
                                                 order_by="Domain.name")


class Domain(Base):
    """An email domain an organization claims. Several organizations may claim the same name
    while it is unverified (nobody can squat it); ``verified_name`` holds the name only while
    verified, and its unique constraint lets one organization at a time own it."""

    __tablename__ = "domains"
    __table_args__ = (sa.UniqueConstraint("organization_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(253), index=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    verified: Mapped[bool] = mapped_column(default=False)
    verified_name: Mapped[str | None] = mapped_column(sa.String(253), unique=True)
    verification_token: Mapped[str] = mapped_column(sa.String(64))
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when re-verification no longer finds the TXT record: the domain stays the
    # organization's, but home-realm discovery stops routing sign-ins by it.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_check_error: Mapped[str] = mapped_column(sa.String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    organization: Mapped[Organization] = relationship(back_populates="domains")


class User(Base):
    __tablename__ = "users"
    # Member search (``%text%`` on lowercased email and name): trigram indexes on
    # PostgreSQL (migration 0020); SQLite scans.
    __table_args__ = tuple(
        sa.Index(f"ix_users_{column}_trgm", sa.func.lower(sa.column(column)),
                 postgresql_using="gin", postgresql_ops={"lower_1": "gin_trgm_ops"},
                 info={"dialects": ("postgresql",)}).ddl_if(dialect="postgresql")
        for column in ("email", "display_name"))

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)  # normalized
    display_name: Mapped[str] = mapped_column(sa.String(200), default="")
    status: Mapped[UserStatus] = mapped_column(_enum(UserStatus, "user_status"),
                                               default=UserStatus.ACTIVE)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    # Indexed: every organization's policy version counts the operators.
    is_operator: Mapped[bool] = mapped_column(default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Deletion asked by the person: erased by the worker after this time unless they sign
    # in (or cancel on the account page) before; erased_at marks the tombstone left after.
    erase_after: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Identity assurance: how the person behind the account was proven (portal.identity):
    # 0 nothing, 1 email verified, 2 an organization's verified identity provider or
    # directory, 3 checked by an administrator in person or from an identity document.
    identity_level: Mapped[int] = mapped_column(sa.SmallInteger, default=0, server_default="0")
    identity_method: Mapped[str] = mapped_column(sa.String(16), default="", server_default="")
    identity_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")

    # Flask-Login protocol, spelled out so a suspended user is never "active".
    @property
    def is_active(self) -> bool:
        return self.status == UserStatus.ACTIVE

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id",
                                          name="uq_memberships_user_org"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    status: Mapped[MembershipStatus] = mapped_column(
        _enum(MembershipStatus, "membership_status"), default=MembershipStatus.ACTIVE)
    source: Mapped[MembershipSource] = mapped_column(
        _enum(MembershipSource, "membership_source"), default=MembershipSource.MANUAL)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Bumped by every change: two admins editing one member cannot overwrite each other.
    version: Mapped[int] = mapped_column(default=1, server_default="1")

    user: Mapped[User] = relationship(back_populates="memberships")
    organization: Mapped[Organization] = relationship()

    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version}


class AuthSession(Base):
    """Server-side sign-in sessions: the cookie holds only a random token whose hash is here,
    so logout, suspension and "sign out everywhere" take effect at once."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ip: Mapped[str] = mapped_column(sa.String(45), default="")
    user_agent: Mapped[str] = mapped_column(sa.String(400), default="")


class TotpFactor(Base):
    """A user's authenticator app (RFC 6238). The shared secret is sealed with the platform's
    encryption keys; ``last_step`` is the newest 30-second step accepted, so a code is never
    accepted twice. Unconfirmed rows are enrollments in progress."""

    __tablename__ = "totp_factors"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         unique=True)
    sealed_secret: Mapped[str] = mapped_column(sa.Text)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_step: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebAuthnCredential(Base):
    """A passkey or security key registered as a second factor (WebAuthn). Only the public
    key is stored; ``sign_count`` catches a cloned authenticator replaying an old count."""

    __tablename__ = "webauthn_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    credential_id: Mapped[str] = mapped_column(sa.String(1400), unique=True)  # base64url
    public_key: Mapped[str] = mapped_column(sa.Text)  # COSE key, base64url
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    name: Mapped[str] = mapped_column(sa.String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class KnownSignal(Base):
    """Devices (the signed device cookie's id, hashed) and networks (an IPv4 /24 or IPv6 /48)
    a user has completed a sign-in from: the risk assessment calls anything else new."""

    __tablename__ = "known_signals"
    __table_args__ = (sa.UniqueConstraint("user_id", "kind", "value",
                                          name="uq_known_signals_user_kind_value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(16))  # device, network, hour, place
    # SHA-256 hex for devices and networks; the UTC hour ("0"-"23") for hours; rounded
    # "lat,lon" for the place of the last sign-in (one row, with impossible travel on).
    value: Mapped[str] = mapped_column(sa.String(64))
    # Days it was seen on (a row is touched at most once a day): the hour histogram's counts.
    hits: Mapped[int] = mapped_column(default=1, server_default="1")
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AnomalyBaseline(Base):
    """The recent baseline (EWMA mean and variance over ``samples`` windows) of one sign-in
    rate (``metric``) for the platform (``scope`` "platform") or one organization ("org:ID"),
    and the end of the last window folded into it (see ``services.anomaly``)."""

    __tablename__ = "anomaly_baselines"
    __table_args__ = (sa.UniqueConstraint("scope", "metric",
                                          name="uq_anomaly_baselines_scope_metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(32))
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    metric: Mapped[str] = mapped_column(sa.String(32))
    mean: Mapped[float] = mapped_column(sa.Float, default=0.0)
    variance: Mapped[float] = mapped_column(sa.Float, default=0.0)
    samples: Mapped[int] = mapped_column(default=0)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    """One-time recovery codes, stored as argon2id hashes only (shown to the user once)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    code_hash: Mapped[str] = mapped_column(sa.String(255))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Append-only and hash-chained: each row stores the previous row's hash and its own."""

    __tablename__ = "audit_events"
    # Failed sign-ins and codes: the risk engine counts the recent ones on every sign-in,
    # for the account and for the client's IP (``risk._READ``, whose query names the same
    # literal condition, so these partial indexes are the ones that fit).
    __table_args__ = (sa.Index("ix_audit_events_failures", "occurred_at",
                               sqlite_where=sa.text("outcome = 'failure'"),
                               postgresql_where=sa.text("outcome = 'failure'")),
                      sa.Index("ix_audit_events_target_failures", "target", "occurred_at",
                               sqlite_where=sa.text("outcome = 'failure'"),
                               postgresql_where=sa.text("outcome = 'failure'")),
                      sa.Index("ix_audit_events_ip_failures", "ip", "occurred_at",
                               sqlite_where=sa.text("outcome = 'failure'"),
                               postgresql_where=sa.text("outcome = 'failure'")))

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor_id: Mapped[int | None] = mapped_column()  # no FK: the trail outlives users
    actor: Mapped[str] = mapped_column(sa.String(320), default="")
    organization_id: Mapped[int | None] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(400), default="")
    outcome: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(400), default="")
    ip: Mapped[str] = mapped_column(sa.String(45), default="")
    user_agent: Mapped[str] = mapped_column(sa.String(400), default="")
    request_id: Mapped[str] = mapped_column(sa.String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    # The chain covers the personal fields above through this salted digest; erasure
    # deletes the salt (see portal/audit.py).
    personal_digest: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    personal_salt: Mapped[str] = mapped_column(sa.String(32), default="", server_default="")
    pseudonymized_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class AuditHead(Base):
    """One row naming the chain's last event. Updating it first serializes appenders on every
    backend (row lock on PostgreSQL, write lock on SQLite) and lets verification detect a
    truncated tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(sa.String(64))
    # The head of the chain in its first format, when migration 0016 re-chained it; an
    # empty problem means the old chain verified then.
    legacy_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    legacy_hash: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    legacy_problem: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")


class Protocol(enum.StrEnum):
    OIDC = "oidc"
    SAML = "saml"
    LDAP = "ldap"


class Connection(Base):
    """How one organization's users (or, with no organization, anyone: social sign-in) sign in
    through an external identity provider."""

    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    protocol: Mapped[Protocol] = mapped_column(_enum(Protocol, "protocol"))
    name: Mapped[str] = mapped_column(sa.String(200))
    enabled: Mapped[bool] = mapped_column(default=False)
    jit_enabled: Mapped[bool] = mapped_column(default=True)
    default_role: Mapped[str] = mapped_column(sa.String(64), default="member")
    allow_any_domain: Mapped[bool] = mapped_column(default=False)
    # Protocol settings without secrets (issuer, client id, scopes, claim mapping, ...).
    settings: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    # Secrets (client secret, bind password) sealed with portal.crypto.SecretBox.
    sealed_secrets: Mapped[str] = mapped_column(sa.Text, default="")
    # IdP group name -> organization role.
    group_roles: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    organization: Mapped[Organization | None] = relationship()


class FederatedIdentity(Base):
    """The only account-linking key: (connection, the IdP's stable subject) -> user."""

    __tablename__ = "federated_identities"
    __table_args__ = (sa.UniqueConstraint("connection_id", "subject",
                                          name="uq_federated_identities_connection_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(
        sa.ForeignKey("connections.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(sa.String(255))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    connection: Mapped[Connection] = relationship()


class ReplayCache(Base):
    """One-time values (OIDC states, SAML assertion ids) already consumed, until they expire."""

    __tablename__ = "replay_cache"

    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RoleGrant(Base):
    """Who holds which role in which organization, and where the grant came from.

    ``source`` is ``manual`` for grants made by an admin, or ``connection:<id>`` for roles an
    identity provider's groups mapped to (those follow the IdP at every sign-in). The policy
    engine reads an organization's grants from here as its role (``g``) rules.
    """

    __tablename__ = "role_grants"
    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id", "role", "source",
                                          name="uq_role_grants_user_org_role_source"),
                      sa.Index("ix_role_grants_org_user", "organization_id", "user_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(64), default="manual")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiClient(Base):
    """A vendor app calling the APIs with an API key (until it is an OAuth client of Trellis).
    Only the key's SHA-256 is stored; the key is shown once, when created."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    key_prefix: Mapped[str] = mapped_column(sa.String(16), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # Organization slugs this app may ask about.
    organizations: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # During a rotation the replaced key keeps working until ``previous_key_expires_at``, so
    # the app can roll its new key out without an outage.
    previous_key_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    previous_key_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrgPolicy(Base):
    """An organization's own policy rules uploaded by an operator (the same format as
    ``orgs/<slug>.csv`` in the policy folder, whose rules apply as well). Only text that
    loaded cleanly is stored; every upload and removal is in the audit trail."""

    __tablename__ = "org_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    uploaded_by: Mapped[str] = mapped_column(sa.String(320), default="")
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KeyState(enum.StrEnum):
    NEXT = "next"  # published so partners can add it; not used yet
    ACTIVE = "active"  # signs; published
    PREVIOUS = "previous"  # replaced, still published and still decrypts during the overlap
    RETIRED = "retired"  # neither published nor used


class SigningKey(Base):
    """A platform key pair with a lifecycle, so partners can follow a rollover without an
    outage. ``purpose`` is ``saml`` for the service provider's signing and decryption key."""

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(sa.String(16), index=True)
    state: Mapped[KeyState] = mapped_column(_enum(KeyState, "key_state"))
    certificate: Mapped[str] = mapped_column(sa.Text)  # PEM
    sealed_private_key: Mapped[str] = mapped_column(sa.Text)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Invitation(Base):
    """An organization admin invited someone by email. The link carries a random token whose
    hash is stored here; it works once, until it expires, and only for that email."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(sa.String(320))  # normalized
    role: Mapped[str] = mapped_column(sa.String(64), default="member")
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    invited_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_by_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrgApiToken(Base):
    """A token an organization owner made for scripts calling the admin API. Only its SHA-256
    is stored; it acts for its creator (never beyond the creator's current rights), only in
    its organization, only within its scopes, and only until it expires."""

    __tablename__ = "org_api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_by_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ClientType(enum.StrEnum):
    CONFIDENTIAL = "confidential"  # a server that keeps a secret or a private key
    PUBLIC = "public"  # a browser or mobile app: no secret, PKCE alone binds the code


class OAuthApp(Base):
    """A vendor app that signs its users in through Trellis (an OAuth client).

    Only the secret's SHA-256 is stored (the secret is shown once); ``jwks`` holds the public
    keys of an app that authenticates with ``private_key_jwt``. ``organizations`` lists the
    slugs of the organizations whose members may use the app."""

    __tablename__ = "oauth_apps"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    logo_url: Mapped[str] = mapped_column(sa.String(500), default="")
    client_type: Mapped[ClientType] = mapped_column(_enum(ClientType, "client_type"))
    auth_method: Mapped[str] = mapped_column(sa.String(32))
    secret_prefix: Mapped[str] = mapped_column(sa.String(16), default="")
    secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    jwks: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    backchannel_logout_uri: Mapped[str] = mapped_column(sa.String(500), default="")
    grant_types: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    organizations: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    access_token_seconds: Mapped[int] = mapped_column(default=600)
    refresh_token_seconds: Mapped[int] = mapped_column(default=30 * 86400)
    consent_required: Mapped[bool] = mapped_column(default=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # A rotated secret keeps working until ``previous_secret_expires_at`` (the grace period
    # lets the app's servers pick up the new one without an outage).
    previous_secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Where the portal's app tile sends a member (OpenID Connect third-party initiated login).
    initiate_login_uri: Mapped[str] = mapped_column(sa.String(500), default="")
    id_token_signed_response_alg: Mapped[str] = mapped_column(sa.String(16), default="RS256")
    # ``pairwise``: each sector sees its own ``sub`` for a user, derived with the salt
    # (apps registered for the same sector share it, and so see the same ``sub``).
    subject_type: Mapped[str] = mapped_column(sa.String(16), default="public")
    sector_identifier: Mapped[str] = mapped_column(sa.String(255), default="")
    pairwise_salt: Mapped[str] = mapped_column(sa.String(64), default="")
    frontchannel_logout_uri: Mapped[str] = mapped_column(sa.String(500), default="")
    # A pairwise app's sector given as a document listing its redirect URIs (OpenID Connect
    # Core 8.1); the sector is then that URL's host. Re-checked when the redirect URIs change.
    sector_identifier_uri: Mapped[str] = mapped_column(sa.String(500), default="")
    access_token_signed_response_alg: Mapped[str] = mapped_column(sa.String(16),
                                                                  default="RS256")
    # Redirect URIs the sector identifier document stopped listing at its last periodic
    # check (``trellis worker``): refused at the authorization endpoint until it lists
    # them again or an operator removes them.
    blocked_redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    sector_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OAuthPushedRequest(Base):
    """A pushed authorization request (RFC 9126): the parameters an app sent to
    ``/oauth/par`` with its credentials, found again by the ``request_uri`` it got back
    (stored as its SHA-256). Used once: the code issued for it marks it."""

    __tablename__ = "oauth_pushed_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    handle_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    app_id: Mapped[int] = mapped_column(sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"),
                                        index=True)
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthCode(Base):
    """An authorization code, stored as its SHA-256. ``used_at`` makes it single use: the
    redemption that sets it wins, and a later attempt revokes what the first one issued."""

    __tablename__ = "oauth_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    app_id: Mapped[int] = mapped_column(sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"),
                                        index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    auth_session_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("auth_sessions.id", ondelete="SET NULL"))
    redirect_uri: Mapped[str] = mapped_column(sa.Text)
    scope: Mapped[str] = mapped_column(sa.String(500), default="")
    nonce: Mapped[str] = mapped_column(sa.String(255), default="")
    code_challenge: Mapped[str] = mapped_column(sa.String(128))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime)
    acr: Mapped[str] = mapped_column(sa.String(64), default="")
    amr: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # The user's claims when they authorized (email, name, organization, roles, sid).
    claims: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthToken(Base):
    """One issued access token (a JWT, found by its ``jti``) and its refresh token (stored
    as a SHA-256). Tokens refreshed from one another share a ``family``: reusing a rotated
    refresh token revokes the whole family."""

    __tablename__ = "oauth_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    jti: Mapped[str] = mapped_column(sa.String(64), unique=True)
    app_id: Mapped[int] = mapped_column(sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"),
                                        index=True)
    user_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    auth_session_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("auth_sessions.id", ondelete="SET NULL"), index=True)
    code_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("oauth_codes.id", ondelete="SET NULL"), index=True)
    family: Mapped[str] = mapped_column(sa.String(64), index=True)
    grant_type: Mapped[str] = mapped_column(sa.String(64))
    scope: Mapped[str] = mapped_column(sa.String(500), default="")
    refresh_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acr: Mapped[str] = mapped_column(sa.String(64), default="")
    amr: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    access_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refresh_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthConsent(Base):
    """What a user has allowed an app: the scopes, remembered until the user revokes them."""

    __tablename__ = "oauth_consents"
    __table_args__ = (sa.UniqueConstraint("user_id", "app_id", name="uq_oauth_consents_user_app"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    app_id: Mapped[int] = mapped_column(sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"),
                                        index=True)
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class DeviceStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"


class OAuthDeviceCode(Base):
    """A device authorization (RFC 8628): the device polls with ``device_code`` (stored as a
    SHA-256) while the user approves ``user_code`` on the device page."""

    __tablename__ = "oauth_device_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_code: Mapped[str] = mapped_column(sa.String(16), unique=True)
    app_id: Mapped[int] = mapped_column(sa.ForeignKey("oauth_apps.id", ondelete="CASCADE"),
                                        index=True)
    scope: Mapped[str] = mapped_column(sa.String(500), default="")
    status: Mapped[DeviceStatus] = mapped_column(_enum(DeviceStatus, "device_status"),
                                                 default=DeviceStatus.PENDING)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    interval: Mapped[int] = mapped_column(default=5)
    last_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CustomRole(Base):
    """A role an organization's owner composed from the permissions its kind allows. The
    policy engine reads these as ``p`` rows of that organization only."""

    __tablename__ = "custom_roles"
    __table_args__ = (sa.UniqueConstraint("organization_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(63))
    description: Mapped[str] = mapped_column(sa.String(300), default="")
    # [[object type, action], ...]: each one a permission the kind's template allows
    permissions: Mapped[list[Any]] = mapped_column(sa.JSON, default=list)
    created_by_id: Mapped[int | None] = mapped_column()  # no FK: outlives its creator
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OrgLogo(Base):
    """An organization's uploaded logo: a sniffed PNG, JPEG or WebP, served from Trellis
    itself (no third-party host in the sign-in page, and the CSP stays same-origin)."""

    __tablename__ = "org_logos"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), unique=True)
    content_type: Mapped[str] = mapped_column(sa.String(32))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
class OutboxStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its first or next attempt
    SENT = "sent"
    FAILED = "failed"  # gave up after the last attempt; an operator may retry it


class OutboxMessage(Base):
    """An email written in the same transaction as the change that caused it, so a mail
    server outage delays it but never loses it. Delivery claims a row by moving
    ``next_attempt_at`` past the attempt's lease, which doubles as the retry time."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    to_address: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.String(300))
    text_body: Mapped[str] = mapped_column(sa.Text)
    html_body: Mapped[str] = mapped_column(sa.Text)
    template: Mapped[str] = mapped_column(sa.String(64))
    # Branding came from this organization; kept for the operators' page.
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="SET NULL"))
    status: Mapped[OutboxStatus] = mapped_column(_enum(OutboxStatus, "outbox_status"),
                                                 default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserToken(Base):
    """A single-use, short-lived token sent by email (password reset, confirmation of a new
    email address). Only its SHA-256 is stored; using it is one conditional UPDATE of
    ``used_at``."""

    __tablename__ = "user_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    purpose: Mapped[str] = mapped_column(sa.String(32))
    # The address the link went to, when it is not the account's own (a new email).
    email: Mapped[str] = mapped_column(sa.String(320), default="", server_default="")
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Registration(Base):
    """A sign-up waiting for its email to be confirmed. The account is created only when the
    link in the email is used, so an unconfirmed address never holds an account (nor blocks
    its real owner)."""

    __tablename__ = "registrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), index=True)  # normalized
    display_name: Mapped[str] = mapped_column(sa.String(200), default="")
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    terms_version: Mapped[str] = mapped_column(sa.String(32))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    ip: Mapped[str] = mapped_column(sa.String(45), default="")
    user_agent: Mapped[str] = mapped_column(sa.String(400), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsentRecord(Base):
    """One immutable entry of the consent ledger: a user granted or withdrew a purpose (such
    as the terms of use) under a given document version, when and how. Rows are only ever
    inserted; the current state of a purpose is its latest row. IP and user agent are kept
    as keyed hashes: enough to match a dispute, not to track anyone."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    purpose: Mapped[str] = mapped_column(sa.String(64))
    document_version: Mapped[str] = mapped_column(sa.String(32), default="")
    granted: Mapped[bool] = mapped_column()
    method: Mapped[str] = mapped_column(sa.String(32))  # registration, account page, ...
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip_hash: Mapped[str] = mapped_column(sa.String(64), default="")
    user_agent_hash: Mapped[str] = mapped_column(sa.String(64), default="")


class SiemStream(Base):
    """Where audit events go as they happen. The stream's cursor is the ``seq`` of the last
    audit event it delivered (or dead-lettered): the audit trail itself is the outbox, so an
    event is queued for every stream by the same transaction that records it, and each stream
    reads the trail in order."""

    __tablename__ = "siem_streams"
    __table_args__ = (sa.UniqueConstraint("organization_id", "name",
                                          name="uq_siem_streams_org_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    # None: an operator's stream over every organization's events.
    organization_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # syslog, webhook, file
    format: Mapped[str] = mapped_column(sa.String(16))  # json, ocsf, cef
    target: Mapped[str] = mapped_column(sa.String(500))  # host:port, URL or file path
    options: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    secret_sealed: Mapped[str | None] = mapped_column(sa.Text)
    actions: Mapped[list[str]] = mapped_column(sa.JSON, default=list)  # prefixes; [] = all
    enabled: Mapped[bool] = mapped_column(default=True)
    cursor_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(sa.String(500), default="")
    delivered: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SiemDeadLetter(Base):
    """A batch a stream gave up on after ``SIEM_MAX_ATTEMPTS``: the range of audit events it
    covered, so an operator can replay exactly that range once the receiver is fixed."""

    __tablename__ = "siem_dead_letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(
        sa.ForeignKey("siem_streams.id", ondelete="CASCADE"), index=True)
    first_seq: Mapped[int] = mapped_column(sa.BigInteger)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger)
    events: Mapped[int] = mapped_column()
    error: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProfileValue(Base):
    """A profile field's value (progressive profiling), with when, through which app or page
    and why it was collected. One row per user and field; a new value replaces the old one
    (the audit trail keeps each collection)."""

    __tablename__ = "profile_values"
    __table_args__ = (sa.UniqueConstraint("user_id", "field",
                                          name="uq_profile_values_user_field"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    field: Mapped[str] = mapped_column(sa.String(64))
    value: Mapped[str] = mapped_column(sa.String(500))
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    collected_via: Mapped[str] = mapped_column(sa.String(100))  # app:<client id>, account_page
    purpose: Mapped[str] = mapped_column(sa.String(300))
