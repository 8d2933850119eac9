"""argon2id password hashing with parameters from configuration."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from portal.errors import ValidationError

MIN_LENGTH = 12
MAX_LENGTH = 1024  # bounds the hashing work an attacker can ask for


class Passwords:
    def __init__(self, time_cost: int = 2, memory_kib: int = 19456, parallelism: int = 1) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                     parallelism=parallelism, type=Type.ID)
        # Verified against when the account does not exist, so unknown emails cost the same.
        self._decoy = self.hasher.hash("decoy password never accepted")

    def hash(self, password: str) -> str:
        check_strength(password)
        return self.hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        if len(password) > MAX_LENGTH:
            return False
        try:
            return self.hasher.verify(stored_hash or self._decoy, password) and bool(stored_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self.hasher.check_needs_rehash(stored_hash)


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise ValidationError(f"Passwords must be at least {MIN_LENGTH} characters long.",
                              code="weak_password")
    if len(password) > MAX_LENGTH:
        raise ValidationError(f"Passwords must be at most {MAX_LENGTH} characters long.",
                              code="weak_password")


GUESSABLE_SCORE = 3  # zxcvbn's 0-4 scale: 3 is "safely unguessable" against online attacks
SCORED_PREFIX = 100  # zxcvbn's cost grows with length; a longer password is not weaker


def check_new_password(password: str, email: str = "", name: str = "") -> None:
    """The rules for a password a person chooses (registration, reset, change): the length
    bounds, not on the list of common passwords shipped with zxcvbn (30,000, from breach
    corpora; checked offline), not built from the person's own email or name, and not easy to
    guess by zxcvbn's estimate. The message says what to change."""
    check_strength(password)
    lowered = password.lower()
    if is_common(password):
        raise ValidationError("This password is on a list of commonly used passwords. "
                              "Choose another.", code="common_password")
    local = email.lower().partition("@")[0]
    if email and (email.lower() in lowered or (len(local) >= 4 and local in lowered)):
        raise ValidationError("The password must not contain your email address.",
                              code="weak_password")
    from zxcvbn import zxcvbn
    result = zxcvbn(password[:SCORED_PREFIX], user_inputs=[v for v in (email, local, name) if v])
    if result["score"] < GUESSABLE_SCORE:
        hint = result["feedback"].get("warning") or "Add more words or characters."
        raise ValidationError(f"This password is too easy to guess. {hint}".strip(),
                              code="weak_password")


def is_common(password: str) -> bool:
    """On the list of common passwords (zxcvbn's, from breach corpora), also with digits or
    punctuation added at either end. Registration refuses these; at sign-in the risk engine
    counts one as a signal (the password is checked in memory and never kept)."""
    lowered = password.lower()
    return lowered in _common_passwords() or lowered.strip("0123456789!.?") in _common_passwords()


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS
    return frozenset(FREQUENCY_LISTS["passwords"])
