"""The search-entry decoder gives exactly what ldap3's own decoder gives, for any entry."""

from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.strategy import sync as sync_strategy

from federation import ldap  # noqa: F401  (installs the decoder)
from federation.ldap_ber import decode_entry

LDAP3 = sync_strategy.decode_message_fast.generic


def ber(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body + value


def entry(message_id: int, dn: bytes, attributes: list[tuple[bytes, list[bytes]]]) -> bytes:
    listed = b"".join(ber(0x30, ber(0x04, name) + ber(0x31, b"".join(ber(0x04, v)
                                                                       for v in values)))
                      for name, values in attributes)
    op = ber(0x64, ber(0x04, dn) + ber(0x30, listed))
    number = message_id.to_bytes((message_id.bit_length() + 8) // 8, "big", signed=True)
    return ber(0x30, ber(0x02, number) + op)


@settings(max_examples=300)
@given(message_id=st.integers(1, 2**31 - 1), dn=st.binary(max_size=300),
       attributes=st.lists(st.tuples(st.binary(min_size=1, max_size=40),
                                     st.lists(st.binary(max_size=400), max_size=5)),
                           max_size=8))
def test_entries_decode_as_ldap3_decodes_them(message_id, dn, attributes):
    message = entry(message_id, dn, attributes)
    assert decode_entry(message) == LDAP3(message)
    assert sync_strategy.decode_message_fast(message) == LDAP3(message)


def test_other_messages_and_odd_entries_go_to_ldap3():
    done = ber(0x30, ber(0x02, b"\x07") + ber(0x65, b"\x0a\x01\x00\x04\x00\x04\x00"))
    assert sync_strategy.decode_message_fast(done) == LDAP3(done)
    assert sync_strategy.decode_message_fast(done)["protocolOp"] == 5
    with_controls = entry(3, b"cn=a", [(b"cn", [b"a"])])
    with_controls = ber(0x30, with_controls[2:] + ber(0xA0, ber(0x30, ber(0x04, b"1.2.3"))))
    assert sync_strategy.decode_message_fast(with_controls) == LDAP3(with_controls)
    assert sync_strategy.decode_message_fast(with_controls)["controls"] is not None
