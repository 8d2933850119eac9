"""Flask extensions and the app's own services, created once per app by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session

from federation.ldap import LdapAdapter
from federation.oidc import OidcAdapter
from federation.saml import SamlAdapter
from policies import PolicyEngine
from portal import audit
from portal.crypto import SecretBox
from portal.db import Database
from portal.passwords import Passwords
from portal.throttle import LoginThrottle

login_manager = LoginManager()
csrf = CSRFProtect()


@dataclass
class Services:
    db: Database
    passwords: Passwords
    throttle: LoginThrottle
    secrets: SecretBox
    oidc: OidcAdapter
    saml: SamlAdapter
    ldap: LdapAdapter
    role_grants: Any  # where provisioning syncs IdP-mapped roles
    policy: PolicyEngine
    decisions: Any  # portal.decision_log.DecisionLog: sampled decisions to the audit trail


def services() -> Services:
    return current_app.extensions["trellis"]


def db_session() -> Session:
    """The request's read session; writes go through ``services().db.transaction()``."""
    if "db_session" not in g:
        g.db_session = services().db.sessions()
    return g.db_session


def close_db_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def audit_context() -> audit.Context:
    from flask import request
    from flask_login import current_user

    user = current_user if current_user and current_user.is_authenticated else None
    return audit.Context(actor_id=user.id if user else None, actor=user.email if user else "",
                         ip=request.remote_addr or "",
                         user_agent=request.headers.get("User-Agent", "")[:400],
                         request_id=g.get("request_id", ""))
