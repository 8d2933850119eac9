"""The kept (compiled once per thread) SAML schema gives python3-saml's own answers."""

from __future__ import annotations

import threading

import pytest
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from federation import saml

PROTOCOL = "saml-schema-protocol-2.0.xsd"
VALID = (b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
         b'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r1" Version="2.0" '
         b'IssueInstant="2026-12-05T10:00:00Z"><saml:Issuer>https://idp.test</saml:Issuer>'
         b'<samlp:Status><samlp:StatusCode '
         b'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
         b'</samlp:Response>')
DOCUMENTS = [
    VALID,
    VALID.replace(b' Version="2.0"', b""),  # a required attribute missing
    VALID.replace(b"<samlp:Status>", b"<samlp:Unexpected/><samlp:Status>"),  # stray element
    VALID.replace(b'IssueInstant="2026-12-05T10:00:00Z"', b'IssueInstant="yesterday"'),
    b"<not-closed",
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_same_verdict_as_the_library(document):
    ours = saml.validate_xml_with_kept_schema(document, PROTOCOL)
    theirs = saml.LIBRARY_VALIDATE_XML(document, PROTOCOL)
    assert isinstance(ours, str) == isinstance(theirs, str)
    if isinstance(ours, str):  # the error codes python3-saml reports
        assert ours == theirs
    else:
        assert ours.tag == theirs.tag


def test_the_library_uses_the_kept_schema():
    assert OneLogin_Saml2_XML.validate_xml(VALID, PROTOCOL) is not None
    assert OneLogin_Saml2_XML.validate_xml is saml.validate_xml_with_kept_schema
    assert OneLogin_Saml2_XML.validate_xml(DOCUMENTS[1], PROTOCOL) == "invalid_xml"


def test_threads_each_keep_their_own_schema():
    verdicts: dict[int, list[bool]] = {}

    def validate(n: int):
        verdicts[n] = [isinstance(saml.validate_xml_with_kept_schema(d, PROTOCOL), str)
                       for d in DOCUMENTS * 20]

    threads = [threading.Thread(target=validate, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts == {n: [False, True, True, True, True] * 20 for n in range(4)}
