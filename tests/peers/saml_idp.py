"""A real SAML 2.0 identity provider (pysaml2) on a loopback port, for the SAML tests.

pysaml2 signs with Debian's ``xmlsec1``. The provider signs its Responses and Assertions with
its own key, answers AuthnRequests over the Redirect binding with an auto-submitting form to
the service provider's ACS (as a browser would see it), sends unsolicited responses, handles
single logout both ways, and publishes metadata (optionally with a second, next key, a
validUntil and a cacheDuration). Tests change who is signed in and how it behaves through the
object's attributes.
"""

from __future__ import annotations

import html
import re
import threading
from datetime import datetime
from pathlib import Path

import pytest
import xmlsec
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, config, server
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NameID
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from portal.crypto import self_signed_pair

XMLSEC = "/usr/bin/xmlsec1"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
PASSWORD_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
SHA1 = ("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1")
SHA256 = ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
          "http://www.w3.org/2001/04/xmlenc#sha256")
FORM_FIELD = re.compile(r'name="(SAMLResponse|RelayState)" value="([^"]*)"')

USERS = {
    "alice": {"uid": "alice", "mail": "alice@partner.example", "givenName": "Alice",
              "sn": "Anders", "displayName": "Alice Anders", "groups": ["partner-admins"]},
    "bob": {"uid": "bob", "mail": "bob@partner.example", "givenName": "Bob", "sn": "Berg",
            "displayName": "Bob Berg", "groups": ["staff"]},
    "mallory": {"uid": "mallory", "mail": "mallory@elsewhere.example", "givenName": "Mallory",
                "sn": "Moss", "displayName": "Mallory Moss", "groups": []},
}


def make_key_pair(folder: Path, name: str, common_name: str = "test-idp") -> tuple[Path, Path]:
    """A self-signed key pair as PEM files (pysaml2 takes paths)."""
    cert, key, _ = self_signed_pair(common_name, 365)
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_text(key)
    cert_path.write_text(cert)
    return key_path, cert_path


def cert_body(path: Path) -> str:
    """The base64 body of a PEM certificate, as metadata carries it."""
    lines = path.read_text().strip().splitlines()
    return "".join(line for line in lines if "-----" not in line)


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass


class SamlIdp:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys = [make_key_pair(folder, "idp-1")]
        self.next_key: tuple[Path, Path] | None = None
        self.sp_metadata: list[str] = []
        self.user = "alice"
        self.sign_response = True
        self.sign_assertion = True
        self.encrypt_assertion = False
        self.algorithms = SHA256
        self.valid_until: datetime | None = None
        self.cache_duration = ""
        self.metadata_broken = False
        self.metadata_fetches = 0
        self.metadata_requested = threading.Event()  # set at each fetch
        self.metadata_gate: threading.Event | None = None  # when set, answers wait for it
        self.requests: list[dict] = []
        self.logouts: list[dict] = []
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True,
                                  request_handler=QuietHandler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.entity_id = f"{self.base}/metadata"
        self._lock = threading.Lock()
        self._idp: server.Server | None = None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # -- control from the tests

    def trust_sp(self, metadata: str) -> None:
        with self._lock:
            self.sp_metadata = [metadata]
            self._idp = None

    def publish_next_key(self) -> None:
        """Step one of a rollover: the next certificate appears in the metadata."""
        self.next_key = make_key_pair(self.folder, f"idp-{len(self.keys) + 1}")

    def switch_to_next_key(self, keep_old: bool = True) -> None:
        """Step two: sign with the next key (the old one stays published if keep_old)."""
        assert self.next_key is not None
        with self._lock:
            self.keys = [self.next_key, *self.keys] if keep_old else [self.next_key]
            self.next_key = None
            self._idp = None

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    @property
    def signing_cert(self) -> str:
        return cert_body(self.keys[0][1])

    # -- pysaml2

    def idp(self) -> server.Server:
        with self._lock:
            if self._idp is None:
                self._idp = self._build()
            return self._idp

    def _build(self) -> server.Server:
        key_file, cert_file = self.keys[0]
        conf = config.IdPConfig()
        conf.load({
            "entityid": self.entity_id,
            "xmlsec_binary": XMLSEC,
            "key_file": str(key_file), "cert_file": str(cert_file),
            "encryption_keypairs": [{"key_file": str(key_file), "cert_file": str(cert_file)}],
            "metadata": {"inline": list(self.sp_metadata)},
            "service": {"idp": {
                "endpoints": {
                    "single_sign_on_service": [(f"{self.base}/sso/redirect",
                                                BINDING_HTTP_REDIRECT)],
                    "single_logout_service": [(f"{self.base}/slo/redirect",
                                               BINDING_HTTP_REDIRECT)],
                },
                "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                "policy": {"default": {"lifetime": {"minutes": 15},
                                       "name_form": NAME_FORMAT_URI}},
                "sign_response": True, "sign_assertion": True,
                "want_authn_requests_signed": False,
            }},
        })
        return server.Server(config=conf)

    def response_xml(self, destination: str, sp_entity_id: str, in_response_to: str | None,
                     user: str | None = None) -> str:
        """A signed Response for ``user`` as pysaml2 builds it (the browser's form value,
        base64-decoded)."""
        identity = dict(USERS[user or self.user])
        name_id = NameID(format=NAMEID_FORMAT_PERSISTENT, text=f"{identity['uid']}-persistent-id",
                         sp_name_qualifier=sp_entity_id, name_qualifier=self.entity_id)
        response = self.idp().create_authn_response(
            identity, in_response_to=in_response_to, destination=destination,
            sp_entity_id=sp_entity_id, name_id=name_id,
            authn={"class_ref": PASSWORD_CONTEXT, "authn_auth": self.entity_id},
            sign_response=self.sign_response, sign_assertion=self.sign_assertion,
            sign_alg=self.algorithms[0], digest_alg=self.algorithms[1])
        return self._encrypt(str(response)) if self.encrypt_assertion else str(response)

    def _encrypt(self, xml: str) -> str:
        """Encrypt the signed assertion to the SP's encryption certificate, as ADFS does.
        (pysaml2's own encryption re-serializes the signed assertion, which breaks its
        signature.) A Response signature would no longer match, so none is kept."""
        root = etree.fromstring(xml.encode())
        for signature in root.findall(f"{{{DS}}}Signature"):
            root.remove(signature)
        assertion = root.find(f"{{{SAML}}}Assertion")
        manager = xmlsec.KeysManager()
        manager.add_key(xmlsec.Key.from_memory(self._sp_encryption_cert(),
                                               xmlsec.constants.KeyDataFormatCertPem))
        template = xmlsec.template.encrypted_data_create(
            root, xmlsec.constants.TransformAes256Cbc, type=xmlsec.constants.TypeEncElement,
            ns="xenc")
        xmlsec.template.encrypted_data_ensure_cipher_value(template)
        key_info = xmlsec.template.encrypted_data_ensure_key_info(template, ns="ds")
        encrypted_key = xmlsec.template.add_encrypted_key(key_info,
                                                          xmlsec.constants.TransformRsaOaep)
        xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)
        context = xmlsec.EncryptionContext(manager)
        context.key = xmlsec.Key.generate(xmlsec.constants.KeyDataAes, 256,
                                          xmlsec.constants.KeyDataTypeSession)
        index = list(root).index(assertion)
        encrypted = context.encrypt_xml(template, assertion)
        wrapper = etree.Element(f"{{{SAML}}}EncryptedAssertion")
        root.remove(encrypted)
        wrapper.append(encrypted)
        root.insert(index, wrapper)
        return etree.tostring(root).decode()

    def _sp_encryption_cert(self) -> bytes:
        metadata = etree.fromstring(self.sp_metadata[0].encode())
        for descriptor in metadata.iter(f"{{{MD}}}KeyDescriptor"):
            if descriptor.get("use") == "encryption":
                body = descriptor.findtext(f".//{{{DS}}}X509Certificate").strip()
                return (f"-----BEGIN CERTIFICATE-----\n{body}\n"
                        f"-----END CERTIFICATE-----\n").encode()
        raise AssertionError("the SP metadata has no encryption certificate")

    # -- HTTP

    def wsgi(self, environ, start_response):
        request = Request(environ)
        handler = {"/metadata": self.metadata, "/sso/redirect": self.sso,
                   "/sso/unsolicited": self.unsolicited,
                   "/slo/redirect": self.slo}.get(request.path)
        response = handler(request) if handler else Response(status=404)
        return response(environ, start_response)

    def metadata(self, request: Request) -> Response:
        with self._lock:
            self.metadata_fetches += 1
        self.metadata_requested.set()
        if self.metadata_gate is not None:
            self.metadata_gate.wait(30)
        if self.metadata_broken:
            return Response("<html>maintenance</html>", status=503, mimetype="text/html")
        return Response(self.metadata_xml(), mimetype="application/samlmetadata+xml")

    def metadata_xml(self) -> str:
        certs = [cert_body(cert) for _, cert in self.keys]
        if self.next_key:
            certs.append(cert_body(self.next_key[1]))
        descriptors = "".join(
            f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
            f'{body}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>'
            for body in certs)
        descriptors += (f'<md:KeyDescriptor use="encryption"><ds:KeyInfo><ds:X509Data>'
                        f'<ds:X509Certificate>{certs[0]}</ds:X509Certificate></ds:X509Data>'
                        f'</ds:KeyInfo></md:KeyDescriptor>')
        attrs = ""
        if self.valid_until:
            attrs += f' validUntil="{self.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")}"'
        if self.cache_duration:
            attrs += f' cacheDuration="{self.cache_duration}"'
        return (
            '<?xml version="1.0"?>'
            '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
            f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{self.entity_id}"{attrs}>'
            '<md:IDPSSODescriptor WantAuthnRequestsSigned="false" '
            'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
            f'{descriptors}'
            f'<md:SingleLogoutService Binding="{BINDING_HTTP_REDIRECT}" '
            f'Location="{self.base}/slo/redirect"/>'
            f'<md:NameIDFormat>{NAMEID_FORMAT_PERSISTENT}</md:NameIDFormat>'
            f'<md:SingleSignOnService Binding="{BINDING_HTTP_REDIRECT}" '
            f'Location="{self.base}/sso/redirect"/>'
            '</md:IDPSSODescriptor></md:EntityDescriptor>')

    def sso(self, request: Request) -> Response:
        parsed = self.idp().parse_authn_request(request.args["SAMLRequest"],
                                                BINDING_HTTP_REDIRECT).message
        self.requests.append({"id": parsed.id, "issuer": parsed.issuer.text,
                              "acs": parsed.assertion_consumer_service_url,
                              "signed": "Signature" in request.args})
        xml = self.response_xml(parsed.assertion_consumer_service_url, parsed.issuer.text,
                                parsed.id)
        return self.post_form(parsed.assertion_consumer_service_url, xml,
                              request.args.get("RelayState"))

    def unsolicited(self, request: Request) -> Response:
        """IdP-initiated sign-in: ?acs=<url>&sp=<entity id>&relay=<target>."""
        xml = self.response_xml(request.args["acs"], request.args["sp"], None)
        return self.post_form(request.args["acs"], xml, request.args.get("relay"))

    def post_form(self, acs: str, xml: str, relay_state: str | None) -> Response:
        info = self.idp().apply_binding(BINDING_HTTP_POST, xml, destination=acs,
                                        relay_state=relay_state or "", response=True)
        return Response(info["data"], mimetype="text/html")

    def slo(self, request: Request) -> Response:
        """The SP's LogoutRequest: record it and answer with a signed LogoutResponse."""
        idp = self.idp()
        parsed = idp.parse_logout_request(request.args["SAMLRequest"], BINDING_HTTP_REDIRECT)
        message = parsed.message
        self.logouts.append({"id": message.id, "name_id": message.name_id.text,
                             "session_index": [s.text for s in message.session_index]})
        response = idp.create_logout_response(message, [BINDING_HTTP_REDIRECT])
        destination = idp.metadata.single_logout_service(
            message.issuer.text, BINDING_HTTP_REDIRECT, "spsso")[0]["location"]
        info = idp.apply_binding(BINDING_HTTP_REDIRECT, str(response), destination,
                                 request.args.get("RelayState", ""), response=True, sign=True,
                                 sigalg=self.algorithms[0])
        return Response(status=303, headers={"Location": dict(info["headers"])["Location"]})

    def logout_request_url(self, sp_entity_id: str, sls_url: str, name_id: str,
                           session_index: str = "") -> str:
        """IdP-initiated single logout: the URL that carries a signed LogoutRequest to the SP."""
        idp = self.idp()
        _, message = idp.create_logout_request(
            sls_url, sp_entity_id, name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=name_id),
            session_indexes=[session_index] if session_index else None, sign=False)
        info = idp.apply_binding(BINDING_HTTP_REDIRECT, str(message), sls_url, "",
                                 sign=True, sigalg=self.algorithms[0])
        return dict(info["headers"])["Location"]


def form_fields(page: str) -> dict[str, str]:
    """The hidden fields of the auto-submitting form a browser would post to the ACS."""
    return {name: html.unescape(value) for name, value in FORM_FIELD.findall(page)}



@pytest.fixture
def saml_idp(tmp_path_factory):
    """A fresh pysaml2 identity provider per test (its state changes during tests)."""
    idp = SamlIdp(tmp_path_factory.mktemp("saml-idp"))
    yield idp
    idp.stop()
