"""The LDAP adapter against a real slapd: bind sign-in, TLS, failover, groups, bad input."""

from __future__ import annotations

import socket
import uuid

import pytest

from federation.errors import FederationError
from federation.ldap import (
    AD_SUBCODES,
    INVALID,
    LdapAdapter,
    LdapSettings,
    bind_failure,
    map_entry,
    stable_id,
)
from tests.peers.process import free_port
from tests.peers.slapd import (
    BULK_ENTRIES,
    GROUPS,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    USER_PASSWORD,
    start_seeded,
)


def settings_for(server, **overrides) -> LdapSettings:
    values = dict(connection_id=7, urls=(server.url,), bind_dn=SERVICE_DN,
                  bind_password=SERVICE_PASSWORD, user_base=PEOPLE, group_base=GROUPS,
                  ca_cert_pem=server.tls.ca_pem if server.tls else "",
                  disabled_attribute="employeeType", disabled_values=("disabled",))
    values.update(overrides)
    return LdapSettings(**values)


def refused(settings: LdapSettings, login: str, password: str) -> FederationError:
    with pytest.raises(FederationError) as caught:
        LdapAdapter().authenticate(settings, login, password)
    return caught.value


def test_bind_sign_in_over_starttls_returns_the_mapped_identity(slapd):
    identity = LdapAdapter().authenticate(settings_for(slapd), "alice", USER_PASSWORD)
    assert identity.email == "alice@acme.test" and identity.email_verified
    assert (identity.given_name, identity.family_name) == ("Alice", "Archer")
    assert identity.display_name == "Alice Archer"
    assert uuid.UUID(identity.subject)  # entryUUID, not the DN
    assert identity.claims["dn"] == f"uid=alice,{PEOPLE}"
    assert identity.issuer == "ldap:7" and identity.auth.amr == ("pwd",)


def test_the_email_finds_the_same_entry_as_the_username(slapd):
    by_name = LdapAdapter().authenticate(settings_for(slapd), "alice", USER_PASSWORD)
    by_mail = LdapAdapter().authenticate(settings_for(slapd), "Alice@Acme.test", USER_PASSWORD)
    assert by_name.subject == by_mail.subject


def test_ldaps_with_the_connections_ca(slapd):
    identity = LdapAdapter().authenticate(settings_for(slapd, urls=(slapd.ldaps_url,)),
                                          "bob", USER_PASSWORD)
    assert identity.email == "bob@acme.test"


def test_nested_groups_are_followed_recursively(slapd):
    identity = LdapAdapter().authenticate(settings_for(slapd), "alice", USER_PASSWORD)
    # alice is in engineers, engineers in staff, staff in everyone
    assert identity.groups == ("engineers", "everyone", "staff")
    flat = LdapAdapter().authenticate(settings_for(slapd, nested_groups="none"), "alice",
                                      USER_PASSWORD)
    assert flat.groups == ("engineers",)


def test_wrong_password_is_refused_with_the_local_sign_in_message(slapd):
    error = refused(settings_for(slapd), "alice", "not her password")
    assert error.code == "wrong_password" and error.safe_message == INVALID


def test_empty_password_is_refused_before_any_bind(slapd):
    calls = []

    def counting_factory(*args, **kwargs):
        calls.append(kwargs)
        raise AssertionError("no connection may be opened for an empty password")

    with pytest.raises(FederationError) as caught:
        LdapAdapter(connection_factory=counting_factory).authenticate(
            settings_for(slapd), "alice", "")
    assert caught.value.code == "empty_password" and caught.value.safe_message == INVALID
    assert calls == []


@pytest.mark.parametrize("login", ["*", "alice*", "*)(uid=*", "alice)(|(uid=*",
                                   "\\2a", "al\x00ice", "(uid=alice)"])
def test_filter_metacharacters_match_only_literally(slapd, login):
    error = refused(settings_for(slapd), login, USER_PASSWORD)
    assert error.code == "unknown_user" and error.safe_message == INVALID


def test_a_name_made_of_metacharacters_signs_in_as_itself(slapd):
    identity = LdapAdapter().authenticate(settings_for(slapd), "p(x)*\\", USER_PASSWORD)
    assert identity.email == "meta@acme.test"


def test_unknown_user_looks_like_a_wrong_password(slapd):
    error = refused(settings_for(slapd), "nobody", USER_PASSWORD)
    assert error.code == "unknown_user" and error.safe_message == INVALID


def test_two_entries_with_one_email_are_refused_plainly(slapd):
    error = refused(settings_for(slapd), "dup@acme.test", USER_PASSWORD)
    assert error.code == "ambiguous_user"
    assert "more than one account" in error.safe_message.lower()
    # each of them can still sign in by username
    assert LdapAdapter().authenticate(settings_for(slapd), "dave2", USER_PASSWORD).email == \
        "dup@acme.test"


def test_an_entry_without_email_is_refused_naming_the_attribute(slapd):
    error = refused(settings_for(slapd), "carol", USER_PASSWORD)
    assert error.code == "attribute_missing" and "mail" in error.detail


def test_a_disabled_entry_is_refused(slapd):
    error = refused(settings_for(slapd), "erin", USER_PASSWORD)
    assert error.code == "account_disabled" and "disabled" in error.safe_message


def test_untrusted_certificate_is_refused_on_starttls_and_ldaps(slapd):
    for url in (slapd.url, slapd.ldaps_url):
        error = refused(settings_for(slapd, urls=(url,), ca_cert_pem=""), "alice",
                        USER_PASSWORD)
        assert error.code == "tls_untrusted", url
        assert "could not be reached" in error.safe_message


def test_a_certificate_for_another_host_name_is_refused(tmp_path):
    """Signed by the trusted CA, but issued to another name than the one in the URL."""
    other = start_seeded(tmp_path / "slapd", tls=True, tls_host="directory.partner.example")
    try:
        for url in (other.url, other.ldaps_url):
            error = refused(settings_for(other, urls=(url,)), "alice", USER_PASSWORD)
            assert error.code == "tls_untrusted", url
            assert "directory.partner.example" in error.detail  # the name it was issued to
            assert "could not be reached" in error.safe_message
    finally:
        other.stop()


def test_plain_ldap_only_when_explicitly_allowed(slapd):
    plain = settings_for(slapd, start_tls=False)
    assert refused(plain, "alice", USER_PASSWORD).code == "insecure_refused"
    allowed = settings_for(slapd, start_tls=False, allow_plain=True)
    assert allowed.insecure
    assert LdapAdapter().authenticate(allowed, "alice", USER_PASSWORD).email == \
        "alice@acme.test"


def test_failover_to_the_next_server(slapd):
    dead = f"ldap://127.0.0.1:{free_port()}"
    adapter = LdapAdapter()
    identity = adapter.authenticate(settings_for(slapd, urls=(dead, slapd.url)), "alice",
                                    USER_PASSWORD)
    assert identity.email == "alice@acme.test"
    assert dead in adapter._down  # tried last next time, for a minute


def test_unreachable_directory_is_a_clear_error(slapd):
    error = refused(settings_for(slapd, urls=(f"ldap://127.0.0.1:{free_port()}",)), "alice",
                    USER_PASSWORD)
    assert error.code == "directory_unreachable" and error.status == 503
    assert "could not be reached" in error.safe_message


def test_a_directory_that_never_answers_times_out():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections (the kernel does), never answers
    try:
        settings = LdapSettings(connection_id=1, urls=(f"ldap://127.0.0.1:"
                                                       f"{silent.getsockname()[1]}",),
                                bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD,
                                user_base=PEOPLE, start_tls=False, allow_plain=True,
                                read_timeout=1)
        error = refused(settings, "alice", USER_PASSWORD)
    finally:
        silent.close()
    assert error.code == "directory_timeout"
    assert "could not be reached" in error.safe_message


def test_wrong_service_password_is_named(slapd):
    error = refused(settings_for(slapd, bind_password="wrong"), "alice", USER_PASSWORD)
    assert error.code == "service_bind_failed"
    report = LdapAdapter().test(settings_for(slapd, bind_password="wrong"))
    assert not report.ok and report.error.code == "service_bind_failed"


def test_connection_test_counts_users_and_groups_and_maps_a_sample(slapd):
    report = LdapAdapter().test(settings_for(slapd), sample_login="bob")
    assert report.ok and report.tls == "StartTLS"
    assert (report.users, report.groups) == (7, 4)
    assert report.sample.email == "bob@acme.test"
    assert report.sample.groups == ("auditors", "everyone", "staff")


@pytest.mark.parametrize(("subcode", "code"), [
    ("52e", "wrong_password"), ("532", "password_expired"), ("533", "account_disabled"),
    ("701", "account_expired"), ("773", "password_must_change"), ("775", "account_locked")])
def test_active_directory_subcodes_become_plain_messages(subcode, code):
    message = ("80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, "
               f"data {subcode}, v4563\x00")
    error = bind_failure({"result": 49, "description": "invalidCredentials",
                          "message": message})
    assert error.code == code
    assert error.safe_message == AD_SUBCODES[subcode][1]
    assert "LdapErr" not in error.safe_message


def test_active_directory_entry_mapping():
    guid = uuid.uuid4()
    settings = LdapSettings(connection_id=3, urls=("ldaps://dc.example",), bind_dn="x",
                            bind_password="y", user_base="dc=example", directory="ad",
                            attributes={})
    entry = map_entry(settings, "CN=Ann,DC=example", {
        "objectGUID": [guid.bytes_le], "sAMAccountName": ["ann"],
        "mail": ["Ann@Example.test"], "givenName": ["Ann"], "sn": ["Lee"],
        "displayName": ["Ann Lee"], "userAccountControl": ["514"]}, ("Staff",))
    assert entry.identity.subject == str(guid) == stable_id("objectGUID", [guid.bytes_le])
    assert entry.identity.email == "ann@example.test"
    assert entry.disabled  # 514 = NORMAL_ACCOUNT | ACCOUNTDISABLE


def test_paged_reads_cover_a_large_directory(bulk_slapd):
    """100,000 users read page by page (never one response), groups with 1,000 members."""
    settings = LdapSettings(connection_id=1, urls=(bulk_slapd.url,), bind_dn=SERVICE_DN,
                            bind_password=SERVICE_PASSWORD, user_base=PEOPLE,
                            group_base=GROUPS, start_tls=False, allow_plain=True,
                            page_size=1000)
    adapter = LdapAdapter()
    service = adapter.service_connection(settings)
    try:
        sizes = [len(page) for page in adapter.iter_users(service, settings)]
        groups = sum(len(page) for page in adapter.iter_groups(service, settings))
    finally:
        service.unbind()
    assert sum(sizes) == BULK_ENTRIES and max(sizes) == 1000
    assert groups == 100
    # u000001 is a direct member of g001, which g000 nests: it is in both
    identity = adapter.authenticate(settings, "u000001", USER_PASSWORD)
    assert identity.groups == ("g000", "g001")
