"""A real syslog daemon: Debian's rsyslogd in the foreground, receiving RFC 5424 messages
over TCP (imtcp, octet-counted framing) on a loopback port and writing each one as a line
``APP-NAME MSGID STRUCTURED-DATA MSG`` to a file the test reads."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.process import Peer, free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
CONF = """global(workDirectory="{folder}" maxMessageSize="64k"{tls_global})
module(load="imtcp"{tls_module})
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="trellis" type="string"
         string="%app-name% %msgid% %structured-data% %msg%\\n")
action(type="omfile" file="{output}" template="trellis")
"""


class Rsyslog:
    def __init__(self, folder: Path, tls: bool = False) -> None:
        """``tls``: imtcp over GnuTLS with a certificate for 127.0.0.1 from a CA made for the
        test (``ca_file``)."""
        self.folder = folder
        self.port = free_port()
        self.output = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.ca_file: Path | None = None
        tls_global = tls_module = ""
        if tls:
            from tests.peers.slapd import make_tls
            files = make_tls(folder, "127.0.0.1")
            self.ca_file = folder / "ca.pem"
            self.ca_file.write_text(files.ca_pem)
            tls_global = (f' defaultNetstreamDriver="gtls"'
                          f' defaultNetstreamDriverCAFile="{self.ca_file}"'
                          f' defaultNetstreamDriverCertFile="{files.cert_file}"'
                          f' defaultNetstreamDriverKeyFile="{files.key_file}"')
            tls_module = ' streamDriver.name="gtls" streamDriver.mode="1"' \
                ' streamDriver.authMode="anon"'
        self.conf.write_text(CONF.format(folder=folder, port=self.port, output=self.output,
                                         tls_global=tls_global, tls_module=tls_module))
        self.peer: Peer | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Rsyslog:
        self.peer = Peer([RSYSLOGD, "-n", "-f", str(self.conf), "-i",
                          str(self.folder / "rsyslogd.pid")], env=dict(os.environ),
                         log_path=self.folder / "rsyslogd.log", ready=self._listening)
        return self

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines() if self.output.exists() else []

    def wait_for(self, count: int, timeout: float = 15) -> list[str]:
        """At least ``count`` lines (rsyslog writes asynchronously from its queue)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"rsyslog wrote {len(self.lines())} of {count} lines")


@pytest.fixture
def rsyslog(tmp_path) -> Iterator[Rsyslog]:
    folder = tmp_path / "rsyslog"
    folder.mkdir()
    daemon = Rsyslog(folder).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def rsyslog_tls(tmp_path) -> Iterator[Rsyslog]:
    folder = tmp_path / "rsyslog-tls"
    folder.mkdir()
    daemon = Rsyslog(folder, tls=True).start()
    yield daemon
    daemon.stop()
