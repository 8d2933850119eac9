"""Building SAML Responses by hand (lxml + xmlsec), signed with the trusted IdP key or an
attacker's, so each attack can be shaped exactly."""

from __future__ import annotations

import base64
import copy
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import xmlsec
from lxml import etree

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NSMAP = {"samlp": SAMLP, "saml": SAML}
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"


def stamp(offset_seconds: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_seconds)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return "_" + secrets.token_hex(16)


@dataclass
class Claims:
    """Everything a Response says; each attack changes one field or the resulting tree."""

    issuer: str
    audience: str | None
    destination: str | None
    recipient: str | None
    in_response_to: str | None
    name_id: str = "alice-persistent-id"
    email: str = "alice@partner.example"
    groups: list[str] = field(default_factory=lambda: ["partner-admins"])
    not_before: float = -60
    not_on_or_after: float = 300


def _sub(parent, ns: str, tag: str, text: str | None = None, **attrs) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}", {k: v for k, v in attrs.items()
                                                          if v is not None})
    if text is not None:
        element.text = text
    return element


def build_assertion(c: Claims, assertion_id: str | None = None) -> etree._Element:
    assertion = etree.Element(f"{{{SAML}}}Assertion", nsmap=NSMAP, ID=assertion_id or new_id(),
                              Version="2.0", IssueInstant=stamp())
    _sub(assertion, SAML, "Issuer", c.issuer)
    subject = _sub(assertion, SAML, "Subject")
    _sub(subject, SAML, "NameID", c.name_id, Format=PERSISTENT)
    confirmation = _sub(subject, SAML, "SubjectConfirmation", Method=BEARER)
    _sub(confirmation, SAML, "SubjectConfirmationData", InResponseTo=c.in_response_to,
         Recipient=c.recipient, NotOnOrAfter=stamp(c.not_on_or_after))
    conditions = _sub(assertion, SAML, "Conditions", NotBefore=stamp(c.not_before),
                      NotOnOrAfter=stamp(c.not_on_or_after))
    if c.audience is not None:
        restriction = _sub(conditions, SAML, "AudienceRestriction")
        _sub(restriction, SAML, "Audience", c.audience)
    statement = _sub(assertion, SAML, "AuthnStatement", AuthnInstant=stamp(),
                     SessionIndex=new_id())
    context = _sub(statement, SAML, "AuthnContext")
    _sub(context, SAML, "AuthnContextClassRef",
         "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    attributes = _sub(assertion, SAML, "AttributeStatement")
    for name, values in (("mail", [c.email]), ("groups", c.groups)):
        attribute = _sub(attributes, SAML, "Attribute", Name=name)
        for value in values:
            _sub(attribute, SAML, "AttributeValue", value)
    return assertion


def build_response(c: Claims, assertion: etree._Element | None = None) -> etree._Element:
    response = etree.Element(f"{{{SAMLP}}}Response", nsmap=NSMAP, ID=new_id(), Version="2.0",
                             IssueInstant=stamp(), **{k: v for k, v in (
                                 ("Destination", c.destination),
                                 ("InResponseTo", c.in_response_to)) if v is not None})
    _sub(response, SAML, "Issuer", c.issuer)
    status = _sub(response, SAMLP, "Status")
    _sub(status, SAMLP, "StatusCode", Value="urn:oasis:names:tc:SAML:2.0:status:Success")
    response.append(assertion if assertion is not None else build_assertion(c))
    return response


def sign(element: etree._Element, key: Path, cert: Path, *, sha1: bool = False,
         extra_transform: str | None = None) -> etree._Element:
    """Enveloped signature placed after the element's Issuer, as SAML requires."""
    method = xmlsec.constants.TransformRsaSha1 if sha1 else xmlsec.constants.TransformRsaSha256
    digest = xmlsec.constants.TransformSha1 if sha1 else xmlsec.constants.TransformSha256
    signature = xmlsec.template.create(element, xmlsec.constants.TransformExclC14N, method,
                                       ns="ds")
    element.insert(1, signature)
    reference = xmlsec.template.add_reference(signature, digest, uri=f"#{element.get('ID')}")
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    last = xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    if extra_transform:
        etree.SubElement(last.getparent(), f"{{{DS}}}Transform", Algorithm=extra_transform)
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.add_x509_data(key_info)
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_file(str(key), xmlsec.constants.KeyDataFormatPem)
    context.key.load_cert_from_file(str(cert), xmlsec.constants.KeyDataFormatPem)
    context.register_id(element, "ID")
    if extra_transform:
        return element  # libxmlsec1 would run the transform; the SP must refuse it unread
    context.sign(signature)
    return element


def signed_assertion(c: Claims, key: Path, cert: Path, **options) -> etree._Element:
    return sign(build_assertion(c), key, cert, **options)


def encode(root: etree._Element | bytes) -> str:
    data = root if isinstance(root, bytes) else etree.tostring(root)
    return base64.b64encode(data).decode()


def deflate(data: bytes) -> str:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(compressor.compress(data) + compressor.flush()).decode()


def clone(element: etree._Element) -> etree._Element:
    return copy.deepcopy(element)
