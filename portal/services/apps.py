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
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
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
    "apps:manage": "Manage Trellis's app registry (operators' automation only)",
}
# Scopes a backend may hold without a user (client credentials).
BACKEND_SCOPES = ("authz", "apps:manage")
DEFAULT_SCOPES = ("openid", "profile", "email", "org", "roles")
MAX_ACCESS_SECONDS = 86_400  # also how long a replaced signing key stays published
MAX_REFRESH_SECONDS = 365 * 86_400
# ``organizations: ["*"]`` offers sign-in to the members of every organization (a
# platform-wide app). The decision API still answers such an app's backend only about
# organizations it names.
EVERY_ORGANIZATION = "*"
ID_TOKEN_ALGORITHMS = ("RS256", "ES256")
SUBJECT_TYPES = ("public", "pairwise")
DEFAULT_GRACE_SECONDS = 86_400  # how long a replaced client secret keeps working
MAX_GRACE_SECONDS = 30 * 86_400
# What an operator may change after registration. The client type, authentication method and
# subject type stay: changing them would break the app's credentials or its users' ``sub``.
EDITABLE = ("name", "redirect_uris", "grant_types", "scopes", "organizations",
            "access_token_seconds", "refresh_token_seconds", "consent_required", "logo_url",
            "post_logout_redirect_uris", "backchannel_logout_uri", "frontchannel_logout_uri",
            "initiate_login_uri", "id_token_signed_response_alg", "jwks",
            "access_token_signed_response_alg")
ACCESS_TOKEN_ALGORITHMS = ("RS256", "ES256")
# The sector identifier document (OpenID Connect Core 8.1): a JSON array of URLs, fetched
# with timeouts and a size cap, never following redirects.
SECTOR_DOCUMENT_MAX_BYTES = 64 * 1024
SECTOR_DOCUMENT_TIMEOUT = (3.05, 5.0)


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
    frontchannel_logout_uri: str = ""
    initiate_login_uri: str = ""
    id_token_signed_response_alg: str = "RS256"  # noqa: S105  (an algorithm name)
    subject_type: str = "public"
    sector_identifier: str = ""
    sector_identifier_uri: str = ""
    access_token_signed_response_alg: str = "RS256"  # noqa: S105  (an algorithm name)


def create(session: Session, ctx: audit.Context, spec: AppSpec,
           allow_insecure_loopback: bool = False) -> tuple[OAuthApp, str | None]:
    """Register an app; return it and its secret (None for public and private_key_jwt
    apps). The secret is stored only as a hash and cannot be shown again. A
    ``sector_identifier_uri`` is fetched (plain HTTP only to loopback, and only when
    ``allow_insecure_loopback``: development and tests)."""
    values = _validated(session, spec, fetch_sector=True,
                        allow_insecure_loopback=allow_insecure_loopback)
    if values["subject_type"] == "pairwise":
        values["pairwise_salt"] = _sector_salt(session, values["sector_identifier"])
    app = OAuthApp(client_id="app_" + secrets.token_hex(10), **values)
    secret = None
    if app.auth_method in ("client_secret_basic", "client_secret_post"):
        secret = _new_secret(app)
    session.add(app)
    session.flush()
    audit.record(session, ctx, "app.create", target=f"app:{app.client_id}",
                 details={k: v for k, v in values.items() if k not in ("jwks", "pairwise_salt")})
    return app, secret


def spec_of(app: OAuthApp) -> AppSpec:
    """The registration as it stands, for editing."""
    return AppSpec(
        name=app.name, redirect_uris=list(app.redirect_uris), client_type=app.client_type.value,
        auth_method=app.auth_method, grant_types=list(app.grant_types),
        scopes=list(app.scopes), organizations=list(app.organizations),
        access_token_seconds=app.access_token_seconds,
        refresh_token_seconds=app.refresh_token_seconds,
        consent_required=app.consent_required, logo_url=app.logo_url,
        post_logout_redirect_uris=list(app.post_logout_redirect_uris),
        backchannel_logout_uri=app.backchannel_logout_uri, jwks=dict(app.jwks or {}),
        frontchannel_logout_uri=app.frontchannel_logout_uri,
        initiate_login_uri=app.initiate_login_uri,
        id_token_signed_response_alg=app.id_token_signed_response_alg,
        subject_type=app.subject_type, sector_identifier=app.sector_identifier,
        sector_identifier_uri=app.sector_identifier_uri,
        access_token_signed_response_alg=app.access_token_signed_response_alg)


def update(session: Session, ctx: audit.Context, client_id: str, changes: dict[str, Any],
           allow_insecure_loopback: bool = False) -> OAuthApp:
    """Change what may change after registration; everything is validated as at creation
    (new redirect URIs of an app with a sector identifier URI are checked against a fresh
    copy of its document), and the audit event holds each changed field's old and new
    value."""
    app = get(session, client_id)
    fixed = sorted(set(changes) - set(EDITABLE))
    if fixed:
        raise InvalidRequest(fixed[0], "cannot be changed after registration")
    spec = spec_of(app)
    for key, value in changes.items():
        setattr(spec, key, value)
    new_uris = "redirect_uris" in changes and \
        _unique(changes["redirect_uris"]) != list(app.redirect_uris)
    values = _validated(session, spec, fetch_sector=new_uris,
                        allow_insecure_loopback=allow_insecure_loopback)
    diff = {}
    for key in EDITABLE:
        if values[key] != getattr(app, key):
            if key != "jwks":
                diff[key] = [getattr(app, key), values[key]]
            else:
                diff[key] = "replaced"
            setattr(app, key, values[key])
    if "redirect_uris" in diff and app.blocked_redirect_uris:
        # The edit fetched the document afresh and it lists every redirect URI now.
        diff["blocked_redirect_uris"] = [list(app.blocked_redirect_uris), []]
        app.blocked_redirect_uris = []
    if diff:
        audit.record(session, ctx, "app.update", target=f"app:{app.client_id}", details=diff)
    return app


def rotate_secret(session: Session, ctx: audit.Context, client_id: str,
                  grace_seconds: int = DEFAULT_GRACE_SECONDS) -> str:
    """A new secret; the one it replaces keeps working for ``grace_seconds`` (0: stops at
    once), so the app's servers can switch over without an outage. A secret replaced
    earlier stops now."""
    app = get(session, client_id)
    if app.auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ValidationError(f"App {client_id} authenticates with {app.auth_method}, not a "
                              "secret.", code="no_secret")
    grace = _seconds(grace_seconds, "grace_seconds", 0, MAX_GRACE_SECONDS)
    until = utcnow() + timedelta(seconds=grace)
    app.previous_secret_hash = app.secret_hash if grace else None
    app.previous_secret_expires_at = until if grace else None
    secret = _new_secret(app)
    audit.record(session, ctx, "app.rotate_secret", target=f"app:{app.client_id}",
                 details={"grace_seconds": grace,
                          "old_secret_valid_until": until.isoformat() if grace else None})
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
    """The current secret, or the replaced one during its grace period."""
    if not app.secret_hash or not isinstance(secret, str) or not secret:
        return False
    given = _digest(secret)
    if hmac.compare_digest(app.secret_hash, given):
        return True
    return bool(app.previous_secret_hash and app.previous_secret_expires_at
                and app.previous_secret_expires_at > utcnow()
                and hmac.compare_digest(app.previous_secret_hash, given))


def tiles(session: Session, user_id: int) -> list[tuple[OAuthApp, list[str]]]:
    """The apps a member may open from the portal: enabled, signing users in with the code
    flow, with an initiate-login URI, and offered to one of the member's active
    organizations (with the slugs of those organizations)."""
    from portal.models import Membership, MembershipStatus, Organization, OrgStatus
    slugs = set(session.scalars(
        sa.select(Organization.slug).join(Membership,
                                          Membership.organization_id == Organization.id)
        .where(Membership.user_id == user_id, Membership.status == MembershipStatus.ACTIVE,
               Organization.status == OrgStatus.ACTIVE)))
    if not slugs:
        return []
    rows = session.scalars(sa.select(OAuthApp).where(OAuthApp.enabled.is_(True),
                                                     OAuthApp.initiate_login_uri != "")
                           .order_by(OAuthApp.name))
    found = []
    for app in rows:
        offered = sorted(s for s in slugs if offered_to(app, s))
        if offered and AUTHORIZATION_CODE in app.grant_types:
            found.append((app, offered))
    return found


def _sector_salt(session: Session, sector: str) -> str:
    """Apps of one sector see the same pairwise ``sub``: they share the salt."""
    salt = session.scalar(sa.select(OAuthApp.pairwise_salt).where(
        OAuthApp.subject_type == "pairwise", OAuthApp.sector_identifier == sector,
        OAuthApp.pairwise_salt != "").limit(1))
    return salt or secrets.token_hex(32)


def _new_secret(app: OAuthApp) -> str:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    app.secret_prefix, app.secret_hash = secret[:10], _digest(secret)
    return secret


def _digest(secret: str) -> str:
    # The secret is 256 random bits, so a plain hash cannot be brute-forced; argon2 would
    # only slow every token request down.
    return hashlib.sha256(secret.encode()).hexdigest()


def _validated(session: Session, spec: AppSpec, fetch_sector: bool = False,
               allow_insecure_loopback: bool = False) -> dict[str, Any]:
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
        "organizations": _organizations(session, spec.organizations),
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
        "frontchannel_logout_uri": (_redirect_uri(spec.frontchannel_logout_uri, False,
                                                  "frontchannel_logout_uri")
                                    if spec.frontchannel_logout_uri else ""),
        "initiate_login_uri": (_redirect_uri(spec.initiate_login_uri, False,
                                             "initiate_login_uri")
                               if spec.initiate_login_uri else ""),
        "id_token_signed_response_alg": _choice(spec.id_token_signed_response_alg or "RS256",
                                                ID_TOKEN_ALGORITHMS,
                                                "id_token_signed_response_alg"),
        "access_token_signed_response_alg": _choice(
            spec.access_token_signed_response_alg or "RS256", ACCESS_TOKEN_ALGORITHMS,
            "access_token_signed_response_alg"),
        **_subject(spec, redirect_uris, fetch_sector, allow_insecure_loopback),
    }


def _organizations(session: Session, slugs: list[str]) -> list[str]:
    slugs = _unique(slugs)
    if EVERY_ORGANIZATION in slugs:
        if len(slugs) > 1:
            raise InvalidRequest("organizations", "* (every organization) stands alone")
        return [EVERY_ORGANIZATION]
    return sorted({organizations.get(session, s).slug for s in slugs})


def offered_to(app: OAuthApp, slug: str) -> bool:
    offered = app.organizations or ()
    return EVERY_ORGANIZATION in offered or slug in offered


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise InvalidRequest(name, f"must be one of {', '.join(allowed)}")
    return value


def _subject(spec: AppSpec, redirect_uris: list[str], fetch_sector: bool,
             allow_insecure_loopback: bool) -> dict[str, str]:
    """A pairwise app's sector is the host of its sector identifier URI (whose document must
    list every redirect URI), or the host named by the operator, or else the one host of
    its redirect URIs (OpenID Connect Core 8.1)."""
    subject_type = _choice(spec.subject_type or "public", SUBJECT_TYPES, "subject_type")
    uri = (spec.sector_identifier_uri or "").strip()
    if subject_type == "public":
        if uri:
            raise InvalidRequest("sector_identifier_uri", "is for pairwise apps only")
        return {"subject_type": subject_type, "sector_identifier": "",
                "sector_identifier_uri": ""}
    if uri:
        host = _sector_uri(uri, allow_insecure_loopback)
        given = (spec.sector_identifier or "").strip().lower()
        if given and given != host:
            raise InvalidRequest("sector_identifier", "must be the host of "
                                                      "sector_identifier_uri, or left out")
        if fetch_sector:
            _check_sector_document(uri, redirect_uris)
        return {"subject_type": subject_type, "sector_identifier": host,
                "sector_identifier_uri": uri}
    sector = (spec.sector_identifier or "").strip().lower()
    if not sector:
        hosts = {urlsplit(uri).hostname or urlsplit(uri).scheme for uri in redirect_uris}
        if len(hosts) != 1:
            raise InvalidRequest("sector_identifier", "is required when the redirect URIs "
                                                      "name several hosts (or none)")
        sector = hosts.pop()
    if len(sector) > 255 or not all(part and part.replace("-", "").isalnum()
                                    for part in sector.split(".")):
        raise InvalidRequest("sector_identifier", "must be a host name")
    return {"subject_type": subject_type, "sector_identifier": sector,
            "sector_identifier_uri": ""}


def _sector_uri(uri: str, allow_insecure_loopback: bool) -> str:
    """The sector identifier URI's host; https only (plain http to loopback in development
    and tests)."""
    parts = urlsplit(uri)
    if len(uri) > 500 or parts.fragment or not parts.hostname:
        raise InvalidRequest("sector_identifier_uri", "must be an https URL")
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_insecure_loopback
                                        and is_loopback(parts.hostname)):
        raise InvalidRequest("sector_identifier_uri", "must be an https URL")
    return parts.hostname.lower()


def _check_sector_document(uri: str, redirect_uris: list[str]) -> None:
    """Fetch the document (timeouts, a size cap, no redirects): a JSON array of URLs that
    must hold every redirect URI of the app, so the sector's owner vouches for them."""
    listed = _sector_document(uri)
    missing = [u for u in redirect_uris if u not in listed]
    if missing:
        raise InvalidRequest("sector_identifier_uri", f"does not list the redirect URI "
                                                      f"{missing[0]}")


def _sector_document(uri: str) -> set[str]:
    """The URLs the sector identifier document lists, or ``InvalidRequest`` saying why it
    could not be read."""
    import json

    from federation import http
    from federation.errors import FederationError
    try:
        raw = http.fetch_bytes(uri, what="sector_identifier_uri",
                               timeout=SECTOR_DOCUMENT_TIMEOUT,
                               max_bytes=SECTOR_DOCUMENT_MAX_BYTES,
                               headers={"Accept": "application/json"})
    except FederationError as exc:
        reason = {"idp_timeout": "did not answer in time",
                  "idp_response_too_large": "sent a document that is too large",
                  "idp_bad_response": "answered with an error"}.get(exc.code,
                                                                     "could not be reached")
        raise InvalidRequest("sector_identifier_uri", reason) from None
    try:
        listed = json.loads(raw)
    except ValueError:
        raise InvalidRequest("sector_identifier_uri", "is not a JSON array of URLs") from None
    if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
        raise InvalidRequest("sector_identifier_uri", "is not a JSON array of URLs")
    return set(listed)


@dataclass
class SectorCheck:
    """What one pass of ``recheck_sectors`` found, per app's client id."""

    blocked: dict[str, list[str]] = field(default_factory=dict)
    restored: dict[str, list[str]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)


def recheck_sectors(db, ctx: audit.Context, hours: int, force: bool = False) -> SectorCheck:
    """Fetch again the sector identifier document of every app whose last check is older
    than ``hours`` (``trellis worker``). A redirect URI the document no longer lists is
    blocked (the authorization endpoint refuses it) until the document lists it again; a
    document that cannot be read changes nothing and is tried at the next pass. Each change
    is audited in the transaction that makes it. The documents are fetched outside any
    transaction (a slow sector must not hold database locks)."""
    now = utcnow()
    due_before = now - timedelta(hours=hours)
    with db.sessions() as session:
        query = sa.select(OAuthApp.id, OAuthApp.sector_identifier_uri).where(
            OAuthApp.sector_identifier_uri != "")
        if not force:
            query = query.where(sa.or_(OAuthApp.sector_checked_at.is_(None),
                                       OAuthApp.sector_checked_at < due_before))
        due = session.execute(query.order_by(OAuthApp.id)).all()
    found = SectorCheck()
    for app_id, uri in due:
        try:
            listed: set[str] | None = _sector_document(uri)
            problem = ""
        except InvalidRequest as exc:
            listed, problem = None, str(exc)
        with db.transaction() as session:
            app = session.get(OAuthApp, app_id)
            if app is None or app.sector_identifier_uri != uri:
                continue  # changed meanwhile: its edit checked the new document
            app.sector_checked_at = utcnow()
            if listed is None:
                found.unreadable[app.client_id] = problem
                audit.record(session, ctx, "app.sector_check", outcome="failure",
                             target=f"app:{app.client_id}", reason="document_unreadable",
                             details={"sector_identifier_uri": uri, "problem": problem})
                continue
            blocked = [u for u in app.redirect_uris if u not in listed]
            before = list(app.blocked_redirect_uris or [])
            if blocked == before:
                continue
            app.blocked_redirect_uris = blocked
            newly = [u for u in blocked if u not in before]
            back = [u for u in before if u not in blocked]
            if newly:
                found.blocked[app.client_id] = newly
            if back:
                found.restored[app.client_id] = back
            audit.record(session, ctx, "app.sector_check",
                         outcome="failure" if newly else "success",
                         target=f"app:{app.client_id}",
                         reason="redirect_uri_unlisted" if newly else "",
                         details={"sector_identifier_uri": uri, "blocked": newly,
                                  "restored": back})
    return found


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
