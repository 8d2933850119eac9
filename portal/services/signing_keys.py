"""The platform's key pairs and their rollover: next -> active -> previous -> retired.

A rollover never breaks a partner: the next key is published (in every connection's SP
metadata) before it signs anything, and the replaced key stays published and keeps
decrypting until an operator retires it, after every IdP has picked up the new metadata.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.crypto import SecretBox, self_signed_pair
from portal.db import core, utcnow
from portal.errors import NotFound, ValidationError
from portal.models import KeyState, SigningKey

SAML = "saml"
VALID_DAYS = 3 * 365
# Purposes whose keys are elliptic-curve (P-256) rather than RSA-2048.
EC_PURPOSES = frozenset({"oidc_es256"})


@dataclass(frozen=True)
class KeyPair:
    id: int
    state: KeyState
    certificate: str
    private_key: str


def published(session: Session, purpose: str) -> list[SigningKey]:
    """Keys that appear in metadata: active first, then previous, then next."""
    keys = session.scalars(sa.select(SigningKey).where(
        SigningKey.purpose == purpose, SigningKey.state != KeyState.RETIRED)).all()
    return sorted(keys, key=lambda k: (STATE_ORDER[k.state], -k.id))


_KEYS = SigningKey.__table__
PUBLISHED_COLUMNS = (sa.select(_KEYS.c.id, _KEYS.c.state, _KEYS.c.certificate,
                               _KEYS.c.sealed_private_key)
                     .where(_KEYS.c.purpose == sa.bindparam("purpose"),
                            _KEYS.c.state != KeyState.RETIRED.value))
STATE_ORDER = {KeyState.ACTIVE: 0, KeyState.PREVIOUS: 1, KeyState.NEXT: 2}


def key_pairs(session: Session, box: SecretBox, purpose: str) -> list[KeyPair]:
    """Published keys with their private halves, active first (read on every SAML request,
    hence plain columns and cached decryption)."""
    rows = core(session).execute(PUBLISHED_COLUMNS, {"purpose": purpose}).all()
    rows.sort(key=lambda r: (STATE_ORDER[KeyState(r.state)], -r.id))
    return [KeyPair(r.id, KeyState(r.state), r.certificate,
                    _private_key(box, r.sealed_private_key)) for r in rows]


@functools.lru_cache(maxsize=64)
def _private_key(box: SecretBox, sealed: str) -> str:
    """Decrypting is the costly part of reading keys on every SAML request; a sealed value
    never changes, so its plaintext can be kept."""
    return box.open(sealed)["private_key"]


def ensure_active(session: Session, ctx: audit.Context, box: SecretBox,
                  purpose: str = SAML) -> None:
    """The first SAML connection needs a service provider key: make one if there is none."""
    active = session.scalar(sa.select(SigningKey.id).where(
        SigningKey.purpose == purpose, SigningKey.state == KeyState.ACTIVE))
    if active is None:
        generate(session, ctx, box, purpose, state=KeyState.ACTIVE)


def generate(session: Session, ctx: audit.Context, box: SecretBox, purpose: str = SAML,
             state: KeyState = KeyState.NEXT) -> SigningKey:
    if state == KeyState.NEXT and session.scalar(sa.select(SigningKey.id).where(
            SigningKey.purpose == purpose, SigningKey.state == KeyState.NEXT)):
        raise ValidationError("A next key is already published; activate or retire it first.",
                              code="next_key_exists")
    cert, private_key, not_after = self_signed_pair(
        f"Trellis {purpose} key", VALID_DAYS, "ec" if purpose in EC_PURPOSES else "rsa")
    key = SigningKey(purpose=purpose, state=state, certificate=cert, not_after=not_after,
                     sealed_private_key=box.seal({"private_key": private_key}),
                     activated_at=utcnow() if state == KeyState.ACTIVE else None)
    session.add(key)
    session.flush()
    audit.record(session, ctx, "keys.generate", target=f"signing_key:{key.id}",
                 details={"purpose": purpose, "state": state.value,
                          "not_after": not_after.isoformat()})
    return key


def activate(session: Session, ctx: audit.Context, key_id: int) -> SigningKey:
    """The next key starts signing; the active one becomes previous (still published, still
    decrypting); an older previous key is retired."""
    key = _get(session, key_id)
    if key.state != KeyState.NEXT:
        raise ValidationError(f"Only a next key can be activated; key {key_id} is "
                              f"{key.state.value}.", code="key_not_next")
    for other in published(session, key.purpose):
        if other.state == KeyState.PREVIOUS:
            _set_state(other, KeyState.RETIRED)
        elif other.state == KeyState.ACTIVE:
            _set_state(other, KeyState.PREVIOUS)
    _set_state(key, KeyState.ACTIVE)
    audit.record(session, ctx, "keys.activate", target=f"signing_key:{key.id}",
                 details={"purpose": key.purpose})
    return key


def retire(session: Session, ctx: audit.Context, key_id: int) -> SigningKey:
    key = _get(session, key_id)
    if key.state == KeyState.ACTIVE:
        raise ValidationError("The active key cannot be retired; activate its successor first.",
                              code="key_active")
    _set_state(key, KeyState.RETIRED)
    audit.record(session, ctx, "keys.retire", target=f"signing_key:{key.id}",
                 details={"purpose": key.purpose})
    return key


def _set_state(key: SigningKey, state: KeyState) -> None:
    key.state = state
    if state == KeyState.ACTIVE:
        key.activated_at = utcnow()
    elif state == KeyState.RETIRED:
        key.retired_at = utcnow()


def _get(session: Session, key_id: int) -> SigningKey:
    key = session.get(SigningKey, key_id)
    if key is None:
        raise NotFound(f"There is no key {key_id}.", code="unknown_key")
    return key
