"""Back-channel logout (OpenID Connect Back-Channel Logout 1.0): when a Trellis session ends,
every app that got tokens from it and registered a ``backchannel_logout_uri`` receives a
signed logout token naming the user and the session."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
import urllib3
from sqlalchemy.orm import Session

from portal.models import AuthSession, OAuthApp
from portal.services import provider

EVENT = "http://schemas.openid.net/event/backchannel-logout"
TIMEOUT_SECONDS = 2.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    uri: str
    client_id: str
    sub: str
    sid: str


def revoke_and_collect(session: Session, token_hash: str) -> list[Notice]:
    row = session.scalar(sa.select(AuthSession).where(AuthSession.token_hash == token_hash))
    if row is None:
        return []
    app_ids = provider.revoke_for_session(session, row.id)
    if not app_ids:
        return []
    listening = session.execute(sa.select(OAuthApp.client_id, OAuthApp.backchannel_logout_uri)
                                .where(OAuthApp.id.in_(app_ids),
                                       OAuthApp.backchannel_logout_uri != "")).all()
    sid = provider.sid_for(token_hash)
    return [Notice(uri, client_id, str(row.user_id), sid) for client_id, uri in listening]


def logout_token(notice: Notice, issuer: str) -> dict:
    now = int(time.time())
    return {"iss": issuer, "aud": notice.client_id, "iat": now, "exp": now + 120,
            "jti": secrets.token_urlsafe(16), "sub": notice.sub, "sid": notice.sid,
            "events": {EVENT: {}}}


def notify(notices: list[Notice], issuer: str, sign: Callable[[dict, str], str]) -> int:
    """POST each logout token; an app that does not answer in time is logged, not retried
    (its tokens are revoked already, so introspection tells it the truth)."""
    delivered = 0
    if not notices:
        return 0
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=TIMEOUT_SECONDS), retries=False)
    for notice in notices:
        body = {"logout_token": sign(logout_token(notice, issuer), "logout+jwt")}
        try:
            response = http.request("POST", notice.uri, fields=body, encode_multipart=False,
                                    redirect=False)
            delivered += response.status == 200
            if response.status != 200:
                log.warning("back-channel logout to %s answered %s", notice.client_id,
                            response.status)
        except urllib3.exceptions.HTTPError as exc:
            log.warning("back-channel logout to %s failed: %s", notice.client_id,
                        type(exc).__name__)
    return delivered
