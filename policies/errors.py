"""The one error type of the policy room."""

from __future__ import annotations


class PolicyError(Exception):
    """A policy file or request is wrong. ``code`` is stable, ``safe_message`` may be shown."""

    status = 422

    def __init__(self, code: str, safe_message: str, detail: str = "") -> None:
        self.code = code
        self.safe_message = self.message = safe_message
        self.detail = detail
        self.headers: dict[str, str] = {}
        super().__init__(f"{code}: {safe_message}")
