"""The OpenID Provider's token signing keys, on the ``signing_keys`` lifecycle.

Apps cache the JWKS, so a rollover must never sign with a key they have not seen: there is
always a *next* key published one rotation ahead, ``trellis keys rotate-signing`` promotes it
and publishes a new next key, and the replaced key stays published (as *previous*) until
every token it signed has expired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy.orm import Session

from portal import audit
from portal.crypto import SecretBox
from portal.db import Database, utcnow
from portal.errors import ValidationError
from portal.models import KeyState, SigningKey
from portal.services import signing_keys
from portal.services.apps import MAX_ACCESS_SECONDS

PURPOSE = "oidc"
ALGORITHM = "RS256"
ID_TOKEN_SECONDS = 3600
# A replaced key verifies every token it signed: the longest access token or ID token.
OVERLAP = timedelta(seconds=max(MAX_ACCESS_SECONDS, ID_TOKEN_SECONDS) + 300)


@dataclass(frozen=True)
class KeyRing:
    signing_key: RSAKey  # the active private key, with its kid
    public: KeySet  # every published public key (active, next, previous)
    loaded_at: float

    @property
    def kid(self) -> str:
        return self.signing_key.kid

    def jwks(self) -> dict:
        return self.public.as_dict(private=False)


def _jwk(pem: str, key_id: int, private: bool) -> RSAKey:
    key = RSAKey.import_key(pem)
    if not private:
        key = RSAKey.import_key(key.as_dict(private=False))
    # The kid is derived from the key itself, so every worker names it the same way.
    key.ensure_kid()
    return RSAKey.import_key(key.as_dict(private=private),
                             {"kid": key.kid, "use": "sig", "alg": ALGORITHM})


def ensure_keys(session: Session, ctx: audit.Context, box: SecretBox) -> None:
    """The first token needs an active key, and a next key is published from the start."""
    states = set(session.scalars(sa.select(SigningKey.state).where(
        SigningKey.purpose == PURPOSE, SigningKey.state != KeyState.RETIRED)))
    if KeyState.ACTIVE not in states:
        signing_keys.generate(session, ctx, box, PURPOSE, state=KeyState.ACTIVE)
    if KeyState.NEXT not in states:
        signing_keys.generate(session, ctx, box, PURPOSE, state=KeyState.NEXT)


def load(session: Session, box: SecretBox, now: datetime | None = None) -> KeyRing | None:
    keys = signing_keys.published(session, PURPOSE)
    active = next((k for k in keys if k.state == KeyState.ACTIVE), None)
    if active is None:
        return None
    now = now or utcnow()
    visible = [k for k in keys if k.state != KeyState.PREVIOUS
               or not overlap_over(active, now)]
    private_pem = box.open(active.sealed_private_key)["private_key"]
    public = KeySet([_jwk(private_pem, active.id, private=False)] +
                    [_jwk(_public_pem(k.certificate), k.id, private=False)
                     for k in visible if k.id != active.id])
    return KeyRing(_jwk(private_pem, active.id, private=True), public, time.monotonic())


def overlap_over(active: SigningKey, now: datetime) -> bool:
    """Tokens signed by the key ``active`` replaced have all expired."""
    return active.activated_at is not None and active.activated_at + OVERLAP <= now


def rotate(session: Session, ctx: audit.Context, box: SecretBox, force: bool = False
           ) -> dict[str, int | None]:
    """Promote the published next key, publish a new next key, retire a previous key whose
    tokens have expired. Refused while the previous key still verifies live tokens (a second
    rotation would retire it early), unless ``force``."""
    ensure_keys(session, ctx, box)
    keys = signing_keys.published(session, PURPOSE)
    active = next(k for k in keys if k.state == KeyState.ACTIVE)
    previous = [k for k in keys if k.state == KeyState.PREVIOUS]
    if previous and not overlap_over(active, utcnow()) and not force:
        until = active.activated_at + OVERLAP
        raise ValidationError(
            f"Key {previous[0].id} still verifies tokens until {until:%Y-%m-%d %H:%M} UTC; "
            "rotate after that (or pass --force to cut those tokens off).",
            code="rotation_too_soon")
    nxt = next(k for k in keys if k.state == KeyState.NEXT)
    signing_keys.activate(session, ctx, nxt.id)  # retires the older previous key
    new_next = signing_keys.generate(session, ctx, box, PURPOSE, state=KeyState.NEXT)
    return {"active": nxt.id, "previous": active.id, "next": new_next.id}


def _public_pem(certificate: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(certificate.encode())
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class KeyCache:
    """The key ring of one worker, reloaded every ``seconds``: a rotation reaches every
    worker within that time, which is safe because the new key was published a rotation
    ahead and the old one stays published."""

    def __init__(self, db: Database, box: SecretBox, seconds: float = 30.0) -> None:
        self.db, self.box, self.seconds = db, box, seconds
        self._ring: KeyRing | None = None
        self._lock = threading.Lock()

    def get(self, ctx: Callable[[], audit.Context] | None = None) -> KeyRing:
        """``ctx`` builds the audit context, only when keys have to be generated."""
        ring = self._ring
        if ring is not None and time.monotonic() - ring.loaded_at < self.seconds:
            return ring
        with self._lock:
            with self.db.transaction() as session:
                ring = load(session, self.box)
                if ring is None:
                    ensure_keys(session, ctx() if ctx else audit.Context(actor="system"),
                                self.box)
                    session.flush()
                    ring = load(session, self.box)
            self._ring = ring
            return ring

    def clear(self) -> None:
        self._ring = None
