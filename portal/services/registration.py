"""Self-registration: who may sign up where, the sign-up, and the email verification that
creates the account.

Nothing here tells the person at the form whether an address already has an account: a
sign-up for a registered address looks exactly like any other, and the owner of the address
gets an email saying so instead of a verification link. The account is created only when the
link in the verification email is used, so an address nobody confirmed never holds an
account, and never blocks its real owner.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from federation import discovery
from portal import audit
from portal.db import utcnow
from portal.errors import Conflict, Forbidden, NotFound, TrellisError, ValidationError
from portal.models import (
    Domain,
    Invitation,
    MembershipSource,
    Organization,
    OrgStatus,
    OutboxMessage,
    Registration,
    RegistrationMode,
    User,
)
from portal.passwords import Passwords, check_new_password
from portal.services import consent, organizations, outbox, users
from portal.validation import normalize_email


class InvalidLink(TrellisError):
    status = 400
    code = "invalid_token"
    message = ("This confirmation link has expired or was already used. Sign up again to "
               "get a new one.")


@dataclass(frozen=True)
class SignUp:
    """What the form sent, as plain data."""

    email: str
    password: str
    confirm: str
    display_name: str
    accepted_terms: bool
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class Links:
    verify: Callable[[str], str]
    sign_in: str
    reset: str


MODES = {
    RegistrationMode.INVITE.value: "Invitation only: people your admins invite",
    RegistrationMode.DOMAINS.value: "Open to your verified domains: anyone with an address "
                                    "at one of them",
    RegistrationMode.OPEN.value: "Open: anyone may sign up and join",
}


def set_mode(session: Session, ctx: audit.Context, slug: str, mode: str) -> Organization:
    """Set who may create an account in this organization. An unknown mode is a plain
    validation error naming the choices; setting the mode it already has records nothing."""
    org = organizations.get(session, slug)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValidationError(f"Choose who may sign up: {', '.join(MODES)}.",
                              code="invalid_registration_mode")
    previous = org.registration.value
    if previous == mode:
        return org
    org.registration = RegistrationMode(mode)
    audit.record(session, ctx, "org.registration", target=f"org:{slug}",
                 organization_id=org.id, details={"from": previous, "to": mode})
    return org


def verified_domains(session: Session, org: Organization) -> list[str]:
    """The domains whose addresses may sign up under the ``domains`` mode (an admin choosing
    it with none verified yet is told that nobody can sign up). A domain suspended because
    its TXT record disappeared no longer proves ownership, so it lets nobody sign up."""
    return list(session.scalars(sa.select(Domain.name).where(
        Domain.organization_id == org.id, Domain.verified.is_(True),
        Domain.suspended_at.is_(None)).order_by(Domain.name)))


def open_for(session: Session, org: Organization | None, platform_open: bool) -> bool:
    """Whether the registration page exists at all (the form, before any address)."""
    if org is None:
        return platform_open
    return org.status == OrgStatus.ACTIVE


def check_allowed(session: Session, org: Organization | None, email: str,
                  platform_open: bool) -> None:
    """Raise unless this address may sign up here. The answer depends on the address's
    domain and on invitations, never on whether an account exists."""
    if not open_for(session, org, platform_open):
        raise NotFound()
    if discovery.connections_for_email(session, email):
        raise Forbidden("Your organization signs you in through its own identity provider: "
                        "use Sign in, no account is needed.", code="registration_sso")
    if org is None or org.registration == RegistrationMode.OPEN:
        return
    domain = email.rpartition("@")[2]
    if org.registration == RegistrationMode.DOMAINS:
        if domain not in verified_domains(session, org):
            raise Forbidden(f"{org.name} accepts sign-ups only from its own email domains.",
                            code="registration_domain")
        return
    invited = session.scalar(sa.select(Invitation.id).where(
        Invitation.organization_id == org.id, Invitation.email == email,
        Invitation.accepted_at.is_(None), Invitation.revoked_at.is_(None),
        Invitation.expires_at > utcnow()))
    if invited is None:
        raise Forbidden(f"{org.name} accepts new accounts by invitation only. Ask one of "
                        "its administrators to invite you.", code="registration_invite_only")


def start(session: Session, ctx: audit.Context, passwords: Passwords, form: SignUp,
          org: Organization | None, *, platform_open: bool, terms_version: str, hours: int,
          links: Links) -> OutboxMessage | None:
    """Check the form, then mail either a verification link (new address) or a notice to
    the owner (known address). Both cost the same, and the caller answers the same."""
    email = normalize_email(form.email)
    check_allowed(session, org, email, platform_open)
    name = (form.display_name or "").strip()
    if len(name) > 200:
        raise ValidationError("Your name must be at most 200 characters.", code="invalid_name")
    if not form.accepted_terms:
        raise ValidationError("Accept the terms of use to create an account.",
                              code="terms_not_accepted")
    if form.password != form.confirm:
        raise ValidationError("The two passwords do not match.", code="password_mismatch")
    check_new_password(form.password, email, name)
    password_hash = passwords.hash(form.password)  # also for known addresses: same cost
    existing = session.scalar(sa.select(User).where(User.email == email))
    details = {"organization": org.slug if org else None}
    if outbox.recently_written(session, email, ("already_registered", "verify_email")):
        audit.record(session, ctx, "registration.start", outcome="failure",
                     target=f"user:{email}", reason="recently_sent", details=details)
        return None  # one email per address per minute: nobody floods a mailbox from here
    if existing is not None:
        audit.record(session, ctx, "registration.start", outcome="failure",
                     target=f"user:{email}", reason="existing_account", details=details)
        return outbox.enqueue(session, to=email, template="already_registered",
                              org=org, context={"link": links.sign_in,
                                                "reset_link": links.reset})
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(Registration(
        email=email, display_name=name, password_hash=password_hash,
        organization_id=org.id if org else None, terms_version=terms_version,
        token_hash=_digest(token), ip=form.ip[:45], user_agent=form.user_agent[:400],
        created_at=now, expires_at=now + timedelta(hours=hours)))
    audit.record(session, ctx, "registration.start", target=f"user:{email}", details=details)
    return outbox.enqueue(session, to=email, template="verify_email", org=org,
                          context={"link": links.verify(token), "hours": hours,
                                   "name": name})


def open_link(session: Session, token: str) -> Registration:
    row = session.scalar(sa.select(Registration)
                         .where(Registration.token_hash == _digest(token or "")))
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise InvalidLink()
    return row


def verify(session: Session, ctx: audit.Context, token: str, *, key: str,
           privacy_version: str | None = None) -> User:
    """Use the link: create the account (and its membership where the organization's
    setting makes one), record the terms acceptance (and that the privacy notice in
    ``privacy_version`` was shown, linked from the same form), spend the link."""
    pending = open_link(session, token)
    spent = session.execute(sa.update(Registration)
                            .where(Registration.id == pending.id,
                                   Registration.used_at.is_(None))
                            .values(used_at=utcnow())).rowcount
    if spent != 1:
        raise InvalidLink()
    if session.scalar(sa.select(User.id).where(User.email == pending.email)) is not None:
        raise Conflict("An account with this address exists already: sign in.",
                       code="duplicate_email")
    user = User(email=pending.email, display_name=pending.display_name,
                password_hash=pending.password_hash)
    session.add(user)
    session.flush()
    org = session.get(Organization, pending.organization_id) if pending.organization_id \
        else None
    joined = org is not None and org.registration != RegistrationMode.INVITE
    audit.record(session, ctx.acting_as(user.id, user.email), "registration.verify",
                 target=f"user:{user.email}",
                 organization_id=org.id if org else None,
                 details={"organization": org.slug if org else None, "member": joined,
                          "terms_version": pending.terms_version})
    from portal import assurance
    assurance.raise_to(session, ctx.acting_as(user.id, user.email), user, "email",
                       org.id if org else None)  # the link proved the address
    if joined:
        users.add_membership(session, ctx.acting_as(user.id, user.email), user, org,
                             MembershipSource.MANUAL)
    consent.record(session, user_id=user.id, purpose=consent.TERMS,
                   version=pending.terms_version, granted=True, method="registration",
                   ip=pending.ip, user_agent=pending.user_agent, key=key,
                   when=pending.created_at)
    if privacy_version:
        consent.record(session, user_id=user.id, purpose=consent.PRIVACY,
                       version=privacy_version, granted=True, method="registration",
                       ip=pending.ip, user_agent=pending.user_agent, key=key,
                       when=pending.created_at)
    return user


def purge_expired(session: Session, before: datetime | None = None) -> int:
    """Drop sign-ups whose link expired (they hold a password hash nobody confirmed)."""
    result = session.execute(sa.delete(Registration)
                             .where(Registration.expires_at < (before or utcnow())))
    return result.rowcount or 0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
