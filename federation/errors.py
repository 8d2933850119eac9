"""The one error type of the federation room."""

from __future__ import annotations


class FederationError(Exception):
    """A sign-in through an external identity provider failed.

    ``code`` names the failed check (it goes into the audit trail and the test-mode page),
    ``safe_message`` is what the user may see, ``detail`` is for the log only.
    """

    status = 400

    def __init__(self, code: str, safe_message: str, detail: str = "",
                 status: int | None = None) -> None:
        self.code = code
        self.safe_message = self.message = safe_message
        self.detail = detail
        self.status = status or self.status
        self.headers: dict[str, str] = {}
        super().__init__(f"{code}: {safe_message}")


GENERIC = ("We could not sign you in through your organization's identity provider. "
           "Try again, and if it keeps happening give the reference below to your administrator.")
