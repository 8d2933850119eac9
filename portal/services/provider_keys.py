"""The OpenID Provider's token signing keys, on the ``signing_keys`` lifecycle: one ring of
RSA keys (RS256, purpose ``oidc``) and one of P-256 keys (ES256, purpose ``oidc_es256``).
Access tokens are RS256; each app chooses the algorithm of its ID tokens.

Apps cache the JWKS, so a rollover must never sign with a key they have not seen: each ring
always has a *next* key published one rotation ahead, ``trellis keys rotate-signing``
promotes it and publishes a new next key, and the replaced key stays published (as
*previous*) until every token it signed has expired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy.orm import Session

from portal import audit
from portal.crypto import SecretBox
from portal.db import Database, utcnow
from portal.errors import ValidationError
from portal.models import KeyState, SigningKey
from portal.services import signing_keys
from portal.services.apps import MAX_ACCESS_SECONDS

ALGORITHM = "RS256"  # access tokens, and ID tokens unless an app asks for ES256
PURPOSES = {"RS256": "oidc", "ES256": "oidc_es256"}
ALGORITHMS = tuple(PURPOSES)
PURPOSE = PURPOSES[ALGORITHM]
ID_TOKEN_SECONDS = 3600
# A replaced key verifies every token it signed: the longest access token or ID token.
OVERLAP = timedelta(seconds=max(MAX_ACCESS_SECONDS, ID_TOKEN_SECONDS) + 300)


@dataclass(frozen=True)
class KeyRing:
    signing: dict[str, RSAKey | ECKey]  # algorithm -> the active private key, with its kid
    public: KeySet  # every published public key of both rings (active, next, previous)
    loaded_at: float

    @property
    def signing_key(self) -> RSAKey:
        return self.signing[ALGORITHM]

    @property
    def kid(self) -> str:
        return self.signing[ALGORITHM].kid

    def key_for(self, alg: str) -> RSAKey | ECKey:
        return self.signing[alg]

    def jwks(self) -> dict:
        return self.public.as_dict(private=False)


def _jwk(pem: str, alg: str, private: bool) -> RSAKey | ECKey:
    kind = ECKey if alg == "ES256" else RSAKey
    key = kind.import_key(pem)
    if not private:
        key = kind.import_key(key.as_dict(private=False))
    # The kid is derived from the key itself, so every worker names it the same way.
    key.ensure_kid()
    return kind.import_key(key.as_dict(private=private),
                           {"kid": key.kid, "use": "sig", "alg": alg})


def ensure_keys(session: Session, ctx: audit.Context, box: SecretBox) -> None:
    """The first token needs an active key in each ring, and a next key is published from
    the start."""
    import sqlalchemy as sa
    for purpose in PURPOSES.values():
        states = set(session.scalars(sa.select(SigningKey.state).where(
            SigningKey.purpose == purpose, SigningKey.state != KeyState.RETIRED)))
        if KeyState.ACTIVE not in states:
            signing_keys.generate(session, ctx, box, purpose, state=KeyState.ACTIVE)
        if KeyState.NEXT not in states:
            signing_keys.generate(session, ctx, box, purpose, state=KeyState.NEXT)


def load(session: Session, box: SecretBox, now: datetime | None = None) -> KeyRing | None:
    """Both rings, or None when one has no active key yet."""
    now = now or utcnow()
    signing: dict[str, RSAKey | ECKey] = {}
    public: list[RSAKey | ECKey] = []
    for alg, purpose in PURPOSES.items():
        keys = signing_keys.published(session, purpose)
        active = next((k for k in keys if k.state == KeyState.ACTIVE), None)
        if active is None:
            return None
        visible = [k for k in keys if k.state != KeyState.PREVIOUS
                   or not overlap_over(active, now)]
        signing[alg] = _imported(active, alg, private=True, box=box)
        public.extend(_imported(k, alg, private=False, box=box) for k in visible)
    return KeyRing(signing, KeySet(public), time.monotonic())


# Imported keys by (row id, certificate, private?): a key row's material never changes (a
# rotation changes states only), so a worker's periodic reload decrypts and imports only
# keys it has not seen, instead of ~90 ms of CPU every ``KeyCache.seconds``. The certificate
# is part of the cache key so a reused row id (a database emptied and refilled) never hits.
_IMPORTED: dict[tuple[int, str, bool], RSAKey | ECKey] = {}


def _imported(row: SigningKey, alg: str, private: bool, box: SecretBox) -> RSAKey | ECKey:
    cache_key = (row.id, row.certificate, private)
    key = _IMPORTED.get(cache_key)
    if key is None:
        if private or row.state == KeyState.ACTIVE:
            pem = box.open(row.sealed_private_key)["private_key"]
        else:
            pem = _public_pem(row.certificate)
        key = _jwk(pem, alg, private=private)
        if len(_IMPORTED) > 64:
            _IMPORTED.clear()
        _IMPORTED[cache_key] = key
    return key


def overlap_over(active: SigningKey, now: datetime) -> bool:
    """Tokens signed by the key ``active`` replaced have all expired."""
    return active.activated_at is not None and active.activated_at + OVERLAP <= now


def rotate(session: Session, ctx: audit.Context, box: SecretBox, force: bool = False,
           alg: str | None = None) -> dict[str, dict[str, int | None]]:
    """For each ring (or the one of ``alg``): promote the published next key, publish a new
    next key, retire a previous key whose tokens have expired. Refused while the previous
    key still verifies live tokens (a second rotation would retire it early), unless
    ``force``."""
    ensure_keys(session, ctx, box)
    if alg is not None and alg not in PURPOSES:
        raise ValidationError(f"Unknown algorithm {alg}; use {', '.join(PURPOSES)}.",
                              code="unknown_algorithm")
    done = {}
    for name, purpose in PURPOSES.items():
        if alg is not None and name != alg:
            continue
        keys = signing_keys.published(session, purpose)
        active = next(k for k in keys if k.state == KeyState.ACTIVE)
        previous = [k for k in keys if k.state == KeyState.PREVIOUS]
        if previous and not overlap_over(active, utcnow()) and not force:
            until = active.activated_at + OVERLAP
            raise ValidationError(
                f"{name} key {previous[0].id} still verifies tokens until "
                f"{until:%Y-%m-%d %H:%M} UTC; rotate after that (or pass --force to cut those "
                "tokens off).", code="rotation_too_soon")
        nxt = next(k for k in keys if k.state == KeyState.NEXT)
        signing_keys.activate(session, ctx, nxt.id)  # retires the older previous key
        new_next = signing_keys.generate(session, ctx, box, purpose, state=KeyState.NEXT)
        done[name] = {"active": nxt.id, "previous": active.id, "next": new_next.id}
    return done


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
