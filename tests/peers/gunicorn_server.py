"""Trellis served by gunicorn on a free loopback port: threaded workers with keep-alive by
default, or ``worker_class="sync"`` (one request at a time, the connection closed after each)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.peers.oidc_provider import _answers
from tests.peers.process import Peer, free_port


class GunicornServer:
    def __init__(self, folder: Path, environment: dict[str, str], workers: int = 1,
                 threads: int = 4, worker_class: str = "gthread",
                 app: str = "portal:create_app()", pythonpath: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        gunicorn = Path(sys.executable).with_name("gunicorn")
        if worker_class == "sync":
            threads = 1  # gunicorn runs a sync worker with threads as gthread
        self.peer = Peer(
            [str(gunicorn), "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
             "--worker-class", worker_class, "--threads", str(threads), "--keep-alive", "30",
             *(["--pythonpath", str(pythonpath)] if pythonpath else []), app],
            env={**os.environ, **environment}, log_path=folder / "gunicorn.log",
            ready=lambda: _answers(f"{self.url}/healthz"))
        self.process = self.peer.process

    def stop(self) -> None:
        self.peer.stop()
