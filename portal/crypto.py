"""Secrets at rest (client secrets, bind passwords, private keys): Fernet with key rotation;
and the platform's own key pairs."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from portal.errors import TrellisError


class SecretBox:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        # Every federated sign-in opens its connection's secrets (and SAML its SP key): the
        # plaintext of recently opened tokens is kept, as the process holds it anyway while
        # it signs people in. A token is immutable, so a changed secret is a new entry.
        self._decrypt = functools.lru_cache(maxsize=512)(self._fernet.decrypt)

    def seal(self, values: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return json.loads(self._decrypt(token.encode()))
        except InvalidToken:
            raise TrellisError("A stored secret cannot be decrypted with the configured keys.",
                               code="secret_undecryptable", status=500,
                               detail="TRELLIS_ENCRYPTION_KEYS lacks the key this secret "
                                      "was encrypted with") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt with the first (current) key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise TrellisError("A stored secret cannot be decrypted with the configured keys.",
                               code="secret_undecryptable") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()


def self_signed_pair(common_name: str, days: int, kind: str = "rsa"
                     ) -> tuple[str, str, datetime]:
    """A new RSA-2048 key (or, with ``kind="ec"``, a P-256 key) and a self-signed
    certificate for it, as PEM text (SAML trusts the key in the certificate, not a CA), and
    the certificate's expiry."""
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    not_after = now + timedelta(days=days)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, not_after
