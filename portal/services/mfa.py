"""Second factors: TOTP authenticator apps (RFC 6238) and one-time recovery codes, and the
organizations' policies that say who must use one.

The TOTP secret is sealed with the platform's encryption keys, so a copy of the database
alone does not let anyone compute codes. Recovery codes are stored as argon2id hashes only
and shown once. A TOTP code is accepted at most once: the factor remembers the newest
30-second step it accepted and a conditional UPDATE moves it forward, so two requests racing
with the same code cannot both win.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import pyotp
import segno
import sqlalchemy as sa
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.orm import Session

from portal import audit
from portal.crypto import SecretBox
from portal.db import Database, core, utcnow
from portal.errors import Conflict, InvalidRequest, NotFound, TrellisError, ValidationError
from portal.models import (
    Connection,
    Membership,
    MembershipStatus,
    MfaPolicy,
    Organization,
    Protocol,
    RecoveryCode,
    RoleGrant,
    TotpFactor,
    User,
    WebAuthnCredential,
)
from portal.passwords import Passwords
from portal.throttle import LoginThrottle

ISSUER = "Trellis"
STEP_SECONDS = 30
DRIFT_STEPS = 1  # one step either side: clocks of phones drift
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud, typed
# Roles that make someone an administrator of their organization for the "admins" policy.
ADMIN_ROLES = frozenset({"org_owner", "user_manager", "sso_manager", "auditor"})
# What an identity provider may assert to say the user already used a second factor there
# (RFC 8176 amr values; SAML AuthnContext classes are turned into "mfa" by the adapter).
MFA_AMR = frozenset({"mfa", "hwk", "otp", "sc", "swk", "fpt", "face", "iris", "retina"})


class InvalidCode(TrellisError):
    status = 401
    code = "invalid_code"
    message = "That code is not correct, or it was already used."


@dataclass(frozen=True)
class Enrollment:
    secret: str
    uri: str

    def qr_data_uri(self) -> str:
        """The provisioning URI as an SVG QR code in a ``data:`` URI (an image, so the CSP
        allows it and no script or style is involved)."""
        return segno.make(self.uri, error="m").svg_data_uri(scale=5, border=2)


# ---- reading


def confirmed_factor(session: Session, user_id: int) -> TotpFactor | None:
    return session.scalar(sa.select(TotpFactor).where(TotpFactor.user_id == user_id,
                                                      TotpFactor.confirmed_at.is_not(None)))


def has_second_factor(session: Session, user_id: int) -> bool:
    """An authenticator app or at least one passkey / security key (one query: every
    sign-in asks)."""
    return bool(session.scalar(sa.select(sa.or_(
        sa.exists().where(TotpFactor.user_id == user_id, TotpFactor.confirmed_at.is_not(None)),
        sa.exists().where(WebAuthnCredential.user_id == user_id)))))


def unused_recovery_codes(session: Session, user_id: int) -> int:
    return session.scalar(sa.select(sa.func.count(RecoveryCode.id))
                          .where(RecoveryCode.user_id == user_id,
                                 RecoveryCode.used_at.is_(None))) or 0


def required_for(session: Session, user_id: int) -> bool:
    """True when an organization the user is an active member of requires a second factor
    of them: of everyone, or of its administrators when the user holds an admin role."""
    return requirement_for(session, user_id) == "required"


def requirement_for(session: Session, user_id: int) -> str:
    """The strictest demand among the user's organizations: ``required`` (policy ``all``,
    or ``admins`` for an admin), else ``risk`` (asked when a sign-in looks risky), else
    ``none``."""
    rows = session.execute(
        sa.select(Organization.id, Organization.mfa_policy)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Membership.user_id == user_id, Membership.status == MembershipStatus.ACTIVE,
               Organization.mfa_policy != MfaPolicy.OFF)).all()
    policies = {policy for _, policy in rows}
    if MfaPolicy.ALL in policies:
        return "required"
    admin_orgs = [org_id for org_id, policy in rows if policy == MfaPolicy.ADMINS]
    if admin_orgs and session.scalar(sa.select(sa.func.count(RoleGrant.id)).where(
            RoleGrant.user_id == user_id, RoleGrant.organization_id.in_(admin_orgs),
            RoleGrant.role.in_(ADMIN_ROLES))) > 0:
        return "required"
    return "risk" if MfaPolicy.RISK in policies else "none"


def _member_of_org_with(policy: MfaPolicy, *extra) -> sa.Exists:
    user_id = sa.bindparam("user_id")
    return sa.exists().where(
        Membership.user_id == user_id, Membership.status == MembershipStatus.ACTIVE,
        Organization.id == Membership.organization_id, Organization.mfa_policy == policy,
        *extra)


# Whether the user has a second factor, and what their organizations demand, in one
# statement built once: every sign-in asks both.
SIGN_IN_DEMAND = sa.select(
    sa.or_(sa.exists().where(TotpFactor.user_id == sa.bindparam("user_id"),
                             TotpFactor.confirmed_at.is_not(None)),
           sa.exists().where(WebAuthnCredential.user_id == sa.bindparam("user_id"))),
    _member_of_org_with(MfaPolicy.ALL),
    _member_of_org_with(MfaPolicy.ADMINS, RoleGrant.user_id == sa.bindparam("user_id"),
                        RoleGrant.organization_id == Organization.id,
                        sa.or_(*(RoleGrant.role == role for role in sorted(ADMIN_ROLES)))),
    _member_of_org_with(MfaPolicy.RISK))


def sign_in_demand(session: Session, user_id: int) -> tuple[bool, str]:
    """``(has a second factor, requirement_for)`` in one round trip."""
    enrolled, everyone, admins, risk = core(session).execute(SIGN_IN_DEMAND,
                                                             {"user_id": user_id}).one()
    demand = "required" if everyone or admins else "risk" if risk else "none"
    return bool(enrolled), demand


def idp_asserted_mfa(amr: tuple[str, ...] | list[str], acr: str | None) -> bool:
    """Whether a federated sign-in says the identity provider used more than a password."""
    return bool(set(amr or ()) & MFA_AMR)


# ---- enrollment


def begin_totp(tx: Session, box: SecretBox, user: User) -> Enrollment:
    """Start (or restart) enrolling an authenticator: a new secret, not usable until the
    user proves with a first code that their app has it."""
    if confirmed_factor(tx, user.id) is not None:
        raise Conflict("An authenticator app is already set up. Remove it first to set up "
                       "another.", code="mfa_already_enrolled")
    secret = pyotp.random_base32(32)
    row = tx.scalar(sa.select(TotpFactor).where(TotpFactor.user_id == user.id))
    if row is None:
        row = TotpFactor(user_id=user.id, sealed_secret="", last_step=0)
        tx.add(row)
    row.sealed_secret = box.seal({"totp": secret})
    row.created_at = utcnow()
    tx.flush()
    return Enrollment(secret, pyotp.TOTP(secret).provisioning_uri(name=user.email,
                                                                  issuer_name=ISSUER))


def pending_enrollment(tx: Session, box: SecretBox, user: User) -> Enrollment | None:
    row = tx.scalar(sa.select(TotpFactor).where(TotpFactor.user_id == user.id,
                                                TotpFactor.confirmed_at.is_(None)))
    if row is None:
        return None
    secret = box.open(row.sealed_secret)["totp"]
    return Enrollment(secret, pyotp.TOTP(secret).provisioning_uri(name=user.email,
                                                                  issuer_name=ISSUER))


def confirm_totp(tx: Session, ctx: audit.Context, box: SecretBox, passwords: Passwords,
                 user: User, code: str, now: float | None = None) -> list[str]:
    """Finish enrolling with the first code from the app; returns the recovery codes, which
    are shown once and kept only as hashes."""
    row = tx.scalar(sa.select(TotpFactor).where(TotpFactor.user_id == user.id,
                                                TotpFactor.confirmed_at.is_(None)))
    if row is None:
        raise NotFound("There is no authenticator app being set up. Start again.",
                       code="mfa_not_enrolling")
    step = _matching_step(box.open(row.sealed_secret)["totp"], code, now)
    if step is None:
        raise InvalidCode()  # the caller's transaction rolls back: see enrollment_failed
    row.confirmed_at = utcnow()
    row.last_step = step
    row.last_used_at = row.confirmed_at
    codes = new_recovery_codes_if_none(tx, passwords, user.id)
    audit.record(tx, ctx, "mfa.totp_enroll", target=f"user:{user.email}",
                 details={"recovery_codes": len(codes)})
    return codes


def enrollment_failed(db: Database, ctx: audit.Context, user: User) -> None:
    """Audit a wrong first code (in its own transaction: the enrollment's rolled back)."""
    with db.transaction() as tx:
        audit.record(tx, ctx, "mfa.totp_enroll", outcome="failure", reason="invalid_code",
                     target=f"user:{user.email}")


def regenerate_recovery_codes(tx: Session, ctx: audit.Context, passwords: Passwords,
                              user: User) -> list[str]:
    """Replace every recovery code (used or not) with a fresh set."""
    if not has_second_factor(tx, user.id):
        raise NotFound("Set up an authenticator app first.", code="mfa_not_enrolled")
    codes = _new_recovery_codes(tx, passwords, user.id)
    audit.record(tx, ctx, "mfa.recovery_codes_regenerate", target=f"user:{user.email}")
    return codes


def remove_totp(tx: Session, ctx: audit.Context, user: User) -> None:
    """Remove the authenticator app (and the recovery codes, when no passkey remains)."""
    deleted = tx.execute(sa.delete(TotpFactor).where(TotpFactor.user_id == user.id)).rowcount
    if not has_second_factor(tx, user.id):  # recovery codes stand in for factors only
        drop_recovery_codes(tx, user.id)
    if not deleted:
        raise NotFound("No authenticator app is set up.", code="mfa_not_enrolled")
    audit.record(tx, ctx, "mfa.totp_remove", target=f"user:{user.email}")


def drop_recovery_codes(tx: Session, user_id: int) -> None:
    tx.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


def new_recovery_codes_if_none(tx: Session, passwords: Passwords, user_id: int) -> list[str]:
    """The first factor of any kind brings recovery codes; later ones keep the set."""
    exists = tx.scalar(sa.select(sa.func.count(RecoveryCode.id))
                       .where(RecoveryCode.user_id == user_id))
    return [] if exists else _new_recovery_codes(tx, passwords, user_id)


def reset(tx: Session, ctx: audit.Context, user: User, reason: str = "") -> int:
    """An operator removes every second factor of a user who lost them all; returns how
    many factors were removed."""
    removed = tx.execute(sa.delete(TotpFactor).where(TotpFactor.user_id == user.id,
                                                     TotpFactor.confirmed_at.is_not(None))
                         ).rowcount
    removed += tx.execute(sa.delete(WebAuthnCredential)
                          .where(WebAuthnCredential.user_id == user.id)).rowcount
    drop_recovery_codes(tx, user.id)
    audit.record(tx, ctx, "mfa.reset", target=f"user:{user.email}", reason=reason[:400],
                 details={"factors_removed": removed})
    return removed


def _new_recovery_codes(tx: Session, passwords: Passwords, user_id: int) -> list[str]:
    tx.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = ["".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
             for _ in range(RECOVERY_CODES)]
    for code in codes:
        tx.add(RecoveryCode(user_id=user_id, code_hash=passwords.hasher.hash(code)))
    tx.flush()
    return [f"{code[:5]}-{code[5:]}" for code in codes]


# ---- verification


def verify(db: Database, ctx: audit.Context, throttle: LoginThrottle, box: SecretBox,
           passwords: Passwords, user: User, code: str, purpose: str = "sign_in",
           now: float | None = None) -> str:
    """Check a second-factor code (TOTP, or a recovery code) for ``user``; returns the
    method used (``otp`` or ``recovery``)."""
    cleaned = "".join(ch for ch in (code or "") if ch.isalnum()).lower()[:32]

    def attempt(tx: Session) -> str | None:
        if cleaned.isdigit() and len(cleaned) == 6:
            return "otp" if _use_totp(tx, box, user.id, cleaned, now) else None
        if len(cleaned) == 10:
            return "recovery" if _use_recovery_code(tx, passwords, user.id, cleaned) else None
        return None

    return checked_attempt(db, ctx, throttle, user, purpose, attempt)


def checked_attempt(db: Database, ctx: audit.Context, throttle: LoginThrottle, user: User,
                    purpose: str, attempt) -> str:
    """Run one second-factor ``attempt`` (a function of the transaction returning the method
    used, or None) under the throttle. Wrong answers count towards the same kind of lockout
    as wrong passwords, per account and per client IP; every outcome is audited."""
    key = f"mfa:{user.id}"
    throttle.check(key, ctx.ip)
    reason = "invalid_code"
    with db.transaction() as tx:
        try:
            method = attempt(tx)
        except InvalidCode as refused:
            method, reason = None, refused.detail or reason
        if method is not None:
            left = unused_recovery_codes(tx, user.id) if method == "recovery" else None
            audit.record(tx, ctx.acting_as(user.id, user.email), "auth.mfa",
                         target=f"user:{user.email}",
                         details={"method": method, "purpose": purpose,
                                  **({"recovery_codes_left": left} if left is not None
                                     else {})})
    if method is not None:
        throttle.record_success(key, ctx.ip)
        return method
    lockout = throttle.record_failure(key, ctx.ip)
    with db.transaction() as tx:
        audit.record(tx, ctx, "auth.mfa", outcome="failure", target=f"user:{user.email}",
                     reason=reason, details={"purpose": purpose})
        if lockout is not None:
            audit.record(tx, ctx, "auth.lockout", outcome="failure",
                         target=f"user:{user.email}" if lockout.scope == "account"
                         else f"ip:{ctx.ip}", reason=f"mfa_{lockout.scope}_locked",
                         details={"seconds": lockout.seconds})
    raise InvalidCode()


def _matching_step(secret: str, code: str, now: float | None) -> int | None:
    """The time step whose code equals ``code`` (within the allowed drift), or None."""
    code = "".join(ch for ch in (code or "") if ch.isdigit())
    if len(code) != 6:
        return None
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if secrets.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _use_totp(tx: Session, box: SecretBox, user_id: int, code: str, now: float | None) -> bool:
    row = confirmed_factor(tx, user_id)
    if row is None:
        return False
    step = _matching_step(box.open(row.sealed_secret)["totp"], code, now)
    if step is None:
        return False
    # Moves forward only: the same code (or an older one) a second time matches no row.
    moved = tx.execute(sa.update(TotpFactor)
                       .where(TotpFactor.id == row.id, TotpFactor.last_step < step)
                       .values(last_step=step, last_used_at=utcnow())
                       .execution_options(synchronize_session=False)).rowcount
    return moved == 1


def _use_recovery_code(tx: Session, passwords: Passwords, user_id: int, code: str) -> bool:
    if not has_second_factor(tx, user_id):
        return False
    rows = tx.execute(sa.select(RecoveryCode.id, RecoveryCode.code_hash)
                      .where(RecoveryCode.user_id == user_id,
                             RecoveryCode.used_at.is_(None))).all()
    for row_id, code_hash in rows:
        try:
            passwords.hasher.verify(code_hash, code)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            continue
        used = tx.execute(sa.update(RecoveryCode)
                          .where(RecoveryCode.id == row_id, RecoveryCode.used_at.is_(None))
                          .values(used_at=utcnow())
                          .execution_options(synchronize_session=False)).rowcount
        return used == 1
    return False


# ---- organization policy


def set_policy(tx: Session, ctx: audit.Context, org: Organization, policy: str) -> None:
    """Who must use a second factor: takes effect at each member's next sign-in."""
    try:
        value = MfaPolicy(policy)
    except ValueError:
        raise ValidationError("Choose off, admins, all or risk.",
                              code="invalid_mfa_policy") from None
    if value == org.mfa_policy:
        return
    before = org.mfa_policy
    org.mfa_policy = value
    audit.record(tx, ctx, "organization.mfa_policy", target=f"organization:{org.slug}",
                 organization_id=org.id,
                 details={"before": before.value if before else None, "after": value.value})


def set_risk_thresholds(tx: Session, ctx: audit.Context, org: Organization,
                        step_up_at: str | int | None, deny_at: str | int | None,
                        defaults: tuple[int, int]) -> None:
    """The risk scores (0-100) at which members' sign-ins are stepped up and denied under
    the ``risk`` policy; empty keeps the platform's ``defaults`` (step-up, deny). A member
    of several organizations is held to the strictest. Applies from the next sign-in."""
    def parse(field: str, raw, high: int) -> int | None:
        raw = "" if raw is None else str(raw).strip()
        if raw == "":
            return None
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise InvalidRequest(field, f"a whole number from 1 to {high}, or empty for the "
                                        "platform's default")
        return int(raw)
    step_up = parse("risk_step_up_at", step_up_at, 100)
    deny = parse("risk_deny_at", deny_at, 101)
    if (deny or defaults[1]) <= (step_up or defaults[0]):
        raise InvalidRequest("risk_deny_at", "must be above the step-up score "
                                             f"({step_up or defaults[0]})")
    before = [org.risk_step_up_at, org.risk_deny_at]
    if before == [step_up, deny]:
        return
    org.risk_step_up_at, org.risk_deny_at = step_up, deny
    audit.record(tx, ctx, "organization.risk_thresholds", target=f"organization:{org.slug}",
                 organization_id=org.id,
                 details={"before": before, "after": [step_up, deny],
                          "defaults": list(defaults)})


def set_idp_mfa_trust(tx: Session, ctx: audit.Context, connection: Connection,
                      trust: bool) -> None:
    """Accept (or stop accepting) the identity provider's own second factor: a sign-in
    whose ``amr`` or AuthnContext says multi-factor then skips Trellis's code step."""
    if trust and connection.protocol == Protocol.LDAP:
        raise ValidationError("A directory cannot vouch for a second factor.",
                              code="not_federated")
    before = bool((connection.settings or {}).get("trust_idp_mfa"))
    if before == trust:
        return
    connection.settings = {**connection.settings, "trust_idp_mfa": trust}
    audit.record(tx, ctx, "connection.update", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"trust_idp_mfa": [before, trust]})


CHANGES = {  # what the notification email says happened
    "totp_added": "an authenticator app was set up",
    "totp_removed": "the authenticator app was removed",
    "passkey_added": "a passkey or security key was added",
    "passkey_removed": "a passkey or security key was removed",
    "recovery_codes": "new recovery codes were made (the old ones no longer work)",
}


def notify_change(tx: Session, user: User, change: str, link: str, not_me=None) -> None:
    """Tell the account's owner by email (through the outbox, in the same transaction as
    the change): the link leads to their security page, and ``not_me`` (a link builder)
    adds the one that locks the account if the change was not theirs."""
    from portal.services import outbox, takeover
    outbox.enqueue(tx, to=user.email, template="mfa_changed", org=None,
                   context={"what": CHANGES[change], "link": link,
                            "when": utcnow().strftime("%Y-%m-%d %H:%M"),
                            "not_me": takeover.not_me_link(tx, user.id, "mfa", not_me)})


def recent_risk(session: Session, organization_id: int, limit: int = 25) -> list[dict]:
    """The latest sign-ins of the organization's members with their risk score and signals
    (from the audit trail), for the organization's admins."""
    from portal.models import AuditEvent
    members = sa.select(Membership.user_id).where(
        Membership.organization_id == organization_id)
    rows = session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "auth.risk",
                                    AuditEvent.actor_id.in_(members))
        .order_by(AuditEvent.seq.desc()).limit(limit))
    return [{"when": row.occurred_at, "who": row.actor, "ip": row.ip,
             "score": row.details.get("score"), "decision": row.details.get("decision"),
             "signals": [name for name, value in (row.details.get("signals") or {}).items()
                         if value is True or (isinstance(value, int) and value > 0
                                              and not isinstance(value, bool))],
             "missing": row.details.get("missing") or []} for row in rows]
