"""An OpenID Provider that misbehaves on purpose, one way per issuer path.

``http://127.0.0.1:<port>/<mode>`` is an issuer whose discovery, authorization, token,
userinfo and JWKS endpoints behave correctly except for ``mode``. Built on joserfc so the
tokens are real JWS, just wrong in the one way the mode names. ``good`` behaves correctly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

TOKEN_MODES = ("good", "wrong-iss", "wrong-aud", "expired", "future-iat", "alg-none",
               "hs256-pubkey", "foreign-key", "unknown-kid", "nonce-mismatch", "missing-sub",
               "userinfo-sub", "other-client", "mix-up")
DISCOVERY_MODES = ("slow", "not-json", "huge", "wrong-issuer")
CLIENT_ID, CLIENT_SECRET = "trellis", "rogue-secret"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RogueProvider:
    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig",
                                                         "alg": "RS256"})
        self.foreign = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.codes: dict[str, dict] = {}
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def issuer(self, mode: str) -> str:
        return f"{self.base}/{mode}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def wsgi(self, environ, start_response):
        request = Request(environ)
        mode, _, endpoint = request.path.strip("/").partition("/")
        handler = {".well-known/openid-configuration": self.discovery, "auth": self.auth,
                   "token": self.token, "userinfo": self.userinfo, "jwks": self.jwks}.get(endpoint)
        response = handler(mode, request) if handler else Response(status=404)
        return response(environ, start_response)

    def discovery(self, mode, request):
        issuer = self.issuer(mode)
        if mode == "slow":
            time.sleep(2)
        if mode == "not-json":
            return Response("<html>maintenance</html>", mimetype="text/html")
        if mode == "huge":
            chunk = b" " * (1024 * 1024)
            return Response((chunk for _ in range(50)), mimetype="application/json")
        document = {"issuer": issuer if mode != "wrong-issuer" else "https://other.example",
                    "authorization_endpoint": f"{issuer}/auth",
                    "token_endpoint": f"{issuer}/token",
                    "userinfo_endpoint": f"{issuer}/userinfo", "jwks_uri": f"{issuer}/jwks",
                    "authorization_response_iss_parameter_supported": True,
                    "id_token_signing_alg_values_supported": ["RS256", "none", "HS256"]}
        return Response(json.dumps(document), mimetype="application/json")

    def auth(self, mode, request):
        code = secrets.token_urlsafe(16)
        self.codes[code] = dict(request.args)
        iss = "https://attacker.example" if mode == "mix-up" else self.issuer(mode)
        query = urlencode({"code": code, "state": request.args["state"], "iss": iss})
        return Response(status=302, headers={"Location": f"{request.args['redirect_uri']}?{query}"})

    def token(self, mode, request):
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        grant = self.codes.pop(request.form.get("code", ""), None)
        verifier = request.form.get("code_verifier", "")
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        if request.headers.get("Authorization") != expected or grant is None or \
                grant.get("code_challenge") != challenge:
            return Response(json.dumps({"error": "invalid_grant"}), status=400,
                            mimetype="application/json")
        body = {"access_token": f"at-{mode}", "token_type": "Bearer", "expires_in": 300,
                "id_token": self.id_token(mode, grant)}
        return Response(json.dumps(body), mimetype="application/json")

    def id_token(self, mode, grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer(mode), "sub": "rogue-user", "aud": CLIENT_ID,
                  "exp": now + 300, "iat": now, "nonce": grant.get("nonce"),
                  "email": "rogue@acme.test", "email_verified": True}
        changes = {"wrong-iss": {"iss": "https://other.example"}, "wrong-aud": {"aud": "x"},
                   "expired": {"exp": now - 3600, "iat": now - 4000},
                   "future-iat": {"iat": now + 3600},
                   "nonce-mismatch": {"nonce": "not-the-nonce"},
                   "other-client": {"aud": ["someone-else", CLIENT_ID], "azp": "someone-else"}}
        claims.update(changes.get(mode, {}))
        if mode == "missing-sub":
            del claims["sub"]
        if mode == "alg-none":
            header = b64(json.dumps({"alg": "none"}).encode())
            return f"{header}.{b64(json.dumps(claims).encode())}."
        if mode == "hs256-pubkey":
            header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
            payload = b64(json.dumps(claims).encode())
            secret = self.key.as_pem(private=False)
            signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256)
            return f"{header}.{payload}.{b64(signature.digest())}"
        key, kid = self.key, "k1"
        if mode == "foreign-key":
            key = self.foreign
        if mode == "unknown-kid":
            kid = "never-published"
        return jwt.encode({"alg": "RS256", "kid": kid}, claims, key)

    def userinfo(self, mode, request):
        if mode == "github":  # a plain OAuth2 provider: numeric id, no OIDC claims
            return Response(json.dumps({"id": 4242, "login": "octo", "name": "Octo Cat",
                                        "email": "octo@freelance.test"}),
                            mimetype="application/json")
        sub = "someone-else" if mode == "userinfo-sub" else "rogue-user"
        return Response(json.dumps({"sub": sub, "email": "rogue@acme.test"}),
                        mimetype="application/json")

    def jwks(self, mode, request):
        return Response(json.dumps({"keys": [self.key.as_dict(private=False)]}),
                        mimetype="application/json")


def rogue_provider_fixture():
    import pytest

    @pytest.fixture(scope="session")
    def rogue_provider():
        provider = RogueProvider()
        yield provider
        provider.stop()
    return rogue_provider


rogue_provider = rogue_provider_fixture()
