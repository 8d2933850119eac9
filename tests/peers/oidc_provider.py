"""Starts node ``oidc-provider`` (tests/peers/oidc/op.mjs) on a free loopback port.

One provider serves a whole test run: tests register their own clients (with their own
redirect URIs and secrets) and accounts while it runs, through a small admin API on the same
loopback server guarded by a random bearer token. Automatic sign-in picks the account whose
email equals the authorization request's ``login_hint`` and grants consent; the interactive
variant shows the stock login and consent forms instead (browser tests).

Misbehaviour, for tests that Trellis refuses a bad provider. Select it

* per client: ``register_client(..., misbehave=["expired"])``,
* per account: ``put_account("eve@acme.test", misbehave=["alg-none"])`` (so the test picks it
  by who signs in, with no change to Trellis's request),
* per authorization request: the extra query parameter ``misbehave=expired[,mode...]``
  (``authorize(url, prefix, misbehave="expired")`` adds it),
* or change a client or account later with ``set_misbehaviour(...)``.

A sign-in gets the union of the three. ``MISBEHAVIOURS`` lists the modes; at most one of the
signing modes (``alg-none``, ``hs256-pubkey``, ``foreign-key``, ``unknown-kid``) at a time.
``slow-token`` takes a number of seconds (``slow-token=5``; default 3).

Discovery misbehaviour is served by pseudo-issuers, ``rogue_issuer("not-json")`` =
``<issuer>/_rogue/not-json``: only their discovery document exists (its endpoints point at the
real provider). ``DISCOVERY_MISBEHAVIOURS`` lists them; ``slow-discovery=N`` (seconds, default
3) and ``huge-discovery=N`` (MB, default 50) take a number.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlencode, urljoin

import pytest
import requests

from tests.peers.process import Peer, free_port

HERE = Path(__file__).resolve().parent / "oidc"

MISBEHAVIOURS = {
    "wrong-iss": "ID token iss is another issuer (https://wrong-issuer.example)",
    "wrong-aud": "ID token aud is another client (some-other-client)",
    "expired": "ID token exp an hour in the past",
    "future-iat": "ID token iat an hour in the future",
    "alg-none": "ID token unsigned: header alg none, empty signature",
    "hs256-pubkey": "ID token HS256 with the provider's RSA public key (SPKI PEM) as secret",
    "foreign-key": "ID token RS256 by a key not in the JWKS, under the published kid",
    "unknown-kid": "ID token RS256 by the published key under a kid not in the JWKS",
    "nonce-mismatch": "ID token nonce is not the one sent",
    "missing-sub": "ID token has no sub",
    "other-client": "ID token for another client: aud and azp are some-other-client",
    "azp-other": "ID token aud is [this client, some-other-client], azp the other",
    "userinfo-sub": "userinfo sub differs from the ID token's",
    "mix-up": "authorization response iss parameter is https://wrong-issuer.example",
    "slow-token": "token endpoint answers after N seconds (slow-token=N, default 3)",
}
DISCOVERY_MISBEHAVIOURS = {
    "slow-discovery": "discovery answers after N seconds (slow-discovery=N, default 3)",
    "not-json": "discovery is 200 application/json with an HTML body",
    "huge-discovery": "discovery is N MB of JSON streamed without a length (default 50)",
    "discovery-wrong-issuer": "discovery issuer is not the URL it came from",
}
WRONG_ISSUER = "https://wrong-issuer.example"
OTHER_CLIENT = "some-other-client"
MISSING_MODULES = ("tests/peers/oidc/node_modules is missing: run `make test` (or `make setup`), "
                   "which installs it with npm ci")


class OidcProviderPeer:
    """A running provider. ``clients`` and ``accounts`` (dicts as for ``register_client`` and
    ``put_account``) are loaded at start from a JSON config file; ``default_account`` signs in
    when a request has no login_hint."""

    def __init__(self, folder: Path, interactive: bool = False, *,
                 clients: Iterable[dict] = (), accounts: Iterable[dict] = (),
                 default_account: str | None = None, timeout: float = 15) -> None:
        if not (HERE / "node_modules" / "oidc-provider").exists():
            raise RuntimeError(MISSING_MODULES)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.log_path = folder / "oidc-provider.log"
        config = folder / "oidc-provider.json"
        config.write_text(json.dumps({
            "clients": list(clients), "accounts": list(accounts),
            "default_account": default_account or ""}))
        env = {**os.environ, "OP_PORT": str(self.port), "OP_ADMIN_TOKEN": self.token,
               "OP_INTERACTIVE": "1" if interactive else "0", "OP_CONFIG": str(config)}
        discovery = f"{self.issuer}/.well-known/openid-configuration"
        self.peer = Peer(["node", str(HERE / "op.mjs")], env=env, cwd=HERE,
                         log_path=self.log_path, ready=lambda: _answers(discovery),
                         timeout=timeout)
        self.process = self.peer.process

    def stop(self) -> None:
        self.peer.stop()

    def _admin(self, path: str, body: dict) -> dict:
        response = requests.post(f"{self.issuer}/_test/{path}", json=body, timeout=5,
                                 headers={"Authorization": f"Bearer {self.token}"})
        if response.status_code != 200:
            raise ValueError(f"oidc-provider refused {path}: {response.text}")
        return response.json()

    def register_client(self, *redirect_uris: str, client_id: str | None = None,
                        client_secret: str | None = None, misbehave: Iterable[str] = (),
                        **metadata) -> tuple[str, str]:
        """Create (or replace, for a known ``client_id``) a confidential client using
        client_secret_basic; returns (client_id, client_secret). Without them both are random.
        ``metadata`` is any other client metadata (e.g. ``token_endpoint_auth_method``)."""
        body = {"redirect_uris": list(redirect_uris), "misbehave": list(misbehave), **metadata}
        if client_id:
            body["client_id"] = client_id
        if client_secret:
            body["client_secret"] = client_secret
        created = self._admin("clients", body)
        return created["client_id"], created.get("client_secret", "")

    def put_account(self, login: str, *, misbehave: Iterable[str] = (), **claims) -> dict:
        """Create or replace the account that signs in for ``login_hint=login``. Its claims
        default to ``email=login`` (verified) and a random ``sub`` kept across updates; pass
        e.g. ``name``, ``given_name``, ``family_name``, ``groups``, ``email_verified=False``,
        ``amr=["pwd", "otp"]``, ``acr="..."`` or ``sub``. Returns the claims."""
        return self._admin("accounts", {"email": login, "claims": claims,
                                        "misbehave": list(misbehave)})

    def set_misbehaviour(self, *modes: str, client_id: str | None = None,
                         account: str | None = None) -> None:
        """Replace the misbehaviour of one client or account (no modes: behave again)."""
        if bool(client_id) == bool(account):
            raise ValueError("name exactly one of client_id and account")
        target = {"client_id": client_id} if client_id else {"account": account}
        self._admin("misbehave", {**target, "misbehave": list(modes)})

    def rogue_issuer(self, mode: str) -> str:
        """An issuer URL whose discovery document misbehaves (DISCOVERY_MISBEHAVIOURS)."""
        return f"{self.issuer}/_rogue/{mode}"

    def discovery(self) -> dict:
        return requests.get(f"{self.issuer}/.well-known/openid-configuration",
                            timeout=5).json()

    def jwks(self) -> dict:
        return requests.get(f"{self.issuer}/jwks", timeout=5).json()

    def authorize(self, url: str, redirect_prefix: str, *,
                  misbehave: str | Iterable[str] | None = None) -> str:
        """Play the browser at the provider: follow redirects until it sends us back to
        ``redirect_prefix``; returns that URL. ``misbehave`` is added to the request."""
        if misbehave:
            modes = misbehave if isinstance(misbehave, str) else ",".join(misbehave)
            url += ("&" if "?" in url else "?") + urlencode({"misbehave": modes})
        browser = requests.Session()
        for _ in range(10):
            if url.startswith(redirect_prefix):
                return url
            response = browser.get(url, allow_redirects=False, timeout=5)
            location = response.headers.get("Location")
            if response.status_code not in (302, 303) or not location:
                raise AssertionError(f"provider stopped at {url}: {response.status_code} "
                                     f"{response.text[:300]}")
            url = urljoin(url, location)
        raise AssertionError("too many redirects at the provider")


def start_peer(folder: Path, **options) -> OidcProviderPeer:
    """``OidcProviderPeer`` for fixtures: a missing npm install fails the test with the fix."""
    try:
        return OidcProviderPeer(folder, **options)
    except RuntimeError as error:
        if str(error) == MISSING_MODULES:
            pytest.fail(MISSING_MODULES, pytrace=False)
        raise


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory):
    peer = start_peer(tmp_path_factory.mktemp("oidc-provider"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def interactive_oidc_provider(tmp_path_factory):
    """The same provider with its own login and consent pages, for browser tests."""
    peer = start_peer(tmp_path_factory.mktemp("oidc-provider-ui"), interactive=True)
    yield peer
    peer.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
