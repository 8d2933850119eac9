"""openid-client (npm), a relying party written by someone else, driven step by step: it
validates Trellis's discovery, ID tokens, iss parameter and PKCE with its own code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent / "rp"
MISSING = ("openid-client is not installed: run `make test` (or `cd tests/peers/rp && npm ci`)")


class NodeRelyingParty:
    def __init__(self, issuer: str, client_id: str, client_secret: str | None = None) -> None:
        if not (FOLDER / "node_modules" / "openid-client").is_dir():
            pytest.fail(MISSING, pytrace=False)
        self.base = {"issuer": issuer, "client_id": client_id,
                     "client_secret": client_secret}

    def run(self, step: str, **values) -> dict:
        done = subprocess.run(["node", "rp.mjs", step, json.dumps({**self.base, **values})],
                              cwd=FOLDER, capture_output=True, text=True, timeout=30,
                              check=False)
        lines = done.stdout.strip().splitlines()
        assert lines, f"openid-client printed nothing: {done.stderr[-800:]}"
        return json.loads(lines[-1])
