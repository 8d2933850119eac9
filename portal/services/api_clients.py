"""API keys for vendor apps: created once, stored hashed, scoped to organizations."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import NotFound, TrellisError, ValidationError
from portal.models import ApiClient
from portal.services import organizations

PREFIX = "trk_"


def create(session: Session, ctx: audit.Context, name: str, org_slugs: list[str]
           ) -> tuple[ApiClient, str]:
    """Return the client and its key; the key is never stored and cannot be shown again."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationError("An API client needs a name of at most 200 characters.",
                              code="invalid_name")
    slugs = sorted({organizations.get(session, slug).slug for slug in org_slugs})
    key = PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(name=name, key_prefix=key[:12], key_hash=_digest(key),
                       organizations=slugs)
    session.add(client)
    session.flush()
    audit.record(session, ctx, "api_client.create", target=f"api_client:{client.id}",
                 details={"name": name, "organizations": slugs})
    return client, key


def list_all(session: Session) -> list[ApiClient]:
    return list(session.scalars(sa.select(ApiClient).order_by(ApiClient.id)))


def set_enabled(session: Session, ctx: audit.Context, client_id: int,
                enabled: bool) -> ApiClient:
    client = session.get(ApiClient, client_id)
    if client is None:
        raise NotFound(f"There is no API client {client_id}.", code="unknown_api_client")
    client.enabled = enabled
    audit.record(session, ctx, "api_client.enable" if enabled else "api_client.disable",
                 target=f"api_client:{client.id}")
    return client


@dataclass(frozen=True)
class Caller:
    id: int
    organizations: frozenset[str]


class KeyCache:
    """Recently authenticated keys, so the decision API does not look every call's key up:
    a disabled key stops working within ``seconds``."""

    def __init__(self, seconds: float = 5.0, size: int = 10_000) -> None:
        self.seconds, self.size = seconds, size
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        return entry[1] if entry and entry[0] > time.monotonic() else None

    def put(self, digest: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.seconds, caller)


def rotate(session: Session, ctx: audit.Context, client_id: int,
           grace: timedelta) -> tuple[ApiClient, str]:
    """Give the client a new key; the current one keeps working for ``grace`` (zero: it
    stops at once), so the app can roll the new key out without an outage. A key still in
    its grace period from an earlier rotation stops now."""
    if grace < timedelta(0) or grace > MAX_GRACE:
        raise ValidationError("The grace period must be between 0 and 30 days.",
                              code="invalid_grace")
    client = _get(session, client_id)
    key = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    client.previous_key_hash = client.key_hash if grace else None
    client.previous_key_expires_at = now + grace if grace else None
    client.key_hash, client.key_prefix, client.rotated_at = _digest(key), key[:12], now
    session.flush()
    audit.record(session, ctx, "api_client.rotate", target=f"api_client:{client.id}",
                 details={"grace_seconds": int(grace.total_seconds()),
                          "new_key_prefix": client.key_prefix})
    return client, key


def revoke_previous(session: Session, ctx: audit.Context, client_id: int) -> ApiClient:
    """End the grace period now: only the newest key works (within the key cache's 5 s)."""
    client = _get(session, client_id)
    if client.previous_key_hash is None:
        raise ValidationError(f"API client {client_id} has no previous key in use.",
                              code="no_previous_key")
    client.previous_key_hash = client.previous_key_expires_at = None
    audit.record(session, ctx, "api_client.revoke_previous", target=f"api_client:{client.id}")
    return client


def _get(session: Session, client_id: int) -> ApiClient:
    client = session.get(ApiClient, client_id)
    if client is None:
        raise NotFound(f"There is no API client {client_id}.", code="unknown_api_client")
    return client


MAX_GRACE = timedelta(days=30)
BY_DIGEST = sa.select(ApiClient.id, ApiClient.organizations).where(
    ApiClient.key_hash == sa.bindparam("digest"), ApiClient.enabled.is_(True))
BY_PREVIOUS_DIGEST = sa.select(ApiClient.id, ApiClient.organizations).where(
    ApiClient.previous_key_hash == sa.bindparam("digest"),
    ApiClient.previous_key_expires_at > sa.bindparam("now"), ApiClient.enabled.is_(True))


def cached(key: str | None, cache: KeyCache) -> Caller | None:
    """The caller for a key authenticated within the cache's lifetime, without a database
    session (the decision API's hot path); None means: call ``authenticate``."""
    if not key or not key.startswith(PREFIX):
        return None
    return cache.get(_digest(key))


def authenticate(session: Session, key: str | None, cache: KeyCache | None = None) -> Caller:
    if not key or not key.startswith(PREFIX):
        raise Unauthenticated()
    digest = _digest(key)
    caller = cache.get(digest) if cache else None
    if caller is None:
        row = session.execute(BY_DIGEST, {"digest": digest}).first() or session.execute(
            BY_PREVIOUS_DIGEST, {"digest": digest, "now": utcnow()}).first()
        if row is None:
            raise Unauthenticated()
        caller = Caller(row.id, frozenset(row.organizations or ()))
        if cache:
            cache.put(digest, caller)
    return caller


class Unauthenticated(TrellisError):
    status = 401
    code = "unauthenticated"
    message = ("A valid API key or access token is required (Authorization: Bearer trk_... "
               "or a token with the authz scope).")

    def __init__(self) -> None:
        super().__init__(headers={"WWW-Authenticate": 'Bearer realm="trellis"'})


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
