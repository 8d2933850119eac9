"""Calls to identity providers over HTTPS: the certificate and host name are checked, kept
connections are reused, and one the server dropped meanwhile is replaced without an error."""

from __future__ import annotations

import json
import ssl
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation import http
from federation.errors import FederationError


def _certificate(folder) -> tuple[str, str]:
    """A self-signed certificate for the name ``localhost`` only (not 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Trellis test IdP")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "idp.pem", folder / "idp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        self.server.peers.append(self.client_address)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def https_idp(tmp_path):
    cert_file, key_file = _certificate(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.peers, server.close_after_answer = [], False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.cert_file = cert_file
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def trusting(https_idp, monkeypatch):
    """Trellis trusts the test IdP's certificate, as it would a public CA's."""
    monkeypatch.setattr(http, "TLS", ssl.create_default_context(cafile=https_idp.cert_file))
    return https_idp


def _url(server, host="localhost", path="/.well-known/openid-configuration"):
    return f"https://{host}:{server.server_address[1]}{path}"


def test_an_untrusted_certificate_is_refused(https_idp):
    with pytest.raises(FederationError) as caught:
        http.fetch_json(_url(https_idp), what="discovery document")
    assert caught.value.code == "idp_unreachable" and caught.value.status == 502
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.detail
    assert https_idp.peers == []  # no request was sent


def test_a_certificate_for_another_name_is_refused(trusting):
    with pytest.raises(FederationError) as caught:
        http.fetch_json(_url(trusting, host="127.0.0.1"), what="discovery document")
    assert caught.value.code == "idp_unreachable"
    assert "127.0.0.1" in caught.value.detail and trusting.peers == []


def test_calls_to_a_trusted_provider_share_one_connection(trusting):
    first = http.fetch_json(_url(trusting), what="discovery document")
    second = http.fetch_json(_url(trusting, path="/jwks?x=1"), what="JWKS")
    assert (first["path"], second["path"]) == ("/.well-known/openid-configuration",
                                               "/jwks?x=1")
    assert len({port for _host, port in trusting.peers}) == 1


def test_a_connection_the_provider_closed_is_replaced(trusting):
    trusting.close_after_answer = True
    for _ in range(3):
        assert http.fetch_json(_url(trusting), what="discovery document")
    assert len({port for _host, port in trusting.peers}) == 3
