"""A real browser (Debian's Chromium through Playwright) against the app on a loopback port.

One browser per test session, a fresh context per page, every console message recorded: a
page that breaks the Content Security Policy fails the test that opened it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--disable-quic"]
SCREENSHOTS = ARTIFACTS / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
TIMEOUT_MS = 10_000  # a hung page fails in seconds, not after 30


@pytest.fixture(scope="session")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Browser tests skipped: Chromium is not installed at {CHROMIUM} "
                    "(`make test` installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class LiveServer:
    """The WSGI app on a free loopback port, in a daemon thread."""

    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})  # quick shutdown
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serve():
    """``serve(app)`` starts a server for this test; it is shut down after the test."""
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


def csp_violations(messages: list[str]) -> list[str]:
    return [text for text in messages if "Content Security Policy" in text]


class Browsing:
    """Fresh contexts for one test; all their console messages land in ``console``."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.contexts: list = []
        self.console: list[str] = []

    def page(self, **options):
        options.setdefault("viewport", DESKTOP)
        context = self.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        context.on("console", lambda message: self.console.append(message.text))
        return context.new_page()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsing(browser):
    session = Browsing(browser)
    yield session
    session.close()
    violations = csp_violations(session.console)
    if violations:
        pytest.fail(f"Content Security Policy violations: {violations}")


@pytest.fixture
def page(browsing):
    """A page in a fresh desktop-sized context."""
    return browsing.page()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
