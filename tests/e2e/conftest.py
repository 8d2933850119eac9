"""A real browser (Debian's Chromium through Playwright) against the app on a loopback port."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--disable-dev-shm-usage"]
SCREENSHOTS = ARTIFACTS / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip("Browser tests skipped: Debian's Chromium is not installed "
                    "(`make test` installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class LiveServer:
    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers: list[LiveServer] = []

    def start(app) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live(app, serve) -> LiveServer:
    return serve(app)


@pytest.fixture
def page(browser):
    """A fresh browser context per test; CSP violations are collected and must stay empty."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text
            and page.csp_violations.append(message.text))
    yield page
    assert page.csp_violations == [], page.csp_violations
    context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
