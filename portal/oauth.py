"""Trellis as an OpenID Provider, on Authlib's authorization server, with tighter rules
than Authlib's defaults:

- PKCE with S256 for every client, confidential ones included; ``plain`` is refused.
- Redirect URIs compared exactly; only ``response_type=code``.
- Codes single use under concurrency (one conditional UPDATE), and a second redemption
  revokes what the first one issued; refresh tokens rotate, and reuse revokes the family.
- Access tokens and ID tokens are RS256 (or, per app, ES256) JWTs signed by the key rings
  of ``services.provider_keys``; every token also has a row, so revocation, suspension and
  sign-out take effect at once for introspection, userinfo and the decision API.
- ``iss`` in every authorization response (RFC 9207).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core.grants.util import create_half_hash
from flask import Flask, current_app, g, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from portal.extensions import audit_context, db_session, services
from portal.models import OAuthApp
from portal.services import apps, device, provider, provider_keys
from portal.services.provider import Principal

SECRET_METHODS = ["client_secret_basic", "client_secret_post"]
ALL_METHODS = [*SECRET_METHODS, "private_key_jwt", "none"]
CONFIDENTIAL_METHODS = [*SECRET_METHODS, "private_key_jwt"]
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  (a JWT type, not a secret)


def issuer() -> str:
    return (current_app.config["BASE_URL"] or request.url_root).rstrip("/")


def key_ring() -> provider_keys.KeyRing:
    cache = current_app.extensions.get("trellis_oidc_keys")
    if cache is None:
        s = services()
        cache = current_app.extensions.setdefault(
            "trellis_oidc_keys", provider_keys.KeyCache(s.db, s.secrets))
    return cache.get(audit_context)


class AppClient(ClientMixin):
    """A registered app as Authlib sees it: a detached snapshot of its row."""

    def __init__(self, app: OAuthApp) -> None:
        self.app = app
        self.client_id = app.client_id

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required and compared exactly

    def get_allowed_scope(self, scope: str | None) -> str | None:
        asked = (scope or "").split()
        if any(s not in self.app.scopes for s in asked):
            return None  # refused, never silently narrowed
        return " ".join(dict.fromkeys(asked))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Registered, and not blocked by the periodic sector identifier check."""
        return redirect_uri in self.app.redirect_uris and \
            redirect_uri not in (self.app.blocked_redirect_uris or ())

    def check_client_secret(self, client_secret: str) -> bool:
        return apps.check_secret(self.app, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.app.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and apps.AUTHORIZATION_CODE in self.app.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.app.grant_types

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": self.app.post_logout_redirect_uris}


CLIENT_CACHE_SECONDS = 5.0


def query_client(client_id: str) -> AppClient | None:
    """Registered apps, cached for a few seconds per worker (token endpoints are hot): a
    disabled app or a rotated secret takes effect within ``CLIENT_CACHE_SECONDS``, and a
    disabled app's tokens stop at once because every token check reads its app."""
    if not isinstance(client_id, str) or len(client_id) > 64:
        return None
    cache: dict = current_app.extensions.setdefault("trellis_oauth_clients", {})
    hit = cache.get(client_id)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    session = db_session()
    from sqlalchemy import select
    app = session.scalar(select(OAuthApp).where(OAuthApp.client_id == client_id,
                                                OAuthApp.enabled.is_(True)))
    client = None
    if app is not None:
        session.expunge(app)
        client = AppClient(app)
    if len(cache) > 10_000:
        cache.clear()
    cache[client_id] = (now + CLIENT_CACHE_SECONDS, client)
    return client


# --- tokens -------------------------------------------------------------------------------

def sign(claims: dict[str, Any], typ: str = "JWT", alg: str = provider_keys.ALGORITHM) -> str:
    """Sign with the active key of the ``alg`` ring (RS256 or ES256)."""
    key = key_ring().key_for(alg)
    header = {"alg": alg, "kid": key.kid, "typ": typ}
    return jwt.encode(header, claims, key, algorithms=[alg])


def verify(token: str, typ: str | None = None) -> dict[str, Any] | None:
    """The claims of a JWT Trellis signed and that has not expired, or None."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
        return None
    try:
        decoded = jwt.decode(token, key_ring().public,
                             algorithms=list(provider_keys.ALGORITHMS))
        if typ and decoded.header.get("typ") != typ:
            return None
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer()},
                              exp={"essential": True}).validate(decoded.claims)
    except (JoseError, ValueError):
        return None
    return dict(decoded.claims)


def scope_claims(who: Principal, scope: set[str], client_id: str = "") -> dict[str, Any]:
    """Claims for the granted scopes, and the profile fields this app requires
    (progressive profiling: portal/services/profiling.py)."""
    claims: dict[str, Any] = profile_claims(who.user_id, client_id, scope,
                                            who.org.slug if who.org else None)
    if "profile" in scope:
        claims["name"] = who.name or who.email
    if "email" in scope:
        claims.update(email=who.email, email_verified=who.email_verified)
    if "org" in scope and who.org:
        claims["org"] = {"id": who.org.id, "slug": who.org.slug, "name": who.org.name}
    if "roles" in scope and who.org:
        claims["roles"] = list(who.roles)
    return claims


def profile_claims(user_id: int, client_id: str, scope: set[str],
                   org_slug: str | None) -> dict[str, Any]:
    """The platform's fields and those of the organization the token is for."""
    from flask import current_app

    from portal.services import profiling
    schema = profiling.schema_for(
        current_app.extensions.get("trellis_profile_schema") or (),
        current_app.extensions.get("trellis_org_profile_schemas") or {},
        [org_slug] if org_slug else [])
    if not client_id or not schema:
        return {}
    return profiling.claims(db_session(), schema, user_id, client_id, scope)


def generate_token(grant_type: str, client: AppClient, user: Principal | None = None,
                   scope: str | None = None, expires_in: int | None = None,
                   include_refresh_token: bool = True) -> dict[str, Any]:
    """Authlib's token generator: a JWT access token (RFC 9068), a random refresh token,
    and an ID token when ``openid`` was granted."""
    now = int(time.time())
    lifetime = client.app.access_token_seconds
    scopes = set((scope or "").split())
    jti = secrets.token_urlsafe(18)
    claims: dict[str, Any] = {"iss": issuer(), "aud": issuer(), "client_id": client.client_id,
                              "iat": now, "exp": now + lifetime, "jti": jti,
                              "scope": scope or ""}
    if user is None:
        claims["sub"] = client.client_id
    else:
        claims.update(sub=provider.subject_for(client.app, user.user_id), sid=user.sid,
                      acr=user.acr, amr=list(user.amr),
                      auth_time=int(user.auth_time.timestamp()))
        if user.org and scopes & {"org", "roles"}:
            claims["org"] = {"id": user.org.id, "slug": user.org.slug}
            if "roles" in scopes:
                claims["roles"] = list(user.roles)
    access_token = sign(claims, ACCESS_TOKEN_TYPE,
                        alg=client.app.access_token_signed_response_alg
                        or provider_keys.ALGORITHM)
    token: dict[str, Any] = {"token_type": "Bearer", "access_token": access_token,
                             "expires_in": lifetime, "scope": scope or ""}
    if include_refresh_token and user is not None:
        token["refresh_token"] = "trr_" + secrets.token_urlsafe(32)
    if user is not None and "openid" in scopes:
        token["id_token"] = _id_token(client, user, scopes, access_token, now)
    g.oauth_issued = {"jti": jti, "exp": now + lifetime}
    return token


def _id_token(client: AppClient, who: Principal, scopes: set[str], access_token: str,
              now: int) -> str:
    alg = client.app.id_token_signed_response_alg or provider_keys.ALGORITHM
    claims: dict[str, Any] = {
        "iss": issuer(), "sub": provider.subject_for(client.app, who.user_id),
        "aud": client.client_id,
        "azp": client.client_id, "iat": now, "exp": now + provider_keys.ID_TOKEN_SECONDS,
        "auth_time": int(who.auth_time.timestamp()), "acr": who.acr, "amr": list(who.amr),
        "sid": who.sid,
        "at_hash": create_half_hash(access_token, alg).decode()}
    if who.nonce:
        claims["nonce"] = who.nonce
    claims.update(scope_claims(who, scopes, client.client_id))
    return sign(claims, alg=alg)


@contextmanager
def token_transaction() -> Iterator[None]:
    """One transaction for a whole token request, opened when first needed: redeeming a
    code, checking its user and storing the tokens commit once, after the response is
    built and before it is sent. An exception rolls it all back (nothing was sent).

    The key ring is loaded first: loading may write (the first keys) in a transaction of its
    own, which must not wait for this one (SQLite has one writer at a time)."""
    key_ring()
    with ExitStack() as stack:
        g.oauth_tx_stack = stack
        try:
            yield
        finally:
            g.pop("oauth_tx_stack", None)
            g.pop("oauth_tx", None)


def transaction() -> Session:
    """The token request's transaction (see ``token_transaction``)."""
    session = g.get("oauth_tx")
    if session is None:
        stack: ExitStack = g.oauth_tx_stack
        session = g.oauth_tx = stack.enter_context(services().db.transaction())
    return session


def save_token(token: dict[str, Any], req) -> None:
    issued = g.pop("oauth_issued")
    values = dict(
        app_id=req.client.app.id, refresh_seconds=req.client.app.refresh_token_seconds,
        jti=issued["jti"], who=req.user, grant_type=req.payload.grant_type or "",
        scope=token.get("scope", ""),
        access_expires_at=datetime.fromtimestamp(issued["exp"], UTC),
        refresh_token=token.get("refresh_token"))
    if g.get("oauth_tx_stack") is not None:
        provider.save_token(transaction(), **values)
        return
    with services().db.transaction() as session:  # outside the token endpoint
        provider.save_token(session, **values)


# --- grants -------------------------------------------------------------------------------

class StrictPKCE(CodeChallenge):
    """S256 only, and required of every client: a confidential client's secret does not
    protect a code stolen from its redirect."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    CODE_CHALLENGE_METHODS: ClassVar[dict] = {
        "S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with "
                                      "code_challenge_method=S256.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge_method(self, authorization_code):
        return "S256"


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def save_authorization_code(self, code: str, req) -> None:
        who: Principal = req.user
        with services().db.transaction() as session:
            pushed = g.get("pushed_request_id")
            if pushed is not None and not provider.use_pushed_request(session, pushed):
                raise InvalidRequestError("The pushed request was used already.")
            provider.save_code(session, req.client.app.id, who, code,
                               req.payload.redirect_uri, req.scope or "",
                               req.payload.data.get("nonce", ""),
                               req.payload.data.get("code_challenge"))

    def query_authorization_code(self, code: str, client: AppClient):
        if not isinstance(code, str) or len(code) > 200:
            return None
        row = provider.consume_code(transaction(), audit_context, code, client.app.id)
        return CodeRecord(row) if row else None

    def delete_authorization_code(self, authorization_code) -> None:
        """Consumed already, when it was looked up."""

    def authenticate_user(self, authorization_code) -> Principal | None:
        return provider.code_principal(transaction(), authorization_code.row)


class CodeRecord:
    def __init__(self, row) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = "S256"

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str):
        if not isinstance(refresh_token, str) or len(refresh_token) > 200:
            return None
        row = provider.consume_refresh(services().db, audit_context, refresh_token,
                                       self.request.client.app.id)
        who = provider.refresh_principal(db_session(), row) if row else None
        # A suspended user or a lost membership: invalid_grant, like any dead token.
        return RefreshRecord(row, who) if who else None

    def authenticate_user(self, refresh_token) -> Principal | None:
        return refresh_token.who

    def revoke_old_credential(self, refresh_token) -> None:
        """Rotated already, when it was looked up."""


class RefreshRecord:
    def __init__(self, row, who: Principal) -> None:
        self.row, self.who = row, who

    def check_client(self, client: AppClient) -> bool:
        return self.row.app_id == client.app.id

    def get_scope(self) -> str:
        return self.row.scope


class ClientCredentials(grants.ClientCredentialsGrant):
    """For an app's backend: no user, so no ID token and no user scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def validate_token_request(self):
        super().validate_token_request()
        if set((self.request.payload.scope or "").split()) - set(apps.BACKEND_SCOPES):
            raise InvalidScopeError("client_credentials tokens carry only the authz and "
                                    "apps:manage scopes.")


class PrivateKeyJWT(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523): the app signs an assertion with a key registered in
    its JWKS; each assertion's jti is accepted once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def get_audiences(self) -> list[str]:
        return [issuer() + "/oauth/token", issuer()]

    def resolve_client_public_key(self, client: AppClient):
        return KeySet.import_key_set(client.app.jwks or {"keys": []})

    def validate_jti(self, claims, jti: str) -> bool:
        from portal.services import replay
        ttl = max(60, int(claims.get("exp", 0)) - int(time.time()) + 300)
        return replay.consume(services().db, "pkjwt", f"{claims['iss']}:{jti}", ttl)


# --- introspection, revocation, device authorization ----------------------------------------

def lookup(token: str, hint: str | None):
    """An access token (a JWT we signed) or a refresh token, as (row, is_refresh)."""
    session = db_session()
    if hint != "refresh_token":
        claims = verify(token, ACCESS_TOKEN_TYPE)
        if claims:
            row = provider.find_token(session, jti=claims.get("jti"))
            if row:
                return TokenRecord(row, refresh=False)
    if hint != "access_token" and isinstance(token, str) and token.startswith("trr_"):
        row = provider.find_token(session, refresh_token=token)
        if row:
            return TokenRecord(row, refresh=True)
    return None


class TokenRecord:
    def __init__(self, row, refresh: bool) -> None:
        self.row, self.refresh = row, refresh

    def check_client(self, client: AppClient) -> bool:
        return self.row.app_id == client.app.id

    def is_expired(self) -> bool:
        return False  # token_active decides, together with revocation and suspension

    def is_revoked(self) -> bool:
        return not provider.token_active(db_session(), self.row, self.refresh)


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def query_token(self, token_string, token_type_hint):
        return lookup(token_string, token_type_hint)

    def check_permission(self, token, client, request) -> bool:
        # An app learns about its own tokens only; another app's token is "not active".
        return token.check_client(client)

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        row = token.row
        answer = {"active": True, "client_id": self.server.query_client_id(row.app_id),
                  "scope": row.scope, "token_type": "refresh_token" if token.refresh
                  else "Bearer", "iss": issuer(), "jti": row.jti,
                  "exp": int((row.refresh_expires_at if token.refresh
                              else row.access_expires_at).timestamp()),
                  "iat": int(row.created_at.timestamp())}
        if row.user_id is not None:
            app = db_session().get(OAuthApp, row.app_id)
            answer["sub"] = provider.subject_for(app, row.user_id)
        if row.organization_id is not None:
            session = db_session()
            from portal.models import Organization
            org = session.get(Organization, row.organization_id)
            answer["org"] = {"id": org.id, "slug": org.slug}
            if "roles" in row.scope.split():
                answer["roles"] = list(provider.roles_in(session, row.user_id, org.id))
        return answer


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_METHODS

    def query_token(self, token_string, token_type_hint):
        return lookup(token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request) -> None:
        provider.revoke_family(services().db, audit_context(), token.row.id)


class DeviceAuthorization(DeviceAuthorizationEndpoint):
    CLIENT_AUTH_METHODS = ALL_METHODS
    EXPIRES_IN = 600
    INTERVAL = 5

    def get_verification_uri(self) -> str:
        return issuer() + "/device"

    def generate_user_code(self) -> str:
        return device.new_user_code()

    def authenticate_client(self, request):
        client = super().authenticate_client(request)
        if not client.check_grant_type(apps.DEVICE_CODE):
            from authlib.oauth2.rfc6749.errors import UnauthorizedClientError
            raise UnauthorizedClientError("This app may not use the device grant.")
        if client.get_allowed_scope(request.payload.scope) is None:
            raise InvalidScopeError()
        return client

    def save_device_credential(self, client_id, scope, data) -> None:
        with services().db.transaction() as session:
            device.save(session, client_id, scope or "", data["device_code"],
                        data["user_code"], data["expires_in"], data["interval"])


class DeviceGrant(DeviceCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS

    def query_device_credential(self, device_code: str):
        if not isinstance(device_code, str) or len(device_code) > 200:
            return None
        row = device.find(db_session(), device_code)
        return device.Credential(row) if row else None

    def query_user_grant(self, user_code: str):
        credential = device.find_by_user_code(db_session(), user_code)
        if credential is None or credential.status == "pending":
            return None
        if credential.status != "approved":
            return None, False
        who = device.redeem(services().db, db_session(), credential)
        return (who, True) if who else (None, False)

    def should_slow_down(self, credential) -> bool:
        return device.polled_too_fast(services().db, credential.row.id)


class Issuer(IssuerParameter):
    def get_issuer(self) -> str:
        return issuer()


class TrellisAuthorizationServer(AuthorizationServer):
    def query_client_id(self, app_id: int) -> str:
        app = db_session().get(OAuthApp, app_id)
        return app.client_id if app else ""

    @hooked
    def create_authorization_response(self, request=None, grant_user=None, grant=None):
        """Authlib's, without validating the request a second time: the authorization
        view got ``grant`` from ``get_consent_grant``, which validated it (client, redirect
        URI, scopes, PKCE) in this same request, and nothing changed since."""
        if grant is None or not getattr(grant, "redirect_uri", None):
            return super().create_authorization_response(request, grant_user, grant)
        try:
            args = grant.create_authorization_response(grant.redirect_uri, grant_user)
            response = self.handle_response(*args)
        except OAuth2Error as error:
            error.state = grant.request.payload.state
            response = self.handle_error_response(grant.request, error)
        grant.execute_hook("after_authorization_response", response)
        return response


def init_app(app: Flask) -> TrellisAuthorizationServer:
    server = TrellisAuthorizationServer(query_client=query_client, save_token=save_token)
    server.init_app(app)
    server.register_token_generator("default", generate_token)
    server.register_grant(CodeGrant, [StrictPKCE(required=True)])
    server.register_grant(RefreshGrant)
    server.register_grant(ClientCredentials)
    server.register_grant(DeviceGrant)
    server.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT())
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_endpoint(DeviceAuthorization)
    server.register_extension(Issuer())
    app.extensions["trellis_oauth"] = server
    return server


def server() -> TrellisAuthorizationServer:
    return current_app.extensions["trellis_oauth"]


def api_caller(token: str):
    """The decision API's caller for an access token with the ``authz`` scope: the app,
    limited to its organizations. Checked against its row at every call, so a revoked token
    or a disabled app stops at once."""
    from portal.services.api_clients import Caller
    claims = verify(token, ACCESS_TOKEN_TYPE)
    if not claims or claims.get("aud") != issuer() or \
            "authz" not in str(claims.get("scope", "")).split():
        return None
    session = db_session()
    row = provider.find_token(session, jti=claims.get("jti"))
    if row is None or not provider.token_active(session, row):
        return None
    app = session.get(OAuthApp, row.app_id)
    return Caller(-app.id, frozenset(app.organizations or ()))


def scoped_app(token: str, scope: str) -> str | None:
    """The client id of an app calling with a live client-credentials access token that
    carries ``scope``; a token issued to a user never qualifies."""
    claims = verify(token, ACCESS_TOKEN_TYPE)
    if not claims or claims.get("aud") != issuer() or \
            scope not in str(claims.get("scope", "")).split():
        return None
    session = db_session()
    row = provider.find_token(session, jti=claims.get("jti"))
    if row is None or row.user_id is not None or not provider.token_active(session, row):
        return None
    app = session.get(OAuthApp, row.app_id)
    return app.client_id if app else None
