"""Logout notifications to apps when a Trellis session ends. Back-channel (OpenID Connect
Back-Channel Logout 1.0): every app that got tokens from the session and registered a
``backchannel_logout_uri`` receives a signed logout token naming the user and the session.
Front-channel (OpenID Connect Front-Channel Logout 1.0): the signed-out page loads each app's
``frontchannel_logout_uri`` in a hidden frame, with ``iss`` and ``sid``."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa
import urllib3
from authlib.common.urls import add_params_to_uri
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
    alg: str = "RS256"


@dataclass(frozen=True)
class Frame:
    """A front-channel logout: the app's page, loaded in a hidden frame by the browser."""

    client_id: str
    uri: str  # with iss and sid


@dataclass
class Collected:
    back: list[Notice] = field(default_factory=list)
    front: list[Frame] = field(default_factory=list)


def revoke_and_collect(session: Session, token_hash: str, issuer: str) -> Collected:
    """Revoke the tokens apps got from this Trellis session, and list the apps to tell:
    back-channel (a logout token POSTed by Trellis) and front-channel (a frame the browser
    loads), each naming the session by ``sid``."""
    row = session.scalar(sa.select(AuthSession).where(AuthSession.token_hash == token_hash))
    if row is None:
        return Collected()
    app_ids = provider.revoke_for_session(session, row.id)
    if not app_ids:
        return Collected()
    sid = provider.sid_for(token_hash)
    found = Collected()
    for app in session.scalars(sa.select(OAuthApp).where(OAuthApp.id.in_(app_ids))
                               .order_by(OAuthApp.id)):
        if app.backchannel_logout_uri:
            found.back.append(Notice(app.backchannel_logout_uri, app.client_id,
                                     provider.subject_for(app, row.user_id), sid,
                                     app.id_token_signed_response_alg))
        if app.frontchannel_logout_uri:
            found.front.append(Frame(app.client_id, add_params_to_uri(
                app.frontchannel_logout_uri, [("iss", issuer), ("sid", sid)])))
    return found


def frame_origins(frames: list[Frame]) -> list[str]:
    """The origins the signed-out page may frame (its CSP ``frame-src``), and only those."""
    origins = []
    for frame in frames:
        parts = urlsplit(frame.uri)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in origins:
            origins.append(origin)
    return origins


def logout_token(notice: Notice, issuer: str) -> dict:
    now = int(time.time())
    return {"iss": issuer, "aud": notice.client_id, "iat": now, "exp": now + 120,
            "jti": secrets.token_urlsafe(16), "sub": notice.sub, "sid": notice.sid,
            "events": {EVENT: {}}}


def notify(notices: list[Notice], issuer: str, sign: Callable[..., str]) -> int:
    """POST each logout token; an app that does not answer in time is logged, not retried
    (its tokens are revoked already, so introspection tells it the truth)."""
    delivered = 0
    if not notices:
        return 0
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=TIMEOUT_SECONDS), retries=False)
    for notice in notices:
        body = {"logout_token": sign(logout_token(notice, issuer), "logout+jwt", notice.alg)}
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
