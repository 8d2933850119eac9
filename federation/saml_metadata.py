"""Reading an identity provider's SAML metadata: endpoints, signing keys, how long it is good.

Metadata is parsed with the same hardened parser as messages (no DTD, no entities). When the
connection names a certificate that signs the metadata, the signature must verify with it. All
signing certificates are kept, so an IdP that publishes its next key ahead of a rollover keeps
working across the switch.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from cryptography import x509
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from federation.errors import FederationError
from federation.saml import NS, SHA1_ALGORITHMS, parse_xml

DEFAULT_REFRESH_SECONDS = 24 * 3600
MIN_REFRESH_SECONDS = 300
DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?"
                      r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


@dataclass(frozen=True)
class IdpMetadata:
    entity_id: str
    sso_url: str
    signing_certs: tuple[str, ...]
    slo_url: str = ""
    valid_until: float | None = None
    cache_duration: int | None = None

    def refresh_at(self, fetched_at: float) -> float:
        """When to fetch again: the earlier of cacheDuration and validUntil, within bounds."""
        due = fetched_at + (self.cache_duration or DEFAULT_REFRESH_SECONDS)
        if self.valid_until:
            due = min(due, self.valid_until)
        return max(due, fetched_at + MIN_REFRESH_SECONDS)


def metadata_error(detail: str) -> FederationError:
    return FederationError("metadata_invalid", f"The identity provider's metadata was refused: "
                           f"{detail}", detail)


def parse_idp_metadata(xml: bytes, entity_id: str | None = None,
                       signing_cert: str | None = None, now: float | None = None) -> IdpMetadata:
    """Parse and check IdP metadata; raises FederationError("metadata_invalid") naming why."""
    try:
        root = parse_xml(xml, "metadata")
    except FederationError as error:
        raise metadata_error(error.detail) from None
    descriptor = _entity(root, entity_id)
    if signing_cert:
        _check_metadata_signature(xml, root, signing_cert)
    now = time.time() if now is None else now
    valid_until = _valid_until(root, descriptor)
    if valid_until is not None and valid_until <= now:
        raise metadata_error("its validUntil has passed")
    idp = descriptor.find("md:IDPSSODescriptor", NS)
    if idp is None:
        raise metadata_error("it describes no identity provider (no IDPSSODescriptor)")
    sso = _endpoint(idp, "md:SingleSignOnService")
    if not sso:
        raise metadata_error("it has no SingleSignOnService with the HTTP-Redirect binding")
    certs = _signing_certs(idp)
    if not certs:
        raise metadata_error("it has no signing certificate")
    return IdpMetadata(entity_id=descriptor.get("entityID"), sso_url=sso,
                       slo_url=_endpoint(idp, "md:SingleLogoutService"),
                       signing_certs=certs, valid_until=valid_until,
                       cache_duration=_duration(descriptor.get("cacheDuration")
                                                or root.get("cacheDuration")))


def _entity(root: etree._Element, entity_id: str | None) -> etree._Element:
    if root.tag == f"{{{C.NS_MD}}}EntityDescriptor":
        candidates = [root]
    elif root.tag == f"{{{C.NS_MD}}}EntitiesDescriptor":
        candidates = root.findall(".//md:EntityDescriptor", NS)
    else:
        raise metadata_error(f"the root element is {root.tag}, not EntityDescriptor")
    if entity_id:
        candidates = [c for c in candidates if c.get("entityID") == entity_id]
    candidates = [c for c in candidates if c.find("md:IDPSSODescriptor", NS) is not None]
    if len(candidates) != 1:
        raise metadata_error(f"{len(candidates)} identity providers match"
                             + (f" entity ID {entity_id}" if entity_id else "")
                             + "; exactly one is needed (give the entity ID)")
    if not candidates[0].get("entityID"):
        raise metadata_error("the EntityDescriptor has no entityID")
    return candidates[0]


def _check_metadata_signature(xml: bytes, root: etree._Element, cert: str) -> None:
    signature = root.find("ds:Signature", NS)
    if signature is None:
        raise metadata_error("it is not signed, but this connection requires signed metadata")
    for method in signature.iterfind(".//ds:SignatureMethod", NS):
        if method.get("Algorithm") in SHA1_ALGORITHMS:
            raise metadata_error("it is signed with SHA-1")
    try:
        valid = OneLogin_Saml2_Utils.validate_metadata_sign(xml, cert, raise_exceptions=True)
    except Exception as error:  # the library raises bare Exceptions here
        raise metadata_error(f"its signature does not verify: {error}") from None
    if not valid:
        raise metadata_error("its signature does not verify with the configured certificate")


def _endpoint(idp: etree._Element, tag: str) -> str:
    for element in idp.iterfind(tag, NS):
        if element.get("Binding") == C.BINDING_HTTP_REDIRECT and element.get("Location"):
            return element.get("Location")
    return ""


def _signing_certs(idp: etree._Element) -> tuple[str, ...]:
    certs: list[str] = []
    for descriptor in idp.iterfind("md:KeyDescriptor", NS):
        if descriptor.get("use") not in (None, "", "signing"):
            continue
        for node in descriptor.iterfind(".//ds:X509Certificate", NS):
            text = "".join((node.text or "").split())
            if text and text not in certs:
                check_certificate(text)
                certs.append(text)
    return tuple(certs)


def check_certificate(text: str) -> None:
    """A base64 DER or PEM certificate that parses; anything else is refused up front."""
    body = text if "BEGIN CERTIFICATE" in text else (
        f"-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n")
    try:
        x509.load_pem_x509_certificate(body.encode())
    except ValueError as error:
        raise metadata_error(f"a certificate does not parse: {error}") from None


def _valid_until(root: etree._Element, descriptor: etree._Element) -> float | None:
    values = [e.get("validUntil") for e in (root, descriptor) if e.get("validUntil")]
    if not values:
        return None
    try:
        return min(float(OneLogin_Saml2_Utils.parse_SAML_to_time(v)) for v in values)
    except ValueError:
        raise metadata_error(f"validUntil {values[0]!r} is not a date") from None


def _duration(value: str | None) -> int | None:
    if not value:
        return None
    match = DURATION.match(value.strip())
    if not match or not any(match.groups()):
        raise metadata_error(f"cacheDuration {value!r} is not an ISO 8601 duration")
    years, months, days, hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return int(((years * 365 + months * 30 + days) * 24 + hours) * 3600 + minutes * 60 + seconds)
