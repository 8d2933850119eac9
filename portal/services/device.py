"""The device authorization grant (RFC 8628): a device without a browser shows a short code,
the user approves it on the device page, and the device's polling turns into tokens once."""

from __future__ import annotations

import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.errors import InvalidRequest
from portal.models import DeviceStatus, OAuthApp, OAuthDeviceCode, Organization, User
from portal.services import provider

# No vowels or look-alikes: codes cannot spell words and are easy to type.
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"


def new_user_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def normalize_user_code(value: str) -> str:
    raw = "".join(ch for ch in (value or "").upper() if ch in ALPHABET)
    return f"{raw[:4]}-{raw[4:]}" if len(raw) == 8 else ""


def save(session: Session, client_id: str, scope: str, device_code: str, user_code: str,
         expires_in: int, interval: int) -> None:
    app_id = session.scalar(sa.select(OAuthApp.id).where(OAuthApp.client_id == client_id))
    session.add(OAuthDeviceCode(
        device_hash=provider.digest(device_code), user_code=user_code, app_id=app_id,
        scope=scope, interval=interval, expires_at=utcnow() + timedelta(seconds=expires_in)))


def find(session: Session, device_code: str) -> OAuthDeviceCode | None:
    return session.scalar(sa.select(OAuthDeviceCode).where(
        OAuthDeviceCode.device_hash == provider.digest(device_code)))


def find_by_user_code(session: Session, user_code: str) -> OAuthDeviceCode | None:
    return session.scalar(sa.select(OAuthDeviceCode).where(
        OAuthDeviceCode.user_code == user_code))


def pending(session: Session, user_code: str) -> tuple[OAuthDeviceCode, OAuthApp]:
    """The pending request a user typed the code of, for the device page."""
    code = normalize_user_code(user_code)
    row = find_by_user_code(session, code) if code else None
    if row is None or row.status != DeviceStatus.PENDING or row.expires_at <= utcnow():
        raise InvalidRequest("user_code", "is not a pending code; check it on the device")
    return row, session.get(OAuthApp, row.app_id)


def decide(session: Session, ctx: audit.Context, row_id: int, user_id: int,
           org_id: int | None, approve: bool) -> None:
    row = session.get(OAuthDeviceCode, row_id)
    won = session.execute(
        sa.update(OAuthDeviceCode).where(OAuthDeviceCode.id == row_id,
                                         OAuthDeviceCode.status == DeviceStatus.PENDING)
        .values(status=DeviceStatus.APPROVED if approve else DeviceStatus.DENIED,
                user_id=user_id, organization_id=org_id)).rowcount == 1
    if not won:
        raise InvalidRequest("user_code", "was already used")
    audit.record(session, ctx, "oauth.device_approve" if approve else "oauth.device_deny",
                 target=f"device:{row.user_code}")


def redeem(db: Database, read: Session, row: OAuthDeviceCode):
    """Approved once, redeemed once: the first poll after approval gets the tokens."""
    with db.transaction() as session:
        won = session.execute(
            sa.update(OAuthDeviceCode).where(OAuthDeviceCode.id == row.id,
                                             OAuthDeviceCode.status == DeviceStatus.APPROVED)
            .values(status=DeviceStatus.USED)).rowcount == 1
    if not won or not provider.still_allowed(read, row.user_id, row.organization_id):
        return None
    user = read.get(User, row.user_id)
    org = read.get(Organization, row.organization_id) if row.organization_id else None
    ref = provider.OrgRef(org.id, org.slug, org.name) if org else None
    return provider.Principal(
        user_id=user.id, email=user.email, name=user.display_name,
        email_verified=provider.email_verified(read, user.email), org=ref,
        roles=provider.roles_in(read, user.id, org.id) if org else (), auth_session_id=None,
        sid="", auth_time=row.created_at, acr="urn:trellis:loa:1", amr=("pwd",))


def polled_too_fast(db: Database, row_id: int) -> bool:
    now = utcnow()
    with db.transaction() as session:
        row = session.get(OAuthDeviceCode, row_id)
        fast = row.last_poll_at is not None and \
            row.last_poll_at + timedelta(seconds=row.interval) > now
        row.last_poll_at = now
        return fast


class Credential:
    def __init__(self, row: OAuthDeviceCode) -> None:
        self.row = row
        self._client_id = None

    def get_client_id(self) -> str:
        from portal.extensions import db_session
        return db_session().scalar(sa.select(OAuthApp.client_id).where(
            OAuthApp.id == self.row.app_id))

    def get_scope(self) -> str:
        return self.row.scope

    def get_user_code(self) -> str:
        return self.row.user_code

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()
