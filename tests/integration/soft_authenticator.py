"""A software WebAuthn authenticator (P-256, attestation "none") for tests that talk to
Trellis over HTTP without a browser. It signs exactly what a real authenticator signs, so
Trellis's verification (py_webauthn) runs unchanged; the browser test uses Chromium's
virtual authenticator instead."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import bytes_to_base64url


class SoftAuthenticator:
    def __init__(self, origin: str = "http://localhost", rp_id: str = "localhost") -> None:
        self.origin = origin
        self.rp_id = rp_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.count = 0

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def _rp_hash(self, rp_id: str | None = None) -> bytes:
        return hashlib.sha256((rp_id or self.rp_id).encode()).digest()

    def create(self, options: dict) -> dict:
        """The answer to ``navigator.credentials.create`` for these options."""
        client_data = json.dumps({"type": "webauthn.create", "challenge": options["challenge"],
                                  "origin": self.origin, "crossOrigin": False}).encode()
        auth_data = (self._rp_hash() + bytes([0x45]) + struct.pack(">I", self.count)
                     + bytes(16) + struct.pack(">H", len(self.credential_id))
                     + self.credential_id + self._cose_key())
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        raw_id = bytes_to_base64url(self.credential_id)
        return {"id": raw_id, "rawId": raw_id, "type": "public-key",
                "response": {"clientDataJSON": bytes_to_base64url(client_data),
                             "attestationObject": bytes_to_base64url(attestation),
                             "transports": ["usb"]},
                "clientExtensionResults": {}}

    def get(self, options: dict, *, origin: str | None = None, count: int | None = None,
            bad_signature: bool = False, user_verified: bool = True) -> dict:
        """The answer to ``navigator.credentials.get``; the keywords make it lie."""
        if count is None:
            self.count += 1
            count = self.count
        client_data = json.dumps({"type": "webauthn.get", "challenge": options["challenge"],
                                  "origin": origin or self.origin,
                                  "crossOrigin": False}).encode()
        flags = 0x05 if user_verified else 0x01  # user present, and verified (PIN, biometrics)
        auth_data = self._rp_hash() + bytes([flags]) + struct.pack(">I", count)
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(),
                                  ec.ECDSA(hashes.SHA256()))
        if bad_signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        raw_id = bytes_to_base64url(self.credential_id)
        return {"id": raw_id, "rawId": raw_id, "type": "public-key",
                "response": {"clientDataJSON": bytes_to_base64url(client_data),
                             "authenticatorData": bytes_to_base64url(auth_data),
                             "signature": bytes_to_base64url(signature),
                             "userHandle": None},
                "clientExtensionResults": {}}
