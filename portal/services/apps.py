"""The registry of vendor apps that sign their users in through Trellis (OAuth clients).

Registration decides everything an app may ever ask for: its exact redirect URIs, grant
types, scopes, the organizations whose members may use it and how long its tokens live.
The authorization and token endpoints only ever narrow these, never widen them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.errors import InvalidRequest, NotFound, ValidationError
from portal.models import ClientType, OAuthApp
from portal.services import organizations

SECRET_PREFIX = "trs_"  # noqa: S105  (a prefix, not a secret)
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105  (a grant type)
CLIENT_CREDENTIALS = "client_credentials"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = (AUTHORIZATION_CODE, REFRESH_TOKEN, CLIENT_CREDENTIALS, DEVICE_CODE)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
# What each scope releases; ``authz`` lets an app's backend call the decision API.
SCOPES = {
    "openid": "Sign you in",
    "profile": "Your name",
    "email": "Your email address",
    "org": "The organization you sign in for",
    "roles": "Your roles in that organization",
    "offline_access": "Stay signed in (refresh tokens)",
    "authz": "Ask Trellis's decision API",
}
DEFAULT_SCOPES = ("openid", "profile", "email", "org", "roles")
MAX_ACCESS_SECONDS = 86_400  # also how long a replaced signing key stays published
MAX_REFRESH_SECONDS = 365 * 86_400


@dataclass
class AppSpec:
    """What an operator registers; validated by ``create``."""

    name: str
    redirect_uris: list[str] = field(default_factory=list)
    client_type: str = ClientType.CONFIDENTIAL.value
    auth_method: str = ""  # default: client_secret_basic, or none for public clients
    grant_types: list[str] = field(default_factory=lambda: [AUTHORIZATION_CODE, REFRESH_TOKEN])
    scopes: list[str] = field(default_factory=lambda: list(DEFAULT_SCOPES))
    organizations: list[str] = field(default_factory=list)
    access_token_seconds: int = 600
    refresh_token_seconds: int = 30 * 86_400
    consent_required: bool = True
    logo_url: str = ""
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    backchannel_logout_uri: str = ""
    jwks: dict[str, Any] = field(default_factory=dict)


def create(session: Session, ctx: audit.Context, spec: AppSpec) -> tuple[OAuthApp, str | None]:
    """Register an app; return it and its secret (None for public and private_key_jwt
    apps). The secret is stored only as a hash and cannot be shown again."""
    values = _validated(session, spec)
    app = OAuthApp(client_id="app_" + secrets.token_hex(10), **values)
    secret = None
    if app.auth_method in ("client_secret_basic", "client_secret_post"):
        secret = _new_secret(app)
    session.add(app)
    session.flush()
    audit.record(session, ctx, "app.create", target=f"app:{app.client_id}",
                 details={k: v for k, v in values.items() if k != "jwks"})
    return app, secret


def rotate_secret(session: Session, ctx: audit.Context, client_id: str) -> str:
    """A new secret replaces the old one at once (the old one stops working)."""
    app = get(session, client_id)
    if app.auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ValidationError(f"App {client_id} authenticates with {app.auth_method}, not a "
                              "secret.", code="no_secret")
    secret = _new_secret(app)
    audit.record(session, ctx, "app.rotate_secret", target=f"app:{app.client_id}")
    return secret


def set_enabled(session: Session, ctx: audit.Context, client_id: str, enabled: bool) -> OAuthApp:
    app = get(session, client_id)
    app.enabled = enabled
    audit.record(session, ctx, "app.enable" if enabled else "app.disable",
                 target=f"app:{app.client_id}")
    return app


def get(session: Session, client_id: str) -> OAuthApp:
    app = session.scalar(sa.select(OAuthApp).where(OAuthApp.client_id == client_id))
    if app is None:
        raise NotFound(f"There is no app {client_id}.", code="unknown_app")
    return app


def list_all(session: Session) -> list[OAuthApp]:
    return list(session.scalars(sa.select(OAuthApp).order_by(OAuthApp.id)))


def check_secret(app: OAuthApp, secret: str) -> bool:
    if not app.secret_hash or not secret:
        return False
    return hmac.compare_digest(app.secret_hash, _digest(secret))


def _new_secret(app: OAuthApp) -> str:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    app.secret_prefix, app.secret_hash = secret[:10], _digest(secret)
    return secret


def _digest(secret: str) -> str:
    # The secret is 256 random bits, so a plain hash cannot be brute-forced; argon2 would
    # only slow every token request down.
    return hashlib.sha256(secret.encode()).hexdigest()


def _validated(session: Session, spec: AppSpec) -> dict[str, Any]:
    name = (spec.name or "").strip()
    if not name or len(name) > 200:
        raise InvalidRequest("name", "must be 1 to 200 characters")
    try:
        client_type = ClientType(spec.client_type)
    except ValueError:
        raise InvalidRequest("client_type", "must be confidential or public") from None
    public = client_type == ClientType.PUBLIC
    auth_method = spec.auth_method or ("none" if public else "client_secret_basic")
    if auth_method not in AUTH_METHODS:
        raise InvalidRequest("auth_method", f"must be one of {', '.join(AUTH_METHODS)}")
    if public != (auth_method == "none"):
        raise InvalidRequest("auth_method", "public apps use none; confidential apps use a "
                                            "secret or private_key_jwt")
    grants = _unique(spec.grant_types)
    unknown = [g for g in grants if g not in GRANT_TYPES]
    if not grants or unknown:
        raise InvalidRequest("grant_types", f"must be some of {', '.join(GRANT_TYPES)}")
    if public and CLIENT_CREDENTIALS in grants:
        raise InvalidRequest("grant_types", "a public app cannot use client_credentials")
    scopes = _unique(spec.scopes)
    if not scopes or any(s not in SCOPES for s in scopes):
        raise InvalidRequest("scopes", f"must be some of {', '.join(SCOPES)}")
    redirect_uris = [_redirect_uri(uri, public, "redirect_uris")
                     for uri in _unique(spec.redirect_uris)]
    if (AUTHORIZATION_CODE in grants) != bool(redirect_uris):
        raise InvalidRequest("redirect_uris", "are required with authorization_code, and only "
                                              "then")
    jwks = _jwks(spec.jwks) if auth_method == "private_key_jwt" else {}
    return {
        "name": name, "client_type": client_type, "auth_method": auth_method,
        "grant_types": grants, "scopes": scopes, "redirect_uris": redirect_uris,
        "organizations": sorted({organizations.get(session, s).slug
                                 for s in spec.organizations}),
        "access_token_seconds": _seconds(spec.access_token_seconds, "access_token_seconds",
                                         60, MAX_ACCESS_SECONDS),
        "refresh_token_seconds": _seconds(spec.refresh_token_seconds, "refresh_token_seconds",
                                          300, MAX_REFRESH_SECONDS),
        "consent_required": bool(spec.consent_required),
        "logo_url": _https_url(spec.logo_url, "logo_url") if spec.logo_url else "",
        "post_logout_redirect_uris": [_redirect_uri(u, public, "post_logout_redirect_uris")
                                      for u in _unique(spec.post_logout_redirect_uris)],
        "backchannel_logout_uri": (_redirect_uri(spec.backchannel_logout_uri, False,
                                                 "backchannel_logout_uri")
                                   if spec.backchannel_logout_uri else ""),
        "jwks": jwks,
    }


def _unique(items) -> list[str]:
    return list(dict.fromkeys(item.strip() for item in items or () if item and item.strip()))


def _seconds(value: int, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high} seconds")
    return value


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _redirect_uri(uri: str, public: bool, name: str) -> str:
    """https anywhere, plain http only on loopback, and for public (native) apps a private
    scheme in reverse-domain form (RFC 8252). Never a fragment or a wildcard: URIs are
    compared exactly."""
    if len(uri) > 500:
        raise InvalidRequest(name, "must be at most 500 characters")
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri or "*" in uri:
        raise InvalidRequest(name, f"{uri}: no fragment or wildcard")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return uri
    if public and "." in parts.scheme and parts.scheme not in ("http", "https") and parts.path:
        return uri
    raise InvalidRequest(name, f"{uri}: must be https (http only on loopback)")


def _https_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or len(url) > 500:
        raise InvalidRequest(name, "must be an https URL")
    return url


def _jwks(value: dict[str, Any]) -> dict[str, Any]:
    """The app's public keys: RSA or EC only, never a private or symmetric key."""
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet
    keys = (value or {}).get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list) or not keys:
        raise InvalidRequest("jwks", "private_key_jwt needs a JWK set with the app's public "
                                     "keys")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC") or "d" in key:
            raise InvalidRequest("jwks", "must hold only RSA or EC public keys")
    try:
        KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidRequest("jwks", f"is not a valid JWK set ({exc})") from None
    return {"keys": keys}
