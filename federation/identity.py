"""The normalized result of every protocol, and the small types adapters exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AuthContext:
    """How the user authenticated at their IdP (for MFA trust and step-up decisions)."""

    amr: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: datetime | None = None


@dataclass(frozen=True)
class ExternalIdentity:
    """What an IdP asserted about a user, after every protocol check passed.

    The account-linking key is (connection_id, subject): never the email alone.
    """

    connection_id: int
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    given_name: str = ""
    family_name: str = ""
    display_name: str = ""
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)
    auth: AuthContext = AuthContext()


@dataclass(frozen=True)
class RequestContext:
    """What an adapter needs to know about the browser's request, as plain data."""

    redirect_uri: str
    login_hint: str | None = None


@dataclass(frozen=True)
class Redirect:
    """Where to send the browser, and the state to keep server-side until it returns."""

    url: str
    pending_state: dict[str, Any]
