"""OpenID Connect relying party, hardened beyond the libraries' defaults.

Authorization code flow with PKCE S256 always; state and nonce single-use and bound to the
browser session by the caller; RFC 9207 ``iss`` checked; ID tokens verified against the
provider's JWKS with algorithms pinned per connection (never ``none``, never HMAC);
``iss``/``aud``/``azp``/``exp``/``iat``/``nbf``/``nonce`` checked; userinfo ``sub`` must match.
The "oauth2" preset covers providers without OIDC (GitHub-style): the identity then comes
from the user-info endpoint over TLS instead of a signed ID token.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from federation import http
from federation.errors import FederationError
from federation.identity import (
    AuthContext,
    ExternalIdentity,
    Redirect,
    RequestContext,
    canonical_email,
)

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                        "ES384", "ES512", "EdDSA"})
JWKS_REFRESH_SECONDS = 60  # at most one refetch per provider per minute on an unknown kid
PENDING_MAX_AGE = 600  # a sign-in must come back within ten minutes

DEFAULT_CLAIMS = {"email": "email", "email_verified": "email_verified",
                  "given_name": "given_name", "family_name": "family_name", "name": "name"}


@dataclass(frozen=True)
class OidcSettings:
    """A connection's settings as plain data (built by the portal from its database row)."""

    connection_id: int
    client_id: str
    client_secret: str
    issuer: str = ""
    preset: str = "oidc"  # "oidc" or "oauth2"
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    algorithms: tuple[str, ...] = ("RS256",)
    claims: dict[str, str] = field(default_factory=dict)
    group_claim: str = "groups"
    leeway_seconds: int = 60
    fetch_userinfo: bool = True
    allow_insecure_loopback: bool = False
    # Only for the "oauth2" preset, which has no discovery document:
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    userinfo_endpoint: str = ""
    subject_claim: str = "sub"
    emails_verified: bool = False  # oauth2 preset: the provider only returns verified emails

    def claim(self, name: str) -> str:
        return self.claims.get(name) or DEFAULT_CLAIMS[name]


def _fail(code: str, detail: str, message: str | None = None) -> FederationError:
    return FederationError(code, message or ("We could not sign you in through your "
                                             "organization's identity provider."), detail)


class OidcAdapter:
    """One per process: it keeps discovery documents and key sets between sign-ins."""

    def __init__(self, discovery_ttl: int = 3600, clock: Callable[[], float] = time.time) -> None:
        self.discovery_ttl = discovery_ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._metadata: dict[str, tuple[dict[str, Any], float]] = {}
        self._jwks: dict[str, tuple[KeySet, float]] = {}

    # -- the adapter interface ------------------------------------------------------------

    def begin(self, connection: OidcSettings, request: RequestContext) -> Redirect:
        meta = self.metadata(connection)
        # 32, 32 and 64 URL-safe characters straight from the OS (Authlib's generate_token
        # draws them one by one, which cost more than the rest of this method).
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        params = {"response_type": "code", "client_id": connection.client_id,
                  "redirect_uri": request.redirect_uri, "scope": " ".join(connection.scopes),
                  "state": state, "code_challenge": create_s256_code_challenge(verifier),
                  "code_challenge_method": "S256"}
        if connection.preset == "oidc":
            params["nonce"] = nonce
        if request.login_hint:
            params["login_hint"] = request.login_hint
        if request.force_authn:
            params["prompt"] = "login"
        pending = {"state": state, "nonce": nonce, "code_verifier": verifier,
                   "issuer": meta.get("issuer", ""), "connection_id": connection.connection_id,
                   "redirect_uri": request.redirect_uri, "created": self.clock()}
        endpoint = meta["authorization_endpoint"]
        separator = "&" if "?" in endpoint else "?"
        return Redirect(f"{endpoint}{separator}{urlencode(params)}", pending)

    def complete(self, connection: OidcSettings, callback: dict[str, str],
                 pending: dict[str, Any]) -> ExternalIdentity:
        self._check_callback(connection, callback, pending)
        meta = self.metadata(connection)
        tokens = self._redeem_code(connection, meta, callback["code"], pending)
        if connection.preset == "oauth2":
            claims = self._userinfo(connection, meta, tokens, expected_sub=None)
            return self._identity(connection, claims, issuer=meta["issuer"])
        claims = self._verify_id_token(connection, meta, tokens.get("id_token"), pending)
        if connection.fetch_userinfo and meta.get("userinfo_endpoint") and \
                tokens.get("access_token"):
            extra = self._userinfo(connection, meta, tokens, expected_sub=claims["sub"])
            claims = {**extra, **claims}  # the signed ID token wins over userinfo
        return self._identity(connection, claims, issuer=meta["issuer"])

    # -- steps ----------------------------------------------------------------------------

    def _check_callback(self, connection: OidcSettings, callback: dict[str, str],
                        pending: dict[str, Any]) -> None:
        if pending.get("connection_id") != connection.connection_id:
            raise _fail("connection_mismatch", "the pending sign-in belongs to another connection")
        if not secrets.compare_digest(str(callback.get("state", "")),
                                      str(pending.get("state", ""))):
            raise _fail("state_mismatch", "state does not match the pending sign-in")
        if self.clock() - float(pending.get("created", 0)) > PENDING_MAX_AGE:
            raise _fail("state_expired", "the sign-in took too long",
                        "Your sign-in took too long. Please start again.")
        if callback.get("error"):
            description = str(callback.get("error_description", ""))[:200]
            raise _fail("idp_error", f"provider error {callback['error']!r}: {description}",
                        "Your organization's identity provider did not complete the sign-in.")
        meta = self.metadata(connection)
        returned_iss = callback.get("iss")
        if returned_iss is not None and returned_iss != pending.get("issuer"):
            raise _fail("iss_mismatch", f"authorization response iss {returned_iss!r} is not "
                        f"{pending.get('issuer')!r} (mix-up)")
        if returned_iss is None and meta.get("authorization_response_iss_parameter_supported"):
            raise _fail("iss_missing", "the provider advertises RFC 9207 but sent no iss")
        if not callback.get("code"):
            raise _fail("code_missing", "no authorization code in the callback")

    def _redeem_code(self, connection: OidcSettings, meta: dict[str, Any], code: str,
                     pending: dict[str, Any]) -> dict[str, Any]:
        tokens = http.fetch_json(
            meta["token_endpoint"], method="POST", what="token endpoint",
            data={"grant_type": "authorization_code", "code": code,
                  "redirect_uri": pending["redirect_uri"],
                  "code_verifier": pending["code_verifier"]},
            auth=(connection.client_id, connection.client_secret),
            headers={"Accept": "application/json"}, ok_statuses=(200, 400, 401))
        if "error" in tokens:
            raise _fail("token_error", f"token endpoint: {tokens.get('error')!r} "
                        f"{str(tokens.get('error_description', ''))[:200]}")
        if not tokens.get("access_token") and not tokens.get("id_token"):
            raise _fail("token_error", "token response has neither access nor ID token")
        return tokens

    def _verify_id_token(self, connection: OidcSettings, meta: dict[str, Any],
                         id_token: str | None, pending: dict[str, Any]) -> dict[str, Any]:
        if not id_token:
            raise _fail("id_token_missing", "token response carries no id_token")
        header = _jose_header(id_token)
        alg = header.get("alg")
        allowed = [a for a in connection.algorithms if a in ASYMMETRIC]
        if alg not in allowed:
            raise _fail("id_token_alg", f"ID token alg {alg!r} is not one of {allowed}")
        key = self._signing_key(connection, meta, header.get("kid"), alg)
        try:
            token = jwt.decode(id_token, key, algorithms=[alg])
        except JoseError as exc:
            raise _fail("id_token_signature", f"ID token signature invalid: {exc!r}") from None
        claims = dict(token.claims)
        self._check_claims(connection, claims, pending)
        return claims

    def _check_claims(self, connection: OidcSettings, claims: dict[str, Any],
                      pending: dict[str, Any]) -> None:
        now, leeway = self.clock(), connection.leeway_seconds
        if claims.get("iss") != pending["issuer"]:
            raise _fail("id_token_iss", f"iss {claims.get('iss')!r} != {pending['issuer']!r}")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if connection.client_id not in audiences:
            raise _fail("id_token_aud", f"aud {audience!r} does not include our client id")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != connection.client_id:
            raise _fail("id_token_azp", f"azp {azp!r} is not our client id")
        for name in ("exp", "iat"):
            if not isinstance(claims.get(name), int | float):
                raise _fail(f"id_token_{name}", f"{name} missing or not a number")
        if claims["exp"] < now - leeway:
            raise _fail("id_token_expired", f"exp {claims['exp']} is in the past (now {now:.0f})")
        if claims["iat"] > now + leeway:
            raise _fail("id_token_iat", f"iat {claims['iat']} is in the future (now {now:.0f})")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + leeway:
            raise _fail("id_token_nbf", f"nbf {claims['nbf']} is in the future")
        if not secrets.compare_digest(str(claims.get("nonce", "")), str(pending["nonce"])):
            raise _fail("id_token_nonce", "nonce does not match the pending sign-in")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _fail("id_token_sub", "sub missing or empty")

    def _userinfo(self, connection: OidcSettings, meta: dict[str, Any],
                  tokens: dict[str, Any], expected_sub: str | None) -> dict[str, Any]:
        endpoint = meta.get("userinfo_endpoint")
        if not endpoint or not tokens.get("access_token"):
            raise _fail("userinfo_missing", "no userinfo endpoint or access token")
        info = http.fetch_json(endpoint, what="userinfo endpoint",
                               headers={"Authorization": f"Bearer {tokens['access_token']}",
                                        "Accept": "application/json"})
        if connection.preset == "oauth2":
            subject = info.get(connection.subject_claim)
            if subject in (None, ""):
                raise _fail("userinfo_sub", f"userinfo has no {connection.subject_claim!r}")
            return {**info, "sub": str(subject)}
        if info.get("sub") != expected_sub:
            raise _fail("userinfo_sub", f"userinfo sub {info.get('sub')!r} differs from the "
                        f"ID token's {expected_sub!r}")
        return info

    def _identity(self, connection: OidcSettings, claims: dict[str, Any],
                  issuer: str) -> ExternalIdentity:
        email = claims.get(connection.claim("email"))
        verified = claims.get(connection.claim("email_verified"))
        if connection.preset == "oauth2":
            verified = connection.emails_verified
        groups = claims.get(connection.group_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        amr = claims.get("amr") or []
        auth_time = claims.get("auth_time")
        return ExternalIdentity(
            connection_id=connection.connection_id, issuer=issuer, subject=str(claims["sub"]),
            email=canonical_email(str(email)) if email else None,
            email_verified=verified is True or verified == "true",
            given_name=str(claims.get(connection.claim("given_name")) or "")[:100],
            family_name=str(claims.get(connection.claim("family_name")) or "")[:100],
            display_name=str(claims.get(connection.claim("name")) or "")[:200],
            groups=tuple(str(g) for g in groups if isinstance(g, str | int))[:200],
            claims=claims,
            auth=AuthContext(
                amr=tuple(str(a) for a in amr) if isinstance(amr, list) else (),
                acr=str(claims["acr"]) if claims.get("acr") is not None else None,
                auth_time=(datetime.fromtimestamp(auth_time, UTC)
                           if isinstance(auth_time, int | float) else None)))

    # -- discovery and keys ---------------------------------------------------------------

    def metadata(self, connection: OidcSettings) -> dict[str, Any]:
        if connection.preset == "oauth2":
            return self._static_metadata(connection)
        issuer = http.check_url(connection.issuer, what="issuer",
                                allow_insecure_loopback=connection.allow_insecure_loopback)
        with self._lock:
            cached = self._metadata.get(issuer)
        if cached and self.clock() - cached[1] < self.discovery_ttl:
            return cached[0]
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = http.fetch_json(url, what="discovery document")
        if document.get("issuer") != issuer:
            raise _fail("discovery_issuer", f"discovery issuer {document.get('issuer')!r} is "
                        f"not the configured {issuer!r}")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            http.check_url(str(document.get(name, "")), what=name,
                           allow_insecure_loopback=connection.allow_insecure_loopback)
        if document.get("userinfo_endpoint"):
            http.check_url(document["userinfo_endpoint"], what="userinfo_endpoint",
                           allow_insecure_loopback=connection.allow_insecure_loopback)
        with self._lock:
            self._metadata[issuer] = (document, self.clock())
        return document

    def _static_metadata(self, connection: OidcSettings) -> dict[str, Any]:
        for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
            http.check_url(getattr(connection, name), what=name,
                           allow_insecure_loopback=connection.allow_insecure_loopback)
        return {"issuer": connection.issuer or connection.authorization_endpoint,
                "authorization_endpoint": connection.authorization_endpoint,
                "token_endpoint": connection.token_endpoint,
                "userinfo_endpoint": connection.userinfo_endpoint}

    def _signing_key(self, connection: OidcSettings, meta: dict[str, Any], kid: str | None,
                     alg: str):
        keys = self._key_set(meta, refresh=False)
        key = _pick_key(keys, kid, alg)
        if key is None:
            keys = self._key_set(meta, refresh=True)  # rotated keys: refetch, rate-limited
            key = _pick_key(keys, kid, alg)
        if key is None:
            raise _fail("id_token_kid", f"no key in the provider's JWKS for kid {kid!r}")
        return key

    def _key_set(self, meta: dict[str, Any], refresh: bool) -> KeySet:
        uri = meta["jwks_uri"]
        with self._lock:
            cached = self._jwks.get(uri)
        fresh_enough = cached and self.clock() - cached[1] < JWKS_REFRESH_SECONDS
        if cached and (not refresh or fresh_enough):
            return cached[0]
        document = http.fetch_json(uri, what="JWKS")
        public = [k for k in document.get("keys", [])
                  if isinstance(k, dict) and k.get("kty") != "oct"]  # never HMAC secrets
        try:
            keys = KeySet.import_key_set({"keys": public})
        except (JoseError, ValueError, TypeError) as exc:
            raise _fail("jwks_invalid", f"JWKS could not be read: {exc!r}") from None
        with self._lock:
            self._jwks[uri] = (keys, self.clock())
        return keys


def _pick_key(keys: KeySet, kid: str | None, alg: str):
    family = {"R": "RSA", "P": "RSA", "E": "EC"}.get(alg[0], "OKP")
    candidates = [k for k in keys.keys if k.key_type == family
                  and (kid is None or k.kid == kid)
                  and k.get("use", "sig") == "sig"]
    if kid is None and len(candidates) != 1:
        return None  # without a kid only an unambiguous key is acceptable
    return candidates[0] if candidates else None


def _jose_header(token: str) -> dict[str, Any]:
    try:
        segment = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, IndexError):
        raise _fail("id_token_malformed", "ID token is not a compact JWS") from None
    if not isinstance(header, dict):
        raise _fail("id_token_malformed", "ID token header is not an object")
    return header
