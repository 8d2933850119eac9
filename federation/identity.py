"""The normalized result of every protocol, and the small types adapters exchange."""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@functools.lru_cache(maxsize=4096)  # IDNA decoding costs more than the rest of a check
def canonical_email(raw: str) -> str:
    """The one spelling of an address that the portal stores and looks up (see
    ``portal.validation.normalize_email``, which also validates): NFKC folds look-alikes such
    as full-width letters, lower case, and the domain in its Unicode form whether it came as
    Unicode or as IDNA (``xn--``), so an identity provider's spelling finds the same account.
    A domain IDNA cannot read is left as it is (validation refuses it where it matters)."""
    email = unicodedata.normalize("NFKC", raw or "").strip().lower()
    local, at, domain = email.rpartition("@")
    if not at:
        return email
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii").encode("ascii") \
            .decode("idna")
    except UnicodeError:
        return email
    return f"{local}@{domain}"


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
    # The user must authenticate again at the identity provider, even with a session there
    # (an app asked Trellis for prompt=login or an exceeded max_age).
    force_authn: bool = False


@dataclass(frozen=True)
class Redirect:
    """Where to send the browser, and the state to keep server-side until it returns."""

    url: str
    pending_state: dict[str, Any]


def identity_to_dict(identity: ExternalIdentity) -> dict[str, Any]:
    """Plain data to keep an identity across a request (raw claims are left out)."""
    data = asdict(identity)
    data["claims"] = {}
    auth = data.pop("auth")
    data["auth"] = {"amr": list(auth["amr"]), "acr": auth["acr"],
                    "auth_time": auth["auth_time"].isoformat() if auth["auth_time"] else None}
    data["groups"] = list(identity.groups)
    return data


def identity_from_dict(data: dict[str, Any]) -> ExternalIdentity:
    auth = data.get("auth") or {}
    auth_time = datetime.fromisoformat(auth["auth_time"]) if auth.get("auth_time") else None
    fields = {k: v for k, v in data.items() if k not in ("auth", "groups")}
    return ExternalIdentity(**fields, groups=tuple(data.get("groups", ())),
                            auth=AuthContext(amr=tuple(auth.get("amr", ())),
                                             acr=auth.get("acr"), auth_time=auth_time))
