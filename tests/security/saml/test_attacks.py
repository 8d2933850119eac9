"""The SAML attack corpus: each forged response is posted to the ACS of a connection that trusts
the real IdP peer, and must be refused with an error page, provision nothing, and leave an audit
event naming the check that failed. The baseline (a correctly forged, correctly signed response)
must be accepted in the same run, or the refusals would prove nothing."""

from __future__ import annotations

import base64
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from lxml import etree

from portal.models import Connection, FederatedIdentity, User
from portal.services import organizations
from portal.services import saml as saml_connections
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_saml_signin import BASE, add_saml_connection
from tests.peers.saml_idp import make_key_pair
from tests.security.saml import forge
from tests.security.saml.forge import DS, SAML, Claims

ACS_PATH = "/saml/{}/acs"


@pytest.fixture
def target(app, tx, client, make_org, saml_idp, tmp_path):
    make_org("partner", "Partner Co")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
    connection_id = add_saml_connection(app, tx, client, saml_idp)
    return Target(app, tx, client, saml_idp, connection_id, tmp_path)


class Target:
    def __init__(self, app, tx, client, idp, connection_id, folder):
        self.app, self.tx, self.client, self.idp = app, tx, client, idp
        self.id = connection_id
        self.key, self.cert = idp.keys[0]
        self.evil_key, self.evil_cert = make_key_pair(folder, "attacker", "test-idp")

    @property
    def acs(self) -> str:
        return f"{BASE}/saml/{self.id}/acs"

    def begin(self) -> str:
        """Start a sign-in in this browser; returns the AuthnRequest id."""
        response = self.client.post("/login", data={"email": "alice@partner.example",
                                                    "csrf_token": csrf_token(self.client)})
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
        return etree.fromstring(xml).get("ID")

    def claims(self, request_id: str | None, **changes) -> Claims:
        values = {"issuer": self.idp.entity_id, "audience": f"{BASE}/saml/{self.id}/metadata",
                  "destination": self.acs, "recipient": self.acs,
                  "in_response_to": request_id, **changes}
        return Claims(**values)

    def post(self, saml_response: str, **extra):
        return self.client.post(ACS_PATH.format(self.id),
                                data={"SAMLResponse": saml_response, **extra})

    def good_response(self, request_id: str, **changes) -> etree._Element:
        c = self.claims(request_id, **changes)
        return forge.build_response(c, forge.signed_assertion(c, self.key, self.cert))

    def assert_refused(self, response, *reasons: str) -> None:
        assert response.status_code in (400, 413), response.status_code
        page = response.get_data(as_text=True)
        assert "give this reference to your administrator" in page
        failure = [e for e in audit_events(self.app, "auth.login") if e.outcome == "failure"][-1]
        assert failure.reason in reasons, (failure.reason, failure.details)
        with self.tx() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
            assert session.scalar(sa.select(sa.func.count()).select_from(
                FederatedIdentity)) == 0


def test_baseline_forged_response_is_accepted(target):
    request_id = target.begin()
    accepted = target.post(forge.encode(target.good_response(request_id)))
    assert accepted.status_code == 302 and accepted.headers["Location"] == "/o/partner/"


# -- XML signature wrapping: every variant leaves two assertions (or one in the wrong place) --

def _wrapping(target, arrange) -> None:
    request_id = target.begin()
    signed = forge.signed_assertion(target.claims(request_id), target.key, target.cert)
    evil = forge.build_assertion(target.claims(request_id, name_id="ceo-persistent-id",
                                               email="ceo@partner.example"))
    response = forge.build_response(target.claims(request_id), evil)
    arrange(response, evil, signed)
    target.assert_refused(target.post(forge.encode(response)), "assertion_count",
                          "assertion_misplaced", "signature_misplaced")


def _signature(element):
    return element.find(f"{{{DS}}}Signature")


XSW = {
    # signed Response moved: evil content at the top, the signed original kept in the signature
    "xsw1": lambda r, evil, signed: _signature_object(r, evil, signed),
    "xsw2": lambda r, evil, signed: r.insert(2, signed),
    # evil assertion before / after the signed one
    "xsw3": lambda r, evil, signed: r.append(signed),
    "xsw4": lambda r, evil, signed: evil.append(signed),
    # the signature copied onto the evil assertion, the original elsewhere
    "xsw5": lambda r, evil, signed: (evil.insert(1, forge.clone(_signature(signed))),
                                     r.append(_stripped(signed))),
    "xsw6": lambda r, evil, signed: _signature_object(r, evil, signed, copy_signature=True),
    "xsw7": lambda r, evil, signed: _extensions(r, signed),
    "xsw8": lambda r, evil, signed: _xsw8(evil, signed),
}


def _stripped(signed):
    element = forge.clone(signed)
    element.remove(_signature(element))
    return element


def _signature_object(response, evil, signed, copy_signature=False):
    """The evil assertion carries the signature; the signed original hides in ds:Object."""
    signature = _signature(signed)
    if signature is None:  # already stripped: take the signature from a fresh copy
        raise AssertionError("the signed assertion lost its signature")
    if copy_signature:
        signature = forge.clone(signature)
    else:
        signed.remove(signature)
    obj = etree.SubElement(signature, f"{{{DS}}}Object")
    obj.append(signed)
    evil.insert(1, signature)


def _xsw8(evil, signed):
    """The signature moves to the evil assertion; the original, without its signature, sits in
    the signature's Object (so an enveloped-signature transform would see it unchanged)."""
    signature = _signature(signed)
    signed.remove(signature)
    obj = etree.SubElement(signature, f"{{{DS}}}Object")
    obj.append(signed)
    evil.insert(1, signature)


def _extensions(response, signed):
    extensions = etree.Element("{urn:oasis:names:tc:SAML:2.0:protocol}Extensions")
    extensions.append(signed)
    response.insert(1, extensions)


@pytest.mark.parametrize("variant", sorted(XSW))
def test_signature_wrapping_is_refused(target, variant):
    _wrapping(target, XSW[variant])


def test_second_unsigned_assertion_beside_the_signed_one(target):
    request_id = target.begin()
    response = target.good_response(request_id)
    response.append(forge.build_assertion(target.claims(request_id, name_id="ceo")))
    target.assert_refused(target.post(forge.encode(response)), "assertion_count")


# -- signatures ------------------------------------------------------------------------------

def test_signature_removed(target):
    request_id = target.begin()
    response = forge.build_response(target.claims(request_id))
    target.assert_refused(target.post(forge.encode(response)), "no_signature_found",
                          "signature_missing")


def test_signature_by_an_untrusted_key(target):
    request_id = target.begin()
    c = target.claims(request_id)
    response = forge.build_response(c, forge.signed_assertion(c, target.evil_key,
                                                              target.evil_cert))
    target.assert_refused(target.post(forge.encode(response)), "invalid_signature")


def test_self_signed_certificate_in_keyinfo_is_not_trusted(target):
    """The attacker's certificate travels in KeyInfo (same subject as the IdP's): only the
    configured certificates count."""
    request_id = target.begin()
    c = target.claims(request_id)
    assertion = forge.signed_assertion(c, target.evil_key, target.evil_cert)
    assert assertion.find(f".//{{{DS}}}X509Certificate").text
    target.assert_refused(target.post(forge.encode(forge.build_response(c, assertion))),
                          "invalid_signature")


def test_assertion_modified_after_signing(target):
    request_id = target.begin()
    response = target.good_response(request_id)
    response.find(f".//{{{SAML}}}NameID").text = "ceo-persistent-id"
    target.assert_refused(target.post(forge.encode(response)), "invalid_signature")


def test_comment_injected_into_the_name_id(target):
    """Exclusive C14N drops comments, so the signature still verifies; a naive reader would see
    only the text before the comment."""
    request_id = target.begin()
    c = target.claims(request_id, name_id="alice@partner.example.evil.example")
    assertion = forge.signed_assertion(c, target.key, target.cert)
    name_id = assertion.find(f".//{{{SAML}}}NameID")
    name_id.text = "alice@partner.example"
    comment = etree.Comment("")
    comment.tail = ".evil.example"
    name_id.append(comment)
    target.assert_refused(target.post(forge.encode(forge.build_response(c, assertion))),
                          "xml_comment")


def test_sha1_refused_unless_the_connection_opts_in(target):
    request_id = target.begin()
    c = target.claims(request_id)
    response = forge.build_response(c, forge.signed_assertion(c, target.key, target.cert,
                                                              sha1=True))
    target.assert_refused(target.post(forge.encode(response)), "weak_algorithm")
    with target.tx() as session:
        saml_connections.set_options(session, CLI_CTX, session.get(Connection, target.id),
                                     allow_sha1=True)
    request_id = target.begin()
    c = target.claims(request_id)
    response = forge.build_response(c, forge.signed_assertion(c, target.key, target.cert,
                                                              sha1=True))
    assert target.post(forge.encode(response)).status_code == 302


def test_xslt_transform_never_reaches_libxmlsec(target):
    request_id = target.begin()
    c = target.claims(request_id)
    assertion = forge.sign(forge.build_assertion(c), target.key, target.cert,
                           extra_transform="http://www.w3.org/TR/1999/REC-xslt-19991116")
    target.assert_refused(target.post(forge.encode(forge.build_response(c, assertion))),
                          "transform_forbidden")


# -- conditions ------------------------------------------------------------------------------

CONDITION_CASES = {
    "expired": ({"not_on_or_after": -600}, ("assertion_expired",)),
    "expired beyond our skew, within the library's": ({"not_on_or_after": -200},
                                                      ("assertion_expired",
                                                       "wrong_subjectconfirmation")),
    "not yet valid": ({"not_before": 600}, ("assertion_too_early", "assertion_not_yet_valid")),
    "wrong audience": ({"audience": "https://other-sp.example/metadata"},
                       ("wrong_audience", "audience_mismatch")),
    "missing audience": ({"audience": None}, ("audience_mismatch",)),
    "wrong destination": ({"destination": "https://evil.example/acs"},
                          ("wrong_destination", "destination_mismatch")),
    "missing destination": ({"destination": None}, ("destination_mismatch",)),
    "wrong recipient": ({"recipient": "https://evil.example/acs"},
                        ("wrong_subjectconfirmation", "recipient_mismatch")),
    "missing recipient": ({"recipient": None}, ("recipient_mismatch",)),
    "wrong issuer": ({"issuer": "https://evil-idp.example/"}, ("wrong_issuer",)),
}


@pytest.mark.parametrize("case", sorted(CONDITION_CASES))
def test_conditions_are_enforced(target, case):
    changes, reasons = CONDITION_CASES[case]
    request_id = target.begin()
    target.assert_refused(target.post(forge.encode(target.good_response(request_id, **changes))),
                          *reasons)


def test_unknown_in_response_to(target):
    target.begin()
    target.assert_refused(target.post(forge.encode(target.good_response("_not-our-request"))),
                          "unknown_in_response_to")


def test_the_same_response_twice(target):
    request_id = target.begin()
    encoded = forge.encode(target.good_response(request_id))
    assert target.post(encoded).status_code == 302
    with target.tx() as session:  # start from nothing, so the refusal provisions nothing
        session.execute(sa.delete(FederatedIdentity))
        session.execute(sa.delete(User))
    target.client = target.app.test_client()
    target.assert_refused(target.post(encoded), "unknown_in_response_to")


def test_unsolicited_response_when_idp_initiated_is_off(target):
    target.assert_refused(target.post(forge.encode(target.good_response(None))),
                          "unsolicited_refused")


# -- parsing and sizes -----------------------------------------------------------------------

EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;'
                   b'</samlp:Response>')
BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
                  + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
                             .encode() for i in range(8))
                  + b']><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&i;'
                  b'</samlp:Response>')


@pytest.mark.parametrize("body,reason", [
    (forge.encode(EXTERNAL_ENTITY), "dtd_forbidden"),
    (forge.encode(BILLION_LAUGHS), "dtd_forbidden"),
    ("this is not base64 !!!", "invalid_base64"),
    (forge.encode(b"definitely not xml <<<"), "malformed_xml"),
], ids=["external-entity", "entity-expansion", "invalid-base64", "not-xml"])
def test_hostile_documents(target, body, reason):
    target.begin()
    target.assert_refused(target.post(body), reason)


def test_twenty_megabyte_body(target):
    target.begin()
    target.assert_refused(target.post("A" * (20 * 1024 * 1024)), "request_too_large")


def test_deflate_bomb_on_the_redirect_binding(target):
    bomb = forge.deflate(b"<samlp:LogoutRequest " + b" " * (50 * 1024 * 1024) + b"/>")
    assert len(bomb) < 200_000
    refused = target.client.get(f"/saml/{target.id}/sls", query_string={"SAMLRequest": bomb})
    target.assert_refused(refused, "inflate_limit")
