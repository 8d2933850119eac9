"""Request objects (OpenID Connect Core 6.1): the authorization request's parameters in a
JWT the app signed with a key of its registered JWK set.

The object is checked (RS256 or ES256 only, never ``alg: none``; the app's keys; ``exp``
required; ``iss`` and ``client_id`` the app; ``aud`` Trellis) and its claims then replace
the query parameters of the same name for the rest of the request, as if the app had sent
them in the URL. The query must carry ``client_id``; a ``response_type`` in the query
must agree with the object's. Because the browser goes through sign-in with the signed
object intact, a ``prompt=login`` or ``max_age`` inside it is satisfied by a marker Trellis signs
(``reauth``): the time the user was sent to sign in again.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from werkzeug.datastructures import CombinedMultiDict, ImmutableMultiDict

ALGORITHMS = ["RS256", "ES256"]
MAX_LENGTH = 16_384
LEEWAY_SECONDS = 30
# Claims about the JWT itself, not authorization parameters.
JWT_CLAIMS = {"iss", "aud", "exp", "iat", "nbf", "jti", "sub"}
REAUTH_SALT = "trellis-provider-reauth"


class Refused(Exception):
    """The object cannot be used: ``check`` names the failed check (audit), ``message`` is
    the error description sent to the app."""

    def __init__(self, check: str, message: str, error: str = "invalid_request_object"):
        super().__init__(message)
        self.check, self.message, self.error = check, message, error


def decode(raw: str, client_id: str, jwks: dict[str, Any] | None, issuer: str,
           response_type: str | None) -> dict[str, Any]:
    """The verified claims of the app's request object, or ``Refused``."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_LENGTH:
        raise Refused("malformed", "The request object is missing or too large.")
    if raw.count(".") != 2:
        raise Refused("malformed", "The request object must be a signed JWT (JWS).")
    try:
        header = _header(raw)
    except ValueError:
        raise Refused("malformed", "The request object is not a JWT.") from None
    if str(header.get("alg", "")).lower() == "none":
        raise Refused("unsigned", "Unsigned request objects (alg none) are refused.")
    if header.get("alg") not in ALGORITHMS:
        raise Refused("algorithm", "Request objects must be signed with RS256 or ES256.")
    if not jwks or not jwks.get("keys"):
        raise Refused("no_keys", "The app has no registered JWK set to check request "
                                 "objects with.")
    try:
        decoded = jwt.decode(raw, KeySet.import_key_set(jwks), algorithms=ALGORITHMS)
    except (JoseError, ValueError):
        raise Refused("bad_signature", "The request object's signature does not match "
                                       "the app's registered keys.") from None
    claims = dict(decoded.claims)
    try:
        jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, exp={"essential": True}
                              ).validate(claims)
    except ExpiredTokenError:
        raise Refused("expired", "The request object has expired.") from None
    except JoseError as exc:
        raise Refused("claims", f"The request object's claims are not valid "
                                f"({exc.error}).") from None
    if claims.get("iss", client_id) != client_id or \
            claims.get("client_id", client_id) != client_id:
        raise Refused("client_id", "The request object belongs to another app.")
    audience = claims.get("aud", issuer)
    if issuer not in (audience if isinstance(audience, list) else [audience]):
        raise Refused("audience", "The request object is meant for another server.")
    if response_type and claims.get("response_type", response_type) != response_type:
        raise Refused("response_type", "response_type differs between the query and the "
                                       "request object.", error="invalid_request")
    if "request" in claims or "request_uri" in claims:
        raise Refused("nested", "A request object may not hold request or request_uri.")
    return claims


def _header(raw: str) -> dict[str, Any]:
    import base64
    part = raw.split(".", 1)[0]
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, TypeError):
        raise ValueError("bad header") from None
    if not isinstance(value, dict):
        raise ValueError("bad header")
    return value


def as_params(claims: dict[str, Any]) -> dict[str, str]:
    """The object's authorization parameters as the strings a query would carry."""
    params: dict[str, str] = {}
    for key, value in claims.items():
        if key in JWT_CLAIMS or value is None:
            continue
        if isinstance(value, (dict, list)):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        params[key] = text
    return params


def apply(claims: dict[str, Any], keep_query: bool = True) -> None:
    """Let the object's parameters replace the query's for the rest of this request (the
    views and Authlib read ``request.args`` and ``request.values``). The original query,
    with the signed object (or the pushed request's ``request_uri``), is kept in
    ``g.signed_args`` for the sign-in round trip. A pushed request (``keep_query=False``)
    uses its own parameters only (RFC 9126 section 4), plus the query's ``client_id``."""
    req = request._get_current_object()
    g.signed_args = req.args
    if keep_query:
        merged = {k: req.args.getlist(k) for k in req.args if k != "request"}
    else:
        merged = {"client_id": req.args.getlist("client_id")}
    for key, text in as_params(claims).items():
        merged[key] = [text]
    args = ImmutableMultiDict([(k, v) for k, values in merged.items() for v in values])
    req.args = args
    req.values = CombinedMultiDict([args, req.form])


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=REAUTH_SALT)


def reauth_marker() -> str:
    """Signed proof that Trellis sent the user to sign in again, now, for this object."""
    return _serializer().dumps(_object_digest())


def reauthenticated_since_marker(auth_time: float) -> bool:
    """True when the query carries our marker for this very object and the session's
    sign-in happened after the marker was made."""
    marker = (g.get("signed_args") or {}).get("reauth")
    if not marker:
        return False
    try:
        digest, made = _serializer().loads(marker, max_age=3600, return_timestamp=True)
    except BadSignature:
        return False
    return digest == _object_digest() and auth_time >= made.timestamp() - 1


def _object_digest() -> str:
    import hashlib
    signed = g.get("signed_args") or {}
    raw = signed.get("request") or signed.get("request_uri") or ""
    return hashlib.sha256(raw.encode()).hexdigest()

