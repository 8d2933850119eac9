"""Starts node ``oidc-provider`` (tests/peers/oidc/op.mjs) on a free loopback port."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

HERE = Path(__file__).resolve().parent / "oidc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OidcProviderPeer:
    def __init__(self, folder: Path, interactive: bool = False) -> None:
        if not (HERE / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("tests/peers/oidc/node_modules is missing: run `make test`, "
                               "which installs it with npm ci")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.log_path = folder / "oidc-provider.log"
        env = {**os.environ, "OP_PORT": str(self.port), "OP_ADMIN_TOKEN": self.token,
               "OP_INTERACTIVE": "1" if interactive else "0"}
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(["node", str(HERE / "op.mjs")], env=env, cwd=HERE,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.issuer}/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log_path.read_text()}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"oidc-provider not ready in {timeout}s: {self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()

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
