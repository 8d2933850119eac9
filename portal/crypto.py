"""Secrets at rest (client secrets, bind passwords): Fernet with key rotation."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from portal.errors import TrellisError


class SecretBox:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def seal(self, values: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
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
