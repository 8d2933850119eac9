"""A real SMTP server on a loopback port (aiosmtpd), keeping what it receives.

It can be stopped and started again on the same port, so a test can show that mail sent
during an outage waits in the outbox and goes out once the server is back.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from tests.peers.process import free_port

LINK = re.compile(r"https?://\S+")


class _Keep:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        with self.box.lock:
            self.box.messages.append(message)
        return "250 Message accepted for delivery"


class SmtpServer:
    """``security``: ``none``, ``starttls`` (required before MAIL) or ``tls`` (implicit), with
    a certificate from a CA made for the test (``tls_folder``). ``credentials`` makes the
    server require AUTH with that user and password."""

    def __init__(self, security: str = "none", tls_folder=None,
                 credentials: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self.controller: Controller | None = None
        self.security = security
        self.credentials = credentials
        self.ca_file = None
        self.context = None
        if security != "none":
            import ssl

            from tests.peers.slapd import make_tls
            files = make_tls(tls_folder, "127.0.0.1")
            self.ca_file = tls_folder / "ca.pem"
            self.ca_file.write_text(files.ca_pem)
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(files.cert_file, files.key_file)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword
        ok = isinstance(auth_data, LoginPassword) and self.credentials == (
            auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=ok, handled=False)  # False: the server answers 535

    def start(self) -> SmtpServer:
        options: dict = {}
        if self.security == "starttls":
            options.update(tls_context=self.context, require_starttls=True)
        elif self.security == "tls":
            # aiosmtpd sees only its own STARTTLS, not a TLS listener: AUTH is safe here anyway
            options.update(ssl_context=self.context, auth_require_tls=False)
        if self.credentials:
            options.update(authenticator=self._authenticate, auth_required=True)
        self.controller = Controller(_Keep(self), hostname="127.0.0.1", port=self.port,
                                     **options)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def settings(self) -> dict:
        """The app's settings that send to this server (plain SMTP: loopback only)."""
        settings = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": self.port,
                    "SMTP_SECURITY": self.security, "SMTP_TIMEOUT": 5,
                    "MAIL_FROM": "Trellis <no-reply@trellis.test>"}
        if self.ca_file:
            settings["SMTP_CA_FILE"] = str(self.ca_file)
        if self.credentials:
            settings["SMTP_USER"], settings["SMTP_PASSWORD"] = self.credentials
        return settings

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]

    def wait_for(self, address: str, count: int = 1, timeout: float = 10) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no mail for {address} within {timeout}s; got "
                             f"{[str(m['To']) for m in self.messages]}")


def text_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def links_in(message: EmailMessage) -> list[str]:
    return LINK.findall(text_of(message))


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()
