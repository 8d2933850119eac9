"""WebAuthn credentials (passkeys, security keys) as a second factor, over py_webauthn.

The browser and the authenticator do the cryptography; Trellis issues one-time challenges,
checks every response against the expected challenge, origin and relying-party id (the
library's verification), and keeps only public keys. A sign count that does not grow is
refused (a cloned authenticator), and the stored count moves forward with a conditional
UPDATE so two racing assertions cannot both pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidJSONStructure,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound, ValidationError
from portal.models import User, WebAuthnCredential
from portal.passwords import Passwords
from portal.services import mfa

MAX_CREDENTIALS = 10


@dataclass(frozen=True)
class RelyingParty:
    """Who the credentials are for: ``rp_id`` is the portal's host name, ``origin`` its
    scheme, host and port exactly as the browser shows them."""

    rp_id: str
    origin: str
    name: str = "Trellis"


def credentials_of(session: Session, user_id: int) -> list[WebAuthnCredential]:
    return list(session.scalars(sa.select(WebAuthnCredential)
                                .where(WebAuthnCredential.user_id == user_id)
                                .order_by(WebAuthnCredential.id)))


def _descriptors(rows: list[WebAuthnCredential]) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(id=base64url_to_bytes(row.credential_id))
            for row in rows]


def registration_options(session: Session, rp: RelyingParty, user: User
                         ) -> tuple[str, bytes]:
    """Options for ``navigator.credentials.create`` (JSON) and the challenge to keep."""
    rows = credentials_of(session, user.id)
    if len(rows) >= MAX_CREDENTIALS:
        raise ValidationError(f"At most {MAX_CREDENTIALS} passkeys per account.",
                              code="too_many_passkeys")
    options = generate_registration_options(
        rp_id=rp.rp_id, rp_name=rp.name, user_name=user.email,
        user_id=user_handle(user.id),
        user_display_name=user.display_name or user.email,
        exclude_credentials=_descriptors(rows),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED))
    return options_to_json(options), options.challenge


def register(tx: Session, ctx: audit.Context, passwords: Passwords, rp: RelyingParty,
             user: User, credential: dict[str, Any] | str, challenge: bytes,
             name: str) -> list[str]:
    """Verify the authenticator's answer and store the credential; returns new recovery
    codes when this is the user's first second factor (else an empty list)."""
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp.rp_id,
            expected_origin=rp.origin)
    except (InvalidRegistrationResponse, InvalidJSONStructure, KeyError, ValueError,
            TypeError) as error:
        raise ValidationError("The passkey could not be registered. Please try again.",
                              code="passkey_invalid", detail=str(error)) from None
    credential_id = bytes_to_base64url(verified.credential_id)
    if tx.scalar(sa.select(WebAuthnCredential.id)
                 .where(WebAuthnCredential.credential_id == credential_id)) is not None:
        raise ValidationError("This passkey is already registered.", code="passkey_exists")
    transports = []
    if isinstance(credential, dict):
        transports = [str(t)[:16] for t in
                      (credential.get("response") or {}).get("transports") or []][:8]
    tx.add(WebAuthnCredential(
        user_id=user.id, credential_id=credential_id,
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count, transports=transports,
        name=(name or "").strip()[:100] or "Passkey"))
    tx.flush()
    codes = mfa.new_recovery_codes_if_none(tx, passwords, user.id)
    audit.record(tx, ctx, "mfa.passkey_add", target=f"user:{user.email}",
                 details={"name": (name or "").strip()[:100] or "Passkey",
                          "credential": credential_id[:16]})
    return codes


def authentication_options(session: Session, rp: RelyingParty, user_id: int
                           ) -> tuple[str, bytes]:
    """Options for ``navigator.credentials.get`` limited to this user's credentials."""
    rows = credentials_of(session, user_id)
    if not rows:
        raise NotFound("No passkey is registered for this account.", code="no_passkey")
    options = generate_authentication_options(
        rp_id=rp.rp_id, allow_credentials=_descriptors(rows),
        user_verification=UserVerificationRequirement.PREFERRED)
    return options_to_json(options), options.challenge


def use(tx: Session, rp: RelyingParty, user_id: int, credential: dict[str, Any] | str,
        challenge: bytes) -> str:
    """Check an assertion for ``user_id``; returns ``"hwk"`` (used as the method) or raises
    ``mfa.InvalidCode`` with the reason in ``detail``."""
    data = json.loads(credential) if isinstance(credential, str) else credential
    raw_id = str((data or {}).get("rawId") or (data or {}).get("id") or "")
    row = tx.scalar(sa.select(WebAuthnCredential).where(
        WebAuthnCredential.credential_id == raw_id, WebAuthnCredential.user_id == user_id))
    if row is None:
        raise mfa.InvalidCode(detail="unknown_passkey")
    try:
        verified = verify_authentication_response(
            credential=data, expected_challenge=challenge, expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=base64url_to_bytes(row.public_key),
            credential_current_sign_count=row.sign_count)
    except (InvalidAuthenticationResponse, InvalidJSONStructure, KeyError, ValueError,
            TypeError) as error:
        reason = "passkey_sign_count" if "sign count" in str(error).lower() else \
            "passkey_origin" if "origin" in str(error).lower() else "passkey_invalid"
        raise mfa.InvalidCode(detail=reason) from None
    moved = tx.execute(sa.update(WebAuthnCredential)
                       .where(WebAuthnCredential.id == row.id,
                              WebAuthnCredential.sign_count == row.sign_count)
                       .values(sign_count=verified.new_sign_count, last_used_at=utcnow())
                       .execution_options(synchronize_session=False)).rowcount
    if moved != 1:
        raise mfa.InvalidCode(detail="passkey_sign_count")
    return "hwk"


# -- passwordless sign-in (discoverable credentials) ---------------------------------------

def user_handle(user_id: int) -> bytes:
    """The WebAuthn user handle of an account (set at registration, returned by the
    authenticator with a discoverable credential)."""
    return f"trellis-user-{user_id}".encode()


def discoverable_options(rp: RelyingParty) -> tuple[str, bytes]:
    """Options for ``navigator.credentials.get`` without naming an account: the
    authenticator offers the passkeys it holds for the portal, and must verify the user
    (PIN or biometrics), so the passkey alone is two factors."""
    options = generate_authentication_options(
        rp_id=rp.rp_id, allow_credentials=[],
        user_verification=UserVerificationRequirement.REQUIRED)
    return options_to_json(options), options.challenge


def identify(tx: Session, rp: RelyingParty, credential: dict[str, Any] | str,
             challenge: bytes) -> User:
    """Check a passwordless assertion: the credential must be registered, its user handle
    must name its account, the user must have been verified by the authenticator, and the
    sign count must grow. Returns the account, or raises ``mfa.InvalidCode`` with the reason
    in ``detail`` (``User.id`` of the account is in ``user_id`` when it was known)."""
    data = json.loads(credential) if isinstance(credential, str) else credential
    if not isinstance(data, dict):
        raise mfa.InvalidCode(detail="passkey_invalid")
    raw_id = str(data.get("rawId") or data.get("id") or "")[:512]
    row = tx.scalar(sa.select(WebAuthnCredential)
                    .where(WebAuthnCredential.credential_id == raw_id)) if raw_id else None
    if row is None:
        raise mfa.InvalidCode(detail="unknown_passkey")
    handle = (data.get("response") or {}).get("userHandle")
    try:
        handle_ok = not handle or base64url_to_bytes(str(handle)) == user_handle(row.user_id)
    except ValueError:
        handle_ok = False
    refused = None
    if not handle_ok:
        refused = "passkey_user_handle"
    else:
        try:
            verified = verify_authentication_response(
                credential=data, expected_challenge=challenge, expected_rp_id=rp.rp_id,
                expected_origin=rp.origin,
                credential_public_key=base64url_to_bytes(row.public_key),
                credential_current_sign_count=row.sign_count, require_user_verification=True)
        except (InvalidAuthenticationResponse, InvalidJSONStructure, KeyError, ValueError,
                TypeError) as error:
            text = str(error).lower()
            refused = ("passkey_sign_count" if "sign count" in text else
                       "passkey_origin" if "origin" in text else
                       "passkey_user_verification" if "user verification" in text else
                       "passkey_invalid")
    if refused is None and tx.execute(
            sa.update(WebAuthnCredential)
            .where(WebAuthnCredential.id == row.id,
                   WebAuthnCredential.sign_count == row.sign_count)
            .values(sign_count=verified.new_sign_count, last_used_at=utcnow())
            .execution_options(synchronize_session=False)).rowcount != 1:
        refused = "passkey_sign_count"
    if refused is not None:
        error = mfa.InvalidCode(detail=refused)
        error.user_id = row.user_id
        raise error
    return tx.get(User, row.user_id)


def remove(tx: Session, ctx: audit.Context, user: User, credential_row_id: int) -> None:
    row = tx.scalar(sa.select(WebAuthnCredential).where(
        WebAuthnCredential.id == credential_row_id, WebAuthnCredential.user_id == user.id))
    if row is None:
        raise NotFound()
    tx.delete(row)
    tx.flush()
    if not mfa.has_second_factor(tx, user.id):
        mfa.drop_recovery_codes(tx, user.id)
    audit.record(tx, ctx, "mfa.passkey_remove", target=f"user:{user.email}",
                 details={"name": row.name, "credential": row.credential_id[:16]})
