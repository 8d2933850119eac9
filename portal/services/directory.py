"""Sign-in by bind against an organization's LDAP or Active Directory.

The same throttle as local sign-in counts failures (per typed name and per client IP), so a
directory cannot be used to guess passwords faster than the portal's own accounts. A
successful bind goes through the shared just-in-time provisioning, and the session row is
written in the same transaction.
"""

from __future__ import annotations

from federation import provisioning
from federation.errors import FederationError
from federation.identity import ExternalIdentity
from federation.ldap import CREDENTIAL_FAILURES, LdapAdapter
from portal import audit, risk
from portal.crypto import SecretBox
from portal.db import Database
from portal.errors import TooManyAttempts
from portal.models import Connection, Protocol, User
from portal.services import auth, connections
from portal.throttle import LoginThrottle

# Counted like a wrong password: each of them can be produced by guessing.
COUNTED = CREDENTIAL_FAILURES | {"ambiguous_user"}


def throttle_key(login: str) -> str:
    """The typed name as the throttle and the audit trail keep it: control characters (NUL
    cannot even be stored in PostgreSQL text) become U+FFFD."""
    text = (login or "").strip().lower()[:320]
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def sign_in(db: Database, ctx: audit.Context, throttle: LoginThrottle, adapter: LdapAdapter,
            box: SecretBox, grants, connection_id: int, login: str, password: str,
            open_session: auth.SessionOpener) -> tuple[User, str | None, ExternalIdentity]:
    """Bind as the user, provision, open a session. Raises ``auth.InvalidCredentials`` for
    anything a guesser could learn from, ``FederationError`` for the rest (the directory is
    down, the account is disabled or expired, provisioning refused; ``error.identity`` then
    holds what the directory said)."""
    key = throttle_key(login)
    try:
        throttle.check(key, ctx.ip)
    except TooManyAttempts:
        risk.note_failed_account(db, ctx, throttle, key)  # throttled attempts count too
        raise
    with db.sessions() as session:
        connection = session.get(Connection, connection_id)
        if connection is None or connection.protocol != Protocol.LDAP:
            raise FederationError("unknown_connection", "This sign-in method is not "
                                  "available.", status=404)
        settings = connections.ldap_settings(connection, box)
    try:
        identity = adapter.authenticate(settings, login, password)
    except FederationError as error:
        if error.code in COUNTED:
            _record_failure(db, ctx, throttle, connection_id, key, error)
            risk.note_failed_account(db, ctx, throttle, key)
            if error.code == "ambiguous_user":
                raise
            raise auth.InvalidCredentials() from None
        _record_refusal(db, ctx, connection_id, error, None)
        raise
    try:
        with db.transaction() as tx:
            row = tx.get(Connection, connection_id)
            plan = provisioning.plan(tx, row, identity)
            user = provisioning.apply(tx, ctx, row, plan, grants)
            token = open_session(tx, user, [])
    except FederationError as error:
        _record_refusal(db, ctx, connection_id, error, identity)
        error.identity = identity
        raise
    throttle.record_success(key, ctx.ip)
    return user, token, identity


def _record_failure(db: Database, ctx: audit.Context, throttle: LoginThrottle,
                    connection_id: int, key: str, error: FederationError) -> None:
    lockout = throttle.record_failure(key, ctx.ip)
    with db.transaction() as tx:
        row = tx.get(Connection, connection_id)
        audit.record(tx, ctx, "auth.login", outcome="failure", target=f"user:{key}",
                     organization_id=row.organization_id, reason=error.code,
                     details={"method": "ldap", "connection": connection_id,
                              "detail": error.detail[:300]})
        if lockout is not None:
            audit.record(tx, ctx, "auth.lockout", outcome="failure",
                         target=f"user:{key}" if lockout.scope == "account" else f"ip:{ctx.ip}",
                         organization_id=row.organization_id,
                         reason=f"{lockout.scope}_locked", details={"seconds": lockout.seconds})


def _record_refusal(db: Database, ctx: audit.Context, connection_id: int,
                    error: FederationError, identity: ExternalIdentity | None) -> None:
    with db.transaction() as tx:
        provisioning.record_refusal(tx, ctx, tx.get(Connection, connection_id), error, identity)
