"""SAML 2.0 service provider, strict beyond python3-saml's defaults.

python3-saml validates signatures, the schema, the issuer and the status, but leaves several
checks to its caller or makes them lenient (a missing Destination, Recipient or Audience
passes; InResponseTo is only compared when the caller supplies the request id; there is no
replay cache; the Redirect binding inflates without a limit; any ds:Transform reaches
libxmlsec1). This module closes those gaps in three layers:

1. ``precheck``: size limits, strict base64, a parser that refuses DTDs and entities, exactly
   one assertion in the one place it may be, signatures only on the Response or that assertion,
   each referencing its parent, with allowlisted transforms and algorithms, and no comments or
   processing instructions inside the assertion (they split text nodes that signatures do not
   cover).
2. python3-saml ``is_valid`` in strict mode with every IdP signing certificate configured.
3. ``_check_strict``: exact Destination and Recipient, required Audience, InResponseTo bound to
   a request this browser started (or absent when unsolicited), and time windows with this
   connection's clock skew.

The NameID and attributes are read only after all three passed. The caller keeps the request
id server-side, consumes the assertion id in its replay cache (``replay_key``/``replay_ttl``)
and never selects a connection by the message's Issuer.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree
from onelogin.saml2 import xml_utils
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.metadata import OneLogin_Saml2_Metadata
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from federation.errors import FederationError
from federation.identity import (
    AuthContext,
    ExternalIdentity,
    Redirect,
    RequestContext,
    canonical_email,
)

NS = {"samlp": C.NS_SAMLP, "saml": C.NS_SAML, "ds": C.NS_DS, "xenc": C.NS_XENC,
      "md": C.NS_MD}
MAX_ENCODED_BYTES = 256 * 1024  # SAMLResponse before base64 decoding
MAX_INFLATED_BYTES = 128 * 1024  # Redirect-binding messages after inflating
PENDING_MAX_AGE = 600
MAX_CLOCK_SKEW = 300
UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"

ALLOWED_TRANSFORMS = frozenset({
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
})
STRONG_ALGORITHMS = frozenset({
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
})
SHA1_ALGORITHMS = frozenset({"http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                             "http://www.w3.org/2000/09/xmldsig#sha1"})
ALLOWED_C14N = frozenset({"http://www.w3.org/2001/10/xml-exc-c14n#"})
MFA_CONTEXTS = ("MultiFactor", "multifactor", "mfa", "TimeSyncToken", "MobileTwoFactor",
                "Smartcard", "X509")

# Where each profile field is looked for, by friendly name, plain name or URI (pysaml2 and
# Shibboleth send urn:oid names; Entra ID and ADFS send xmlsoap claim URIs).
DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "email": ("email", "mail", "emailAddress", "urn:oid:0.9.2342.19200300.100.1.3",
              "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"),
    "given_name": ("givenName", "given_name", "firstName", "urn:oid:2.5.4.42",
                   "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname"),
    "family_name": ("sn", "surname", "family_name", "lastName", "urn:oid:2.5.4.4",
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname"),
    "display_name": ("displayName", "name", "urn:oid:2.16.840.1.113730.3.1.241",
                     "http://schemas.microsoft.com/identity/claims/displayname",
                     "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"),
    "groups": ("groups", "memberOf", "eduPersonAffiliation", "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
               "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
               "http://schemas.xmlsoap.org/claims/Group"),
}

# python3-saml's error numbers, as the codes the audit trail and test mode show.
LIBRARY_CODES = {value: name.lower() for name, value in vars(OneLogin_Saml2_ValidationError).items()
                 if name.isupper() and isinstance(value, int)}
USER_MESSAGE = ("We could not sign you in through your organization's identity provider. "
                "Try again, and if it keeps happening give the reference below to your "
                "administrator.")


@dataclass(frozen=True)
class SpKey:
    """One of the platform's SAML key pairs (PEM text)."""

    cert: str
    key: str


@dataclass(frozen=True)
class SamlSettings:
    """A connection's settings as plain data (built by the portal from its database row)."""

    connection_id: int
    idp_entity_id: str
    idp_sso_url: str
    idp_certs: tuple[str, ...]
    sp_entity_id: str
    acs_url: str
    slo_url: str
    sp_keys: tuple[SpKey, ...] = ()  # the active key first; the others only decrypt
    sp_next_cert: str = ""  # published during a rollover, not used yet
    idp_slo_url: str = ""
    name_id_format: str = UNSPECIFIED
    sign_requests: bool = False
    want_encrypted: bool = False
    allow_sha1: bool = False
    clock_skew: int = 120
    idp_initiated: bool = False
    idp_initiated_targets: tuple[str, ...] = ()
    emails_verified: bool = True
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    requested_authn_context: tuple[str, ...] = ()

    def attribute_names(self, name: str) -> tuple[str, ...]:
        return tuple(self.attributes.get(name) or ()) or DEFAULT_ATTRIBUTES[name]


@dataclass(frozen=True)
class PostedResponse:
    encoded: str
    root: etree._Element
    relay_state: str | None = None

    @property
    def in_response_to(self) -> str | None:
        return self.root.get("InResponseTo")


def fail(code: str, detail: str = "", message: str = USER_MESSAGE) -> FederationError:
    return FederationError(code, message, detail)


# -- parsing ---------------------------------------------------------------------------------

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                         dtd_validation=False, huge_tree=False, remove_blank_text=False,
                         collect_ids=False)
DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


_compiled_schemas = threading.local()
LIBRARY_VALIDATE_XML = OneLogin_Saml2_XML.validate_xml


def validate_xml_with_kept_schema(xml, schema: str, debug: bool = False):
    """python3-saml's ``validate_xml`` (same checks, same return values), except that the
    XSD is compiled once per thread instead of being read and compiled for every message:
    compiling the protocol schema and its imports cost about as much as the rest of a
    response's validation. lxml schema objects must not be shared between threads, hence
    one per thread."""
    try:
        document = OneLogin_Saml2_XML.to_etree(xml)
    except Exception:
        return "unloaded_xml"
    kept = _compiled_schemas.__dict__
    if schema not in kept:
        path = os.path.join(os.path.dirname(xml_utils.__file__), "schemas", schema)
        with open(path, "rb") as source:
            kept[schema] = OneLogin_Saml2_XML._schema_class(etree.parse(source))
    if not kept[schema].validate(document):
        return "invalid_xml"
    return document


def install_kept_schemas() -> None:
    """Every python3-saml validation in the process uses ``validate_xml_with_kept_schema``."""
    OneLogin_Saml2_XML.validate_xml = staticmethod(validate_xml_with_kept_schema)


install_kept_schemas()


def parse_xml(data: bytes, what: str = "message") -> etree._Element:
    """Parse XML that came from outside: no DTD, no entities, no network, no huge trees."""
    if DOCTYPE.search(data):
        raise fail("dtd_forbidden", f"the {what} contains a DOCTYPE or ENTITY declaration")
    try:
        root = etree.fromstring(data, PARSER)
    except etree.XMLSyntaxError as error:
        raise fail("malformed_xml", f"the {what} is not well-formed XML: {error}") from None
    if root.getroottree().docinfo.doctype:
        raise fail("dtd_forbidden", f"the {what} has a document type declaration")
    return root


def decode_post(value: str | None) -> bytes:
    """A base64 POST-binding message, size-checked before decoding."""
    if not value:
        raise fail("response_missing", "no SAMLResponse in the request")
    if len(value) > MAX_ENCODED_BYTES:
        raise fail("response_too_large", f"SAMLResponse is {len(value)} bytes encoded "
                   f"(limit {MAX_ENCODED_BYTES})")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise fail("invalid_base64", "SAMLResponse is not valid base64") from None


def decode_redirect(value: str | None) -> bytes:
    """A deflated Redirect-binding message, with a cap on the inflated size."""
    if not value:
        raise fail("message_missing", "no SAML message in the query")
    if len(value) > MAX_ENCODED_BYTES:
        raise fail("message_too_large", "the SAML message in the query is too large")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise fail("invalid_base64", "the SAML message is not valid base64") from None
    inflater = zlib.decompressobj(-15)
    try:
        data = inflater.decompress(raw, MAX_INFLATED_BYTES)
    except zlib.error:
        raise fail("invalid_deflate", "the SAML message is not raw DEFLATE data") from None
    if inflater.unconsumed_tail:
        raise fail("inflate_limit", f"the SAML message inflates beyond {MAX_INFLATED_BYTES} "
                   "bytes")
    return data


# -- layer 1: structure ----------------------------------------------------------------------

def precheck(root: etree._Element, allow_sha1: bool) -> etree._Element:
    """Structural checks on a Response before any library sees it; returns the assertion
    (plain or encrypted) that every later step must read."""
    if root.tag != f"{{{C.NS_SAMLP}}}Response":
        raise fail("not_a_response", f"the root element is {root.tag}")
    assertions = root.findall(".//saml:Assertion", NS) + root.findall(
        ".//saml:EncryptedAssertion", NS)
    if len(assertions) != 1:
        raise fail("assertion_count", f"the response holds {len(assertions)} assertions; "
                   "exactly one is allowed")
    assertion = assertions[0]
    if assertion.getparent() is not root:
        raise fail("assertion_misplaced", "the assertion is not a direct child of the Response")
    _check_unique_ids(root)
    for signature in root.iter(f"{{{C.NS_DS}}}Signature"):
        _check_signature(signature, root, assertion, allow_sha1)
    if assertion.tag == f"{{{C.NS_SAML}}}Assertion":
        check_no_comments(assertion)
    return assertion


def _check_unique_ids(root: etree._Element) -> None:
    seen: set[str] = set()
    for element in root.iter(etree.Element):
        value = element.get("ID")
        if value is None:
            continue
        if value in seen:
            raise fail("duplicate_id", f"the ID {value!r} appears twice")
        seen.add(value)


def _check_signature(signature: etree._Element, root: etree._Element,
                     assertion: etree._Element, allow_sha1: bool) -> None:
    parent = signature.getparent()
    if parent is not root and parent is not assertion:
        raise fail("signature_misplaced", f"a signature sits inside {parent.tag}")
    references = signature.findall("ds:SignedInfo/ds:Reference", NS)
    if len(references) != 1:
        raise fail("signature_references", f"a signature has {len(references)} references")
    if references[0].get("URI") != f"#{parent.get('ID')}":
        raise fail("signature_reference", "a signature does not reference its own element")
    for transform in signature.iterfind(".//ds:Transform", NS):
        if transform.get("Algorithm") not in ALLOWED_TRANSFORMS:
            raise fail("transform_forbidden", f"transform {transform.get('Algorithm')} is not "
                       "allowed")
    c14n = signature.find("ds:SignedInfo/ds:CanonicalizationMethod", NS)
    if c14n is None or c14n.get("Algorithm") not in ALLOWED_C14N:
        raise fail("c14n_forbidden", "the canonicalization method is not exclusive C14N")
    for tag in ("ds:SignedInfo/ds:SignatureMethod", "ds:SignedInfo/ds:Reference/ds:DigestMethod"):
        method = signature.find(tag, NS)
        algorithm = method.get("Algorithm") if method is not None else None
        if algorithm in SHA1_ALGORITHMS and not allow_sha1:
            raise fail("weak_algorithm", f"{algorithm} (SHA-1) is refused for this connection")
        if algorithm not in STRONG_ALGORITHMS and algorithm not in SHA1_ALGORITHMS:
            raise fail("algorithm_forbidden", f"algorithm {algorithm} is not allowed")


def check_no_comments(element: etree._Element) -> None:
    """Comments and processing instructions vanish in exclusive C14N, so a signature still
    verifies when they split a NameID into two text nodes: refuse them outright."""
    found = element.xpath("descendant::comment() | descendant::processing-instruction()")
    if found:
        raise fail("xml_comment", f"the assertion contains {found[0]!r}")


# -- the adapter -----------------------------------------------------------------------------

class SamlAdapter:
    """One per process: it keeps python3-saml settings objects between sign-ins."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._settings: dict[tuple, OneLogin_Saml2_Settings] = {}
        self._lock = threading.Lock()

    # ---- sign-in

    def begin(self, settings: SamlSettings, context: RequestContext) -> Redirect:
        """An AuthnRequest over the Redirect binding; the request id is the pending state."""
        auth = OneLogin_Saml2_Auth(request_data(settings.acs_url), self.library(settings))
        relay = secrets.token_urlsafe(16)
        url = auth.login(return_to=relay, name_id_value_req=context.login_hint or None,
                         force_authn=context.force_authn)
        request_id = auth.get_last_request_id()
        return Redirect(url=url, pending_state={"state": request_id, "protocol": "saml",
                                                "created": self.clock()})

    def read_response(self, callback: dict[str, str]) -> PostedResponse:
        """Decode and parse a POSTed SAMLResponse (size, base64 and DTD checks). Its
        ``in_response_to`` only finds the pending sign-in; ``complete`` validates it."""
        encoded = callback.get("SAMLResponse") or ""
        return PostedResponse(encoded, parse_xml(decode_post(encoded), "response"),
                              callback.get("RelayState"))

    def complete(self, settings: SamlSettings, message: PostedResponse | dict[str, str],
                 pending: dict[str, Any] | None) -> ExternalIdentity:
        """Validate a POSTed SAMLResponse; ``pending`` is None for an unsolicited one."""
        if not isinstance(message, PostedResponse):
            message = self.read_response(message)
        root = message.root
        precheck(root, settings.allow_sha1)
        request_id = self._request_id(settings, root, pending, message.relay_state)
        response = self._validate_with_library(settings, message.encoded, request_id)
        assertion = _validated_assertion(response)
        _check_signed(response)
        self._check_strict(settings, response, assertion, request_id)
        return self._identity(settings, response, assertion)

    def _request_id(self, settings: SamlSettings, root: etree._Element,
                    pending: dict[str, Any] | None, relay_state: str | None) -> str | None:
        if pending is not None:
            if self.clock() - float(pending.get("created", 0)) > PENDING_MAX_AGE:
                raise fail("request_expired", "the sign-in request is older than ten minutes",
                           "This sign-in took too long. Please start again.")
            return pending["state"]
        if root.get("InResponseTo"):
            raise fail("unknown_in_response_to", "the response answers a request this browser "
                       "did not start", "This sign-in link was already used or belongs to "
                       "another browser. Please start again.")
        if not settings.idp_initiated:
            raise fail("unsolicited_refused", "IdP-initiated sign-in is off for this connection",
                       "Start the sign-in from the portal's sign-in page.")
        if relay_state and relay_state not in settings.idp_initiated_targets:
            raise fail("relay_state_refused", f"RelayState {relay_state!r} is not an allowed "
                       "target for IdP-initiated sign-in")
        return None

    def _validate_with_library(self, settings: SamlSettings, encoded: str,
                               request_id: str | None) -> OneLogin_Saml2_Response:
        keys = settings.sp_keys or (None,)
        last_error: FederationError | None = None
        for key in keys:  # during a rollover the IdP may encrypt to either published key
            library = self.library(settings, key)
            try:
                response = OneLogin_Saml2_Response(library, encoded)
            except (OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError, ValueError,
                    etree.LxmlError) as error:
                last_error = fail("decryption_failed" if "ecrypt" in str(error) else
                                  "invalid_response", str(error))
                continue
            try:
                response.is_valid(request_data(settings.acs_url), request_id,
                                  raise_exceptions=True)
            except OneLogin_Saml2_ValidationError as error:
                raise fail(LIBRARY_CODES.get(error.code, "invalid_response"), str(error)) \
                    from None
            except (OneLogin_Saml2_Error, etree.LxmlError, ValueError) as error:
                raise fail("invalid_response", str(error)) from None
            return response
        raise last_error or fail("invalid_response", "the response could not be read")

    def _check_strict(self, settings: SamlSettings, response: OneLogin_Saml2_Response,
                      assertion: etree._Element, request_id: str | None) -> None:
        now = self.clock()
        skew = min(settings.clock_skew, MAX_CLOCK_SKEW)
        document = response.document
        if document.get("Destination") != settings.acs_url:
            raise fail("destination_mismatch", f"Destination {document.get('Destination')!r} is "
                       f"not {settings.acs_url!r}")
        if request_id is not None and document.get("InResponseTo") not in (None, request_id):
            raise fail("wrong_inresponseto", "the Response answers another request")
        audiences = [a.text for a in assertion.iterfind(
            "saml:Conditions/saml:AudienceRestriction/saml:Audience", NS)]
        if settings.sp_entity_id not in audiences:
            raise fail("audience_mismatch", f"audiences {audiences} do not include "
                       f"{settings.sp_entity_id!r}")
        issuer = assertion.findtext("saml:Issuer", namespaces=NS)
        if issuer != settings.idp_entity_id:
            raise fail("wrong_issuer", f"assertion issuer {issuer!r} is not "
                       f"{settings.idp_entity_id!r}")
        conditions = assertion.find("saml:Conditions", NS)
        _check_window(conditions.get("NotBefore"), conditions.get("NotOnOrAfter"), now, skew)
        _check_bearer(assertion, settings.acs_url, request_id, now, skew)

    def _identity(self, settings: SamlSettings, response: OneLogin_Saml2_Response,
                  assertion: etree._Element) -> ExternalIdentity:
        name_id = response.get_nameid_data()
        subject = (name_id.get("Value") or "").strip()
        if not subject:
            raise fail("nameid_missing", "the assertion has no NameID")
        if name_id.get("Format") == TRANSIENT:
            raise fail("nameid_transient", "a transient NameID cannot identify a returning "
                       "user; configure a persistent or email NameID at the IdP")
        attributes = _attributes(response)
        email = _first(attributes, settings.attribute_names("email"))
        if not email and name_id.get("Format") == EMAIL_FORMAT:
            email = subject
        statement = assertion.find("saml:AuthnStatement", NS)
        acr = statement.findtext("saml:AuthnContext/saml:AuthnContextClassRef",
                                 namespaces=NS) if statement is not None else None
        instant = statement.get("AuthnInstant") if statement is not None else None
        amr = ("mfa",) if acr and any(hint in acr for hint in MFA_CONTEXTS) else ()
        return ExternalIdentity(
            connection_id=settings.connection_id, issuer=settings.idp_entity_id,
            subject=subject, email=canonical_email(email) if email else None,
            email_verified=bool(email) and settings.emails_verified,
            given_name=_first(attributes, settings.attribute_names("given_name")) or "",
            family_name=_first(attributes, settings.attribute_names("family_name")) or "",
            display_name=_first(attributes, settings.attribute_names("display_name")) or "",
            groups=tuple(_all(attributes, settings.attribute_names("groups"))),
            claims={"attributes": attributes, "name_id": subject,
                    "name_id_format": name_id.get("Format") or UNSPECIFIED,
                    "session_index": response.get_session_index() or "",
                    "assertion_id": assertion.get("ID"),
                    "not_on_or_after": _replay_deadline(assertion),
                    "in_response_to": response.document.get("InResponseTo") or ""},
            auth=AuthContext(amr=amr, acr=acr, auth_time=_parse_time(instant)))

    # ---- logout

    def logout_request(self, settings: SamlSettings, name_id: str, name_id_format: str,
                       session_index: str, return_to: str) -> tuple[str, str]:
        """SP-initiated logout: the IdP URL to send the browser to and the request id."""
        auth = OneLogin_Saml2_Auth(request_data(settings.slo_url), self.library(settings))
        url = auth.logout(return_to=return_to, name_id=name_id, session_index=session_index,
                          name_id_format=name_id_format)
        return url, auth.get_last_request_id()

    def logout_message(self, settings: SamlSettings, query: dict[str, str],
                       request_id: str | None) -> tuple[str, str | None]:
        """Validate a LogoutRequest or LogoutResponse over the Redirect binding (signature
        required). Returns ("request", reply URL) or ("response", None); for a request the
        caller ends the sessions of the NameID it names (see ``logout_request_name_id``)."""
        message = query.get("SAMLRequest") or query.get("SAMLResponse")
        root = parse_xml(decode_redirect(message), "logout message")
        check_no_comments(root)
        if "Signature" not in query:
            raise fail("logout_unsigned", "the logout message carries no signature")
        algorithm = query.get("SigAlg", "")
        if algorithm in SHA1_ALGORITHMS and not settings.allow_sha1:
            raise fail("weak_algorithm", f"{algorithm} (SHA-1) is refused for this connection")
        if algorithm not in STRONG_ALGORITHMS and algorithm not in SHA1_ALGORITHMS:
            raise fail("algorithm_forbidden", f"algorithm {algorithm!r} is not allowed")
        if root.get("Destination") != settings.slo_url:
            raise fail("destination_mismatch", f"Destination {root.get('Destination')!r} is "
                       f"not {settings.slo_url!r}")
        data = request_data(settings.slo_url)
        data["get_data"] = dict(query)
        auth = OneLogin_Saml2_Auth(data, self.library(settings, logout=True))
        try:
            reply = auth.process_slo(keep_local_session=True, request_id=request_id)
        except (OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError) as error:
            raise fail("invalid_logout", str(error)) from None
        if auth.get_errors():
            raise fail(auth.get_errors()[0], auth.get_last_error_reason() or "")
        if "SAMLRequest" in query:
            return "request", reply
        return "response", None

    # ---- metadata and settings

    def logout_name_id(self, query: dict[str, str]) -> str:
        """The NameID of a LogoutRequest that ``logout_message`` has validated."""
        root = parse_xml(decode_redirect(query.get("SAMLRequest")), "logout request")
        return (root.findtext("saml:NameID", namespaces=NS) or "").strip()

    def sp_metadata(self, settings: SamlSettings, signed: bool = False) -> str:
        library = self.library(settings)
        metadata = library.get_sp_metadata()
        errors = library.validate_metadata(metadata)
        if errors:
            raise fail("sp_metadata_invalid", ", ".join(errors))
        if signed and settings.sp_keys:
            key = settings.sp_keys[0]
            metadata = OneLogin_Saml2_Metadata.sign_metadata(metadata, key.key, key.cert)
        return metadata.decode() if isinstance(metadata, bytes) else metadata

    def library(self, settings: SamlSettings, key: SpKey | None = None,
                logout: bool = False) -> OneLogin_Saml2_Settings:
        """python3-saml settings, built once per connection version (building them parses
        every certificate)."""
        key = key or (settings.sp_keys[0] if settings.sp_keys else None)
        cache_key = _cache_key(settings, key, logout)
        with self._lock:
            cached = self._settings.get(cache_key)
        if cached is None:
            cached = OneLogin_Saml2_Settings(library_settings(settings, key, logout),
                                             sp_validation_only=key is None)
            with self._lock:
                if len(self._settings) > 256:
                    self._settings.clear()
                self._settings[cache_key] = cached
        return cached


def _cache_key(settings: SamlSettings, key: SpKey | None, logout: bool) -> tuple:
    """Everything ``library_settings`` reads (the attribute mapping is not among it)."""
    return (settings.connection_id, settings.idp_entity_id, settings.idp_sso_url,
            settings.idp_slo_url, settings.idp_certs, settings.sp_entity_id, settings.acs_url,
            settings.slo_url, settings.sp_next_cert, settings.name_id_format,
            settings.sign_requests, settings.want_encrypted, settings.allow_sha1,
            settings.requested_authn_context, key, logout)


def library_settings(settings: SamlSettings, key: SpKey | None,
                     logout: bool = False) -> dict[str, Any]:
    """The hardened python3-saml configuration for one connection."""
    algorithm = C.RSA_SHA256
    sp: dict[str, Any] = {
        "entityId": settings.sp_entity_id,
        "assertionConsumerService": {"url": settings.acs_url, "binding": C.BINDING_HTTP_POST},
        "singleLogoutService": {"url": settings.slo_url, "binding": C.BINDING_HTTP_REDIRECT},
        "NameIDFormat": settings.name_id_format,
    }
    if key is not None:
        sp.update(x509cert=key.cert, privateKey=key.key)
    if settings.sp_next_cert:
        sp["x509certNew"] = settings.sp_next_cert
    idp: dict[str, Any] = {
        "entityId": settings.idp_entity_id,
        "singleSignOnService": {"url": settings.idp_sso_url,
                                "binding": C.BINDING_HTTP_REDIRECT},
        "x509certMulti": {"signing": list(settings.idp_certs)},
    }
    if settings.idp_slo_url:
        idp["singleLogoutService"] = {"url": settings.idp_slo_url,
                                      "binding": C.BINDING_HTTP_REDIRECT}
    signs = key is not None
    return {
        "strict": True, "debug": False, "sp": sp, "idp": idp,
        "security": {
            "authnRequestsSigned": settings.sign_requests and signs,
            "logoutRequestSigned": signs, "logoutResponseSigned": signs,
            "signMetadata": False,
            # The ACS accepts a signed assertion or a signed Response (which covers its
            # assertion); _check_signed enforces that, so the library requires neither.
            "wantMessagesSigned": logout, "wantAssertionsSigned": False,
            "wantAssertionsEncrypted": settings.want_encrypted,
            "wantNameId": True, "wantNameIdEncrypted": False,
            "wantAttributeStatement": False, "allowRepeatAttributeName": False,
            "rejectDeprecatedAlgorithm": not settings.allow_sha1,
            "signatureAlgorithm": algorithm, "digestAlgorithm": C.SHA256,
            "requestedAuthnContext": list(settings.requested_authn_context) or False,
            "failOnAuthnContextMismatch": bool(settings.requested_authn_context),
            "allowSingleLabelDomains": False,
        },
    }


def request_data(url: str) -> dict[str, Any]:
    """python3-saml derives "the current URL" from this: build it from our own configured
    endpoint, never from the request's Host header."""
    parts = urlsplit(url)
    return {"https": "on" if parts.scheme == "https" else "off", "http_host": parts.netloc,
            "script_name": parts.path, "get_data": {}, "post_data": {}}


def _validated_assertion(response: OneLogin_Saml2_Response) -> etree._Element:
    document = response.decrypted_document if response.encrypted else response.document
    assertions = document.findall("saml:Assertion", NS)
    if len(assertions) != 1:
        raise fail("assertion_count", "the decrypted response does not hold one assertion")
    if response.encrypted:
        check_no_comments(assertions[0])
    return assertions[0]


def _check_signed(response: OneLogin_Saml2_Response) -> None:
    """A signed assertion, or a signed Response whose signature covers the assertion."""
    document = response.decrypted_document if response.encrypted else response.document
    assertion_signed = document.find("saml:Assertion/ds:Signature", NS) is not None
    response_signed = response.document.find("ds:Signature", NS) is not None
    if not (assertion_signed or response_signed):
        raise fail("signature_missing", "neither the assertion nor the Response is signed")


def _check_window(not_before: str | None, not_on_or_after: str | None, now: float,
                  skew: int) -> None:
    if not_before and _epoch(not_before) > now + skew:
        raise fail("assertion_not_yet_valid", f"NotBefore {not_before} is in the future")
    if not_on_or_after and _epoch(not_on_or_after) + skew <= now:
        raise fail("assertion_expired", f"NotOnOrAfter {not_on_or_after} has passed")


def _check_bearer(assertion: etree._Element, acs_url: str, request_id: str | None,
                  now: float, skew: int) -> None:
    """At least one bearer SubjectConfirmation for exactly our ACS, this request, and now."""
    problems = []
    for confirmation in assertion.iterfind("saml:Subject/saml:SubjectConfirmation", NS):
        data = confirmation.find("saml:SubjectConfirmationData", NS)
        if confirmation.get("Method") != C.CM_BEARER or data is None:
            problems.append("not a bearer confirmation with data")
        elif data.get("Recipient") != acs_url:
            problems.append(f"Recipient {data.get('Recipient')!r} is not {acs_url!r}")
        elif data.get("InResponseTo") != request_id:
            problems.append(f"InResponseTo {data.get('InResponseTo')!r} does not match")
        elif not data.get("NotOnOrAfter"):
            problems.append("no NotOnOrAfter")
        else:
            try:
                _check_window(data.get("NotBefore"), data.get("NotOnOrAfter"), now, skew)
            except FederationError as error:
                problems.append(error.detail)
                continue
            return
    code = "recipient_mismatch" if any("Recipient" in p for p in problems) else \
        "wrong_inresponseto" if any("InResponseTo" in p for p in problems) else \
        "assertion_expired" if any("NotOnOrAfter" in p and "passed" in p for p in problems) \
        else "subject_confirmation"
    raise fail(code, "; ".join(problems) or "no SubjectConfirmation")


def _replay_deadline(assertion: etree._Element) -> float:
    """When the assertion stops being usable: its id must stay in the replay cache until then."""
    times = [element.get("NotOnOrAfter") for element in (
        assertion.find("saml:Conditions", NS),
        *assertion.iterfind("saml:Subject/saml:SubjectConfirmation/"
                            "saml:SubjectConfirmationData", NS)) if element is not None]
    values = [_epoch(value) for value in times if value]
    return max(values) if values else time.time() + PENDING_MAX_AGE


def replay_key(identity: ExternalIdentity) -> str:
    return f"{identity.issuer}|{identity.claims['assertion_id']}"


def replay_ttl(identity: ExternalIdentity, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(60, int(identity.claims["not_on_or_after"] - now) + MAX_CLOCK_SKEW)


def _attributes(response: OneLogin_Saml2_Response) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for source in (response.get_attributes(), response.get_friendlyname_attributes()):
        for name, values in source.items():
            merged.setdefault(name, [str(v) for v in values if v is not None])
    return merged


def _first(attributes: dict[str, list[str]], names: tuple[str, ...]) -> str | None:
    for value in _all(attributes, names):
        if value.strip():
            return value.strip()
    return None


def _all(attributes: dict[str, list[str]], names: tuple[str, ...]) -> list[str]:
    for name in names:
        if attributes.get(name):
            return attributes[name]
    return []


@functools.lru_cache(maxsize=256)
def _epoch(value: str) -> float:
    """A SAML time (UTC, ``Z`` or no zone, any fraction of a second), as python3-saml reads
    it; an explicit offset is refused as it refuses it. A response carries several times, so
    the C parser is used rather than ``strptime``."""
    text = value[:-1] if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is not None or "T" not in text:
        raise fail("invalid_time", f"{value!r} is not a SAML time")
    return moment.replace(tzinfo=UTC).timestamp()


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(_epoch(value), UTC) if value else None
