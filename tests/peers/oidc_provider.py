"""Starts node ``oidc-provider`` (tests/peers/oidc/op.mjs) on a free loopback port."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.peers.process import Peer, free_port

HERE = Path(__file__).resolve().parent / "oidc"


class OidcProviderPeer:
    def __init__(self, folder: Path, interactive: bool = False) -> None:
        if not (HERE / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("tests/peers/oidc/node_modules is missing: run `make test`, "
                               "which installs it with npm ci")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        env = {**os.environ, "OP_PORT": str(self.port), "OP_ADMIN_TOKEN": self.token,
               "OP_INTERACTIVE": "1" if interactive else "0"}
        discovery = f"{self.issuer}/.well-known/openid-configuration"
        self.peer = Peer(["node", str(HERE / "op.mjs")], env=env, cwd=HERE,
                         log_path=folder / "oidc-provider.log",
                         ready=lambda: _answers(discovery))

    def stop(self) -> None:
        self.peer.stop()

    def register_client(self, *redirect_uris: str) -> tuple[str, str]:
        """Dynamic client registration (RFC 7591): returns (client_id, client_secret)."""
        response = requests.post(f"{self.issuer}/reg", json={
            "redirect_uris": list(redirect_uris), "grant_types": ["authorization_code"],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "RS256"}, timeout=5)
        response.raise_for_status()
        body = response.json()
        return body["client_id"], body["client_secret"]

    def put_account(self, login: str, **claims) -> dict:
        """Create or update the account that signs in for ``login_hint=login``; its claims
        default to ``email=login`` (verified) and may override it."""
        response = requests.post(f"{self.issuer}/_test/accounts", timeout=5,
                                 headers={"Authorization": f"Bearer {self.token}"},
                                 json={"email": login, "claims": claims})
        response.raise_for_status()
        return response.json()

    def authorize(self, url: str, redirect_prefix: str) -> str:
        """Play the browser at the provider: follow redirects until it sends us back."""
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


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory):
    peer = OidcProviderPeer(tmp_path_factory.mktemp("oidc-provider"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def interactive_oidc_provider(tmp_path_factory):
    """The same provider with its own login and consent pages, for browser tests."""
    peer = OidcProviderPeer(tmp_path_factory.mktemp("oidc-provider-ui"), interactive=True)
    yield peer
    peer.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
