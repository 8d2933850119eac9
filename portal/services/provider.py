"""What the OpenID Provider stores: authorization codes, tokens, consents, device codes.

Every one-time credential is consumed with a single conditional UPDATE, so of two concurrent
redemptions exactly one wins; a second use of a code or of a rotated refresh token is treated
as theft and revokes everything issued from it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.models import (
    AuthSession,
    Domain,
    Membership,
    MembershipStatus,
    OAuthApp,
    OAuthCode,
    OAuthConsent,
    OAuthPushedRequest,
    OAuthToken,
    Organization,
    OrgStatus,
    RoleGrant,
    User,
    UserStatus,
)

CODE_SECONDS = 60


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def subject_for(app: OAuthApp, user_id: int) -> str:
    """The ``sub`` an app sees: the user id, or for a pairwise app a value derived from the
    app's sector, the user and the sector's secret salt (OpenID Connect Core 8.1), so apps of
    different sectors cannot correlate users by ``sub``."""
    if app.subject_type != "pairwise":
        return str(user_id)
    raw = hashlib.sha256(f"{app.sector_identifier}|{user_id}|{app.pairwise_salt}".encode())
    return base64.urlsafe_b64encode(raw.digest()).rstrip(b"=").decode()


def sid_for(token_hash: str) -> str:
    """The ``sid`` claim: names the Trellis session without revealing its lookup key."""
    return digest("sid:" + token_hash)[:32]


@dataclass(frozen=True)
class OrgRef:
    id: int
    slug: str
    name: str


@dataclass(frozen=True)
class Principal:
    """Who a token is about and how they signed in; travels from the authorization request
    through the code or refresh token to the token generator."""

    user_id: int
    email: str
    name: str
    email_verified: bool
    org: OrgRef | None
    roles: tuple[str, ...]
    auth_session_id: int | None
    sid: str
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]
    nonce: str = ""
    code_id: int | None = None
    family: str = field(default_factory=lambda: secrets.token_hex(16))

    def get_user_id(self) -> str:  # Authlib asks for it
        return str(self.user_id)


# --- organizations and roles --------------------------------------------------------------

def eligible_orgs(session: Session, user_id: int, app: OAuthApp) -> list[OrgRef]:
    """The user's active organizations that the app is offered to."""
    return list(sign_in_facts(session, user_id, "", app).roles)


@dataclass(frozen=True)
class SignInFacts:
    """What an authorization needs to know about the signed-in user, read at once: the
    organizations the app is offered to (in name order) with the user's roles in each, and
    whether the user's address is in a verified domain."""

    roles: dict[OrgRef, tuple[str, ...]]
    email_verified: bool

    @property
    def orgs(self) -> list[OrgRef]:
        return list(self.roles)


# One statement, built once (the compiled form is cached): the user's active organizations
# left-joined to their role grants, with the verified-domain test as a scalar subquery.
_FACTS = (
    sa.select(Organization.id, Organization.slug, Organization.name, RoleGrant.role,
              sa.exists().where(Domain.name == sa.bindparam("domain"),
                                Domain.verified.is_(True)).label("verified"))
    .join(Membership, Membership.organization_id == Organization.id)
    .outerjoin(RoleGrant, sa.and_(RoleGrant.user_id == Membership.user_id,
                                  RoleGrant.organization_id == Organization.id))
    .where(Membership.user_id == sa.bindparam("user_id"),
           Membership.status == MembershipStatus.ACTIVE,
           Organization.status == OrgStatus.ACTIVE)
    .order_by(Organization.name, Organization.id))


def sign_in_facts(session: Session, user_id: int, email: str, app: OAuthApp
                  ) -> SignInFacts:
    """Organizations, roles and the verified-email flag in one query instead of three (the
    authorization endpoint runs this at every app sign-in)."""
    rows = session.execute(_FACTS, {"user_id": user_id,
                                    "domain": email.rpartition("@")[2]}).all()
    offered = app.organizations or []
    every = "*" in offered  # "*": offered to every organization
    roles: dict[OrgRef, set[str]] = {}
    verified = False
    for org_id, slug, name, role, domain_verified in rows:
        verified = verified or bool(domain_verified)
        if not every and slug not in offered:
            continue
        granted = roles.setdefault(OrgRef(org_id, slug, name), {"member"})
        if role:
            granted.add(role)
    return SignInFacts({org: tuple(sorted(granted)) for org, granted in roles.items()},
                       verified)


def roles_in(session: Session, user_id: int, org_id: int) -> tuple[str, ...]:
    granted = session.scalars(sa.select(RoleGrant.role).where(
        RoleGrant.user_id == user_id, RoleGrant.organization_id == org_id)).all()
    return tuple(sorted({"member", *granted}))


def email_verified(session: Session, email: str) -> bool:
    """An address counts as verified when its domain is a verified organization domain."""
    domain = email.rpartition("@")[2]
    return bool(session.scalar(sa.select(Domain.id).where(Domain.name == domain,
                                                          Domain.verified.is_(True))))


def auth_session_id(session: Session, token_hash: str) -> int | None:
    return session.scalar(sa.select(AuthSession.id).where(AuthSession.token_hash == token_hash))


def principal(user: User, facts: SignInFacts, org: OrgRef, token_hash: str,
              auth_time: datetime, acr: str, amr: tuple[str, ...],
              session_id: int | None) -> Principal:
    """Who the code is for, from the facts read for this authorization (no query)."""
    return Principal(user_id=user.id, email=user.email, name=user.display_name,
                     email_verified=facts.email_verified, org=org,
                     roles=facts.roles.get(org, ("member",)),
                     auth_session_id=session_id, sid=sid_for(token_hash),
                     auth_time=auth_time, acr=acr, amr=amr)


def still_allowed(session: Session, user_id: int, org_id: int | None,
                  auth_session_id: int | None = None, check_session: bool = False) -> bool:
    """A suspended user, a lost membership or a suspended organization stops tokens at once;
    with ``check_session``, so does signing out of the Trellis session they came from.
    One query, prebuilt: this runs on every token request, introspection and userinfo call."""
    with_org, with_session = org_id is not None, bool(check_session and auth_session_id)
    return session.execute(_ALLOWED[with_org, with_session], {
        "user_id": user_id, "org_id": org_id, "session_id": auth_session_id}
    ).first() is not None


def _allowed_query(with_org: bool, with_session: bool) -> sa.Select:
    user_id = sa.bindparam("user_id")
    query = sa.select(User.id).where(User.id == user_id, User.status == UserStatus.ACTIVE)
    if with_org:
        query = query.where(sa.exists().where(
            Membership.user_id == user_id,
            Membership.organization_id == sa.bindparam("org_id"),
            Membership.status == MembershipStatus.ACTIVE,
            Organization.id == Membership.organization_id,
            Organization.status == OrgStatus.ACTIVE))
    if with_session:
        query = query.where(sa.exists().where(AuthSession.id == sa.bindparam("session_id"),
                                              AuthSession.revoked_at.is_(None)))
    return query


_ALLOWED = {(o, s): _allowed_query(o, s) for o in (False, True) for s in (False, True)}


def refresh_principal(session: Session, token: OAuthToken) -> Principal | None:
    """Rebuild who a refresh token is about, with today's roles."""
    user = session.get(User, token.user_id) if token.user_id else None
    if user is None or not still_allowed(session, user.id, token.organization_id):
        return None
    org = None
    if token.organization_id is not None:
        row = session.get(Organization, token.organization_id)
        org = OrgRef(row.id, row.slug, row.name)
    session_row = session.get(AuthSession, token.auth_session_id) if token.auth_session_id \
        else None
    return Principal(user_id=user.id, email=user.email, name=user.display_name,
                     email_verified=email_verified(session, user.email), org=org,
                     roles=roles_in(session, user.id, org.id) if org else (),
                     auth_session_id=token.auth_session_id,
                     sid=sid_for(session_row.token_hash) if session_row else "",
                     auth_time=token.auth_time or token.created_at, acr=token.acr,
                     amr=tuple(token.amr or ()), family=token.family)


# --- authorization codes ------------------------------------------------------------------

INSERT_CODE = sa.insert(OAuthCode.__table__)


def save_code(session: Session, app_id: int, who: Principal, code: str, redirect_uri: str,
              scope: str, nonce: str, challenge: str) -> None:
    now = utcnow()
    session.execute(INSERT_CODE, {
        "code_hash": digest(code), "app_id": app_id, "user_id": who.user_id,
        "organization_id": who.org.id if who.org else None,
        "auth_session_id": who.auth_session_id, "redirect_uri": redirect_uri, "scope": scope,
        "nonce": nonce or "", "code_challenge": challenge, "auth_time": who.auth_time,
        "acr": who.acr, "amr": list(who.amr), "claims": snapshot(who),
        "expires_at": now + timedelta(seconds=CODE_SECONDS), "used_at": None,
        "reused_at": None, "created_at": now})


def snapshot(who: Principal) -> dict:
    """What the code's tokens will say about the user, taken when the user authorized (a
    code lives a minute; whether the user may still sign in is checked at redemption)."""
    return {"email": who.email, "name": who.name, "email_verified": who.email_verified,
            "org": [who.org.id, who.org.slug, who.org.name] if who.org else None,
            "roles": list(who.roles), "sid": who.sid}


def code_principal(session: Session, row: sa.Row) -> Principal | None:
    if not still_allowed(session, row.user_id, row.organization_id):
        return None
    claims = row.claims or {}
    org = OrgRef(*claims["org"]) if claims.get("org") else None
    return Principal(user_id=row.user_id, email=claims.get("email", ""),
                     name=claims.get("name", ""),
                     email_verified=bool(claims.get("email_verified")), org=org,
                     roles=tuple(claims.get("roles") or ()),
                     auth_session_id=row.auth_session_id, sid=claims.get("sid", ""),
                     auth_time=row.auth_time, acr=row.acr, amr=tuple(row.amr or ()),
                     nonce=row.nonce, code_id=row.id)


_codes = OAuthCode.__table__
_CONSUME_CODE = (sa.update(_codes)
                 .where(_codes.c.code_hash == sa.bindparam("hash"),
                        _codes.c.app_id == sa.bindparam("app"), _codes.c.used_at.is_(None))
                 .values(used_at=sa.bindparam("now")).returning(*_codes.c))


def consume_code(session: Session, ctx: Callable[[], audit.Context], code: str, app_id: int
                 ) -> sa.Row | None:
    """The code if this call is its first redemption by its own app, before it expired.
    A second redemption revokes every token the first one issued.

    Runs in the token request's one transaction (``session``), which goes on to store the
    tokens: the UPDATE holds the code row's lock until they are committed, so a concurrent
    second redemption waits, then finds the code used and revokes the stored tokens."""
    now = utcnow()
    code_hash = digest(code)
    row = session.execute(_CONSUME_CODE, {"hash": code_hash, "app": app_id, "now": now}
                          ).first()
    if row is not None:  # a plain row: building an ORM object here costs more
        return row if row.expires_at > now else None
    row = session.scalar(sa.select(OAuthCode).where(OAuthCode.code_hash == code_hash))
    if row is None or row.app_id != app_id:
        return None  # unknown, or another app's code: it is not burnt by this attempt
    session.execute(sa.update(OAuthCode).where(OAuthCode.id == row.id).values(reused_at=now))
    revoked = _revoke(session, OAuthToken.code_id == row.id)
    audit.record(session, ctx(), "oauth.code_reuse", outcome="failure",
                 target=f"code:{row.id}", reason="code_reused",
                 details={"revoked_tokens": revoked})
    return None


# --- pushed authorization requests (RFC 9126) ---------------------------------------------

PAR_PREFIX = "urn:ietf:params:oauth:request_uri:"
PAR_SECONDS = 90  # the app must send the browser within this time (``expires_in``)
# Once the browser has opened it, the request stays usable while the user signs in (at
# their organization's identity provider, perhaps) and consents, until a code is issued.
PAR_OPEN_SECONDS = 600
INSERT_PUSHED = sa.insert(OAuthPushedRequest.__table__)


@dataclass(frozen=True)
class PushedRequest:
    id: int
    params: dict[str, str]


def push_request(session: Session, app_id: int, params: dict[str, str]) -> str:
    """Store an app's authorization request; returns the ``request_uri`` naming it (only
    its digest is stored)."""
    handle = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(INSERT_PUSHED, {
        "handle_hash": digest(handle), "app_id": app_id, "params": params,
        "expires_at": now + timedelta(seconds=PAR_SECONDS), "opened_at": None,
        "used_at": None, "created_at": now})
    if secrets.randbelow(64) == 0:  # the table only ever holds minutes of requests
        session.execute(sa.delete(OAuthPushedRequest).where(
            OAuthPushedRequest.expires_at < now - timedelta(hours=1)))
    return PAR_PREFIX + handle


def open_pushed_request(db: Database, request_uri: str, app_id: int) -> PushedRequest | None:
    """The app's pushed request named by ``request_uri``, if it has not expired and no code
    was issued for it yet. The first opening gives it ``PAR_OPEN_SECONDS`` more."""
    if not isinstance(request_uri, str) or not request_uri.startswith(PAR_PREFIX) or \
            len(request_uri) > 200:
        return None
    now = utcnow()
    with db.transaction() as session:
        row = session.scalar(sa.select(OAuthPushedRequest).where(
            OAuthPushedRequest.handle_hash == digest(request_uri[len(PAR_PREFIX):])))
        if row is None or row.app_id != app_id or row.used_at is not None or \
                row.expires_at <= now:
            return None
        if row.opened_at is None:
            row.opened_at = now
            row.expires_at = now + timedelta(seconds=PAR_OPEN_SECONDS)
        return PushedRequest(row.id, dict(row.params or {}))


def use_pushed_request(session: Session, pushed_id: int) -> bool:
    """Mark the pushed request used (in the transaction that saves its code); False when
    another code was issued for it first."""
    return session.execute(sa.update(OAuthPushedRequest).where(
        OAuthPushedRequest.id == pushed_id, OAuthPushedRequest.used_at.is_(None))
        .values(used_at=utcnow())).rowcount == 1


# --- tokens -------------------------------------------------------------------------------

INSERT_TOKEN = sa.insert(OAuthToken.__table__)


def save_token(session: Session, *, app_id: int, refresh_seconds: int, jti: str,
               who: Principal | None, grant_type: str, scope: str,
               access_expires_at: datetime, refresh_token: str | None) -> None:
    now = utcnow()
    revoked_at = None  # a code's tokens: the code row is locked by this very transaction
    session.execute(INSERT_TOKEN, {
        "jti": jti, "app_id": app_id, "user_id": who.user_id if who else None,
        "organization_id": who.org.id if who and who.org else None,
        "auth_session_id": who.auth_session_id if who else None,
        "code_id": who.code_id if who else None,
        "family": who.family if who else secrets.token_hex(16), "grant_type": grant_type,
        "scope": scope, "refresh_hash": digest(refresh_token) if refresh_token else None,
        "auth_time": who.auth_time if who else None, "acr": who.acr if who else "",
        "amr": list(who.amr) if who else [], "access_expires_at": access_expires_at,
        "refresh_expires_at": (now + timedelta(seconds=refresh_seconds)
                               if refresh_token else None),
        "rotated_at": None, "revoked_at": revoked_at, "created_at": now})


def consume_refresh(db: Database, ctx: Callable[[], audit.Context], refresh_token: str,
                    app_id: int) -> OAuthToken | None:
    """Rotation: a refresh token works once. Presenting one that was already rotated means
    two parties hold it, so the whole family is revoked."""
    now = utcnow()
    with db.transaction() as session:
        row = session.scalar(sa.select(OAuthToken).where(
            OAuthToken.refresh_hash == digest(refresh_token)))
        if row is None or row.app_id != app_id:
            return None
        if row.revoked_at is not None:
            return None
        won = session.execute(
            sa.update(OAuthToken).where(OAuthToken.id == row.id, OAuthToken.rotated_at.is_(None),
                                        OAuthToken.revoked_at.is_(None))
            .values(rotated_at=now)).rowcount == 1
        if not won:
            revoked = _revoke(session, OAuthToken.family == row.family)
            audit.record(session, ctx(), "oauth.refresh_reuse", outcome="failure",
                         target=f"token_family:{row.family}", reason="refresh_token_reused",
                         details={"revoked_tokens": revoked})
            return None
        if row.refresh_expires_at is None or row.refresh_expires_at <= now:
            return None
        session.expunge(row)
        return row


def find_token(session: Session, *, jti: str | None = None, refresh_token: str | None = None
               ) -> OAuthToken | None:
    if jti:
        return session.scalar(sa.select(OAuthToken).where(OAuthToken.jti == jti))
    if refresh_token:
        return session.scalar(sa.select(OAuthToken).where(
            OAuthToken.refresh_hash == digest(refresh_token)))
    return None


def token_active(session: Session, token: OAuthToken, refresh: bool = False) -> bool:
    now = utcnow()
    if token.revoked_at is not None:
        return False
    if refresh:
        if token.rotated_at is not None or not token.refresh_expires_at or \
                token.refresh_expires_at <= now:
            return False
    elif token.access_expires_at <= now:
        return False
    if token.user_id is not None and not still_allowed(
            session, token.user_id, token.organization_id, token.auth_session_id,
            check_session=not refresh):
        return False
    app_enabled = session.scalar(sa.select(OAuthApp.enabled).where(OAuthApp.id == token.app_id))
    return bool(app_enabled)


def revoke_family(db: Database, ctx: audit.Context, token_id: int) -> int:
    """RFC 7009: revoking a token revokes the grant it belongs to."""
    with db.transaction() as session:
        family = session.scalar(sa.select(OAuthToken.family).where(OAuthToken.id == token_id))
        count = _revoke(session, OAuthToken.family == family)
        audit.record(session, ctx, "oauth.revoke", target=f"token_family:{family}",
                     details={"revoked_tokens": count})
        return count


def revoke_for_session(session: Session, auth_session_id: int) -> list[int]:
    """Signing out of Trellis revokes the tokens apps got from that session; returns the ids
    of the apps concerned (for back-channel logout)."""
    app_ids = session.scalars(sa.select(OAuthToken.app_id).distinct().where(
        OAuthToken.auth_session_id == auth_session_id)).all()
    _revoke(session, OAuthToken.auth_session_id == auth_session_id)
    return list(app_ids)


def _revoke(session: Session, condition) -> int:
    return session.execute(sa.update(OAuthToken).where(condition, OAuthToken.revoked_at.is_(None))
                           .values(revoked_at=utcnow())).rowcount


# --- consent ------------------------------------------------------------------------------

def has_consent(session: Session, user_id: int, app_id: int, scopes: set[str]) -> bool:
    granted = session.scalar(sa.select(OAuthConsent.scopes).where(
        OAuthConsent.user_id == user_id, OAuthConsent.app_id == app_id))
    return granted is not None and scopes <= set(granted)


def remember_consent(session: Session, ctx: audit.Context, user_id: int, app: OAuthApp,
                     scopes: set[str]) -> None:
    row = session.scalar(sa.select(OAuthConsent).where(
        OAuthConsent.user_id == user_id, OAuthConsent.app_id == app.id))
    if row is None:
        row = OAuthConsent(user_id=user_id, app_id=app.id, scopes=[])
        session.add(row)
    row.scopes = sorted(set(row.scopes or ()) | scopes)
    audit.record(session, ctx, "oauth.consent", target=f"app:{app.client_id}",
                 details={"scopes": row.scopes})


def consents(session: Session, user_id: int) -> list[tuple[OAuthConsent, OAuthApp]]:
    return list(session.execute(
        sa.select(OAuthConsent, OAuthApp).join(OAuthApp, OAuthApp.id == OAuthConsent.app_id)
        .where(OAuthConsent.user_id == user_id).order_by(OAuthApp.name)).all())


def withdraw_consent(session: Session, ctx: audit.Context, user_id: int, client_id: str
                     ) -> bool:
    """The user takes an app's access back: the consent and every token the app holds for
    them go."""
    app = session.scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id))
    if app is None:
        return False
    deleted = session.execute(sa.delete(OAuthConsent).where(
        OAuthConsent.user_id == user_id, OAuthConsent.app_id == app.id)).rowcount
    _revoke(session, sa.and_(OAuthToken.user_id == user_id, OAuthToken.app_id == app.id))
    if deleted:
        audit.record(session, ctx, "oauth.consent_withdraw", target=f"app:{app.client_id}")
    return bool(deleted)

