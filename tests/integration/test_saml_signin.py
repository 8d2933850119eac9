"""SAML sign-in through Trellis against a real identity provider (pysaml2 on loopback)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa

from portal.models import Connection, FederatedIdentity, Membership, User
from portal.services import organizations
from portal.services import saml as saml_connections
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of
from tests.peers.saml_idp import form_fields

BASE = "http://localhost"


def add_saml_connection(app, tx, client, idp, org_slug="partner", **options):
    with tx() as session:
        row = saml_connections.create(
            session, CLI_CTX, services_of(app).secrets, org_slug=org_slug, name="Partner SSO",
            metadata_url=idp.entity_id, enabled=True, allow_insecure_loopback=True,
            group_roles={"partner-admins": "org_owner", "staff": "buyer"}, **options)
        connection_id = row.id
    trust(client, idp, connection_id)
    return connection_id


def trust(client, idp, connection_id):
    """Give the IdP the SP metadata, as a partner's admin would."""
    idp.trust_sp(client.get(f"/saml/{connection_id}/metadata").get_data(as_text=True))


@pytest.fixture
def saml_org(app, tx, client, make_org, saml_idp):
    make_org("partner", "Partner Co")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
    return add_saml_connection(app, tx, client, saml_idp)


def start(client, email):
    response = client.post("/login", data={"email": email, "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return response.headers["Location"]


def at_idp(url: str) -> dict[str, str]:
    """The browser at the IdP: it signs the user in and returns the auto-post form."""
    page = requests.get(url, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text[:300]
    return form_fields(page.text)


def post_acs(client, connection_id, fields):
    return client.post(f"/saml/{connection_id}/acs", data=fields)


def saml_login(client, connection_id, email="alice@partner.example"):
    return post_acs(client, connection_id, at_idp(start(client, email)))


def test_first_sign_in_provisions_into_the_organization(client, tx, saml_org, saml_idp):
    url = start(client, "Alice@Partner.example")
    assert url.startswith(saml_idp.base + "/sso/redirect?SAMLRequest=")
    fields = at_idp(url)
    assert saml_idp.requests[-1]["acs"] == f"{BASE}/saml/{saml_org}/acs"
    landing = post_acs(client, saml_org, fields)
    assert landing.status_code == 302 and landing.headers["Location"] == "/o/partner/"
    home = client.get("/o/partner/").get_data(as_text=True)
    assert "Alice Anders" in home and "Partner Co" in home
    with tx() as session:
        user = session.scalar(sa.select(User))
        link = session.scalar(sa.select(FederatedIdentity))
        assert (user.email, user.password_hash) == ("alice@partner.example", None)
        assert (link.connection_id, link.subject) == (saml_org, "alice-persistent-id")
        assert session.scalar(sa.select(Membership)).source.value == "jit"
    from tests.integration.test_oidc_signin import roles
    assert roles(tx, "alice@partner.example") == {"member", "org_owner"}


def test_returning_user_is_found_by_subject_and_profile_updated(client, app, tx, saml_org,
                                                                 saml_idp):
    saml_login(client, saml_org)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    from tests.peers.saml_idp import USERS
    USERS["alice"]["displayName"], old = "Alice A. Anders", USERS["alice"]["displayName"]
    try:
        assert saml_login(client, saml_org).status_code == 302
    finally:
        USERS["alice"]["displayName"] = old
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1
        assert session.scalar(sa.select(User.display_name)) == "Alice A. Anders"


def test_the_same_response_twice_is_refused(client, app, tx, saml_org, saml_idp):
    fields = at_idp(start(client, "alice@partner.example"))
    assert post_acs(client, saml_org, fields).status_code == 302
    other = app.test_client()
    again = post_acs(other, saml_org, fields)
    assert again.status_code == 400
    assert "give this reference to your administrator" in again.get_data(as_text=True)
    failures = [e for e in audit_events(app, "auth.login") if e.outcome == "failure"]
    assert failures[-1].reason == "unknown_in_response_to"


def test_unsolicited_response_is_refused_unless_enabled(client, app, tx, saml_org, saml_idp):
    unsolicited = (f"{saml_idp.base}/sso/unsolicited?acs={BASE}/saml/{saml_org}/acs"
                   f"&sp={BASE}/saml/{saml_org}/metadata&relay=/o/partner/")
    refused = post_acs(client, saml_org, at_idp(unsolicited))
    assert refused.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "unsolicited_refused"
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
        saml_connections.set_options(session, CLI_CTX, session.get(Connection, saml_org),
                                     idp_initiated=True, idp_initiated_targets=["/o/partner/"])
    fields = at_idp(unsolicited)
    accepted = post_acs(client, saml_org, fields)
    assert accepted.status_code == 302 and accepted.headers["Location"] == "/o/partner/"
    replayed = post_acs(app.test_client(), saml_org, fields)
    assert replayed.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "assertion_replayed"
    elsewhere = unsolicited.replace("relay=/o/partner/", "relay=/admin/")
    assert post_acs(app.test_client(), saml_org, at_idp(elsewhere)).status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "relay_state_refused"


def test_sp_initiated_logout_ends_both_sessions(client, app, saml_org, saml_idp):
    saml_login(client, saml_org)
    out = client.post("/logout", data={"csrf_token": csrf_token(client, "/o/partner/")})
    assert out.status_code == 302 and out.headers["Location"].startswith(
        saml_idp.base + "/slo/redirect?")
    assert client.get("/o/partner/").status_code == 302  # the Trellis session is over already
    back = requests.get(out.headers["Location"], allow_redirects=False, timeout=10)
    assert saml_idp.logouts[-1]["name_id"] == "alice-persistent-id"
    location = back.headers["Location"]
    assert location.startswith(f"{BASE}/saml/{saml_org}/sls?SAMLResponse=")
    done = client.get(location.removeprefix(BASE))
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    assert "also at your organization" in client.get("/login").get_data(as_text=True)


def test_sign_in_linked_by_password_still_logs_out_at_the_idp(client, app, saml_org,
                                                             saml_idp, make_user):
    from tests.conftest import PASSWORD
    make_user("alice@partner.example")
    assert saml_login(client, saml_org).headers["Location"] == "/sso/link"
    done = client.post("/sso/link", data={"password": PASSWORD,
                                          "csrf_token": csrf_token(client, "/sso/link")})
    assert done.status_code == 302
    out = client.post("/logout", data={"csrf_token": csrf_token(client, "/o/partner/")})
    assert out.headers["Location"].startswith(saml_idp.base + "/slo/redirect?")
    requests.get(out.headers["Location"], allow_redirects=False, timeout=10)
    assert saml_idp.logouts[-1]["name_id"] == "alice-persistent-id"


def test_idp_initiated_logout_ends_the_users_sessions(client, app, saml_org, saml_idp):
    saml_login(client, saml_org)
    second_device = app.test_client()
    saml_login(second_device, saml_org)
    url = saml_idp.logout_request_url(f"{BASE}/saml/{saml_org}/metadata",
                                      f"{BASE}/saml/{saml_org}/sls", "alice-persistent-id")
    reply = client.get(url.removeprefix(BASE))
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith(saml_idp.base + "/slo/redirect?SAMLResponse=")
    assert client.get("/o/partner/").status_code == 302
    assert second_device.get("/o/partner/").status_code == 302
    event = audit_events(app, "auth.logout")[-1]
    assert event.details["initiated_by"] == "idp" and event.details["sessions_ended"] == 2


def test_unsigned_logout_request_is_refused(client, app, saml_org, saml_idp):
    saml_login(client, saml_org)
    url = saml_idp.logout_request_url(f"{BASE}/saml/{saml_org}/metadata",
                                      f"{BASE}/saml/{saml_org}/sls", "alice-persistent-id")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()
             if k in ("SAMLRequest", "RelayState")}
    refused = client.get(f"/saml/{saml_org}/sls", query_string=query)
    assert refused.status_code == 400
    assert client.get("/o/partner/").status_code == 200  # still signed in


def test_encrypted_assertion(client, app, tx, saml_org, saml_idp):
    with tx() as session:
        saml_connections.set_options(session, CLI_CTX, session.get(Connection, saml_org),
                                     want_encrypted=True)
    trust(client, saml_idp, saml_org)  # the SP metadata now carries an encryption key
    refused = saml_login(client, saml_org)
    assert refused.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "no_encrypted_assertion"
    saml_idp.encrypt_assertion = True
    fields = at_idp(start(client, "alice@partner.example"))
    assert "EncryptedAssertion" in __import__("base64").b64decode(
        fields["SAMLResponse"]).decode()
    assert post_acs(client, saml_org, fields).headers["Location"] == "/o/partner/"


def test_idp_key_rollover_with_two_certificates_in_metadata(client, app, tx, saml_org,
                                                           saml_idp):
    saml_idp.publish_next_key()
    with tx() as session:
        assert saml_connections.refresh_metadata(session, CLI_CTX,
                                                 session.get(Connection, saml_org))
        assert len(session.get(Connection, saml_org).settings["idp_certs"]) == 2
    assert saml_login(client, saml_org).status_code == 302  # old key still signs
    client.post("/logout", data={"csrf_token": csrf_token(client, "/o/partner/")})
    saml_idp.switch_to_next_key()
    assert saml_login(client, saml_org).headers["Location"] == "/o/partner/"


def test_key_switch_without_metadata_refresh_fails_clearly(client, app, saml_org, saml_idp):
    saml_idp.publish_next_key()
    saml_idp.switch_to_next_key(keep_old=False)
    refused = saml_login(client, saml_org)
    assert refused.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "invalid_signature"


def test_failed_metadata_refresh_keeps_the_last_good_copy(client, app, tx, saml_org, saml_idp):
    with tx() as session:
        before = dict(session.get(Connection, saml_org).settings)
    saml_idp.metadata_broken = True
    with tx() as session:
        row = session.get(Connection, saml_org)
        assert not saml_connections.refresh_metadata(session, CLI_CTX, row)
        assert row.settings["idp_certs"] == before["idp_certs"]
        assert "HTTP 503" in row.settings["metadata"]["error"]
    event = audit_events(app, "connection.metadata_refresh")[-1]
    assert event.outcome == "failure"
    assert saml_login(client, saml_org).status_code == 302  # sign-ins go on


def test_metadata_is_refreshed_when_its_cache_duration_says(client, app, tx, saml_org,
                                                            saml_idp):
    saml_idp.cache_duration = "PT5M"
    with tx() as session:
        row = session.get(Connection, saml_org)
        saml_connections.refresh_metadata(session, CLI_CTX, row)
        assert row.settings["metadata"]["refresh_at"] - row.settings["metadata"][
            "fetched_at"] == pytest.approx(300, abs=1)
        row.settings = {**row.settings, "metadata": {**row.settings["metadata"],
                                                     "refresh_at": 0}}
    saml_idp.publish_next_key()
    saml_login(client, saml_org)  # the sign-in start fetches due metadata first
    with tx() as session:
        assert len(session.get(Connection, saml_org).settings["idp_certs"]) == 2


def test_sp_metadata_publishes_next_key_during_rollover(client, app, tx, saml_org):
    from portal.services import signing_keys
    secrets_box = services_of(app).secrets

    def signing_certs():
        xml = client.get(f"/saml/{saml_org}/metadata").get_data(as_text=True)
        return xml.count('use="signing"')

    assert signing_certs() == 1
    with tx() as session:
        key = signing_keys.generate(session, CLI_CTX, secrets_box)
    assert signing_certs() == 2
    with tx() as session:
        signing_keys.activate(session, CLI_CTX, key.id)
    assert signing_certs() == 2  # the previous key is still published
    with tx() as session:
        previous = next(k for k in signing_keys.published(session, "saml")
                    if k.state.value == "previous")
        signing_keys.retire(session, CLI_CTX, previous.id)
    assert signing_certs() == 1
    download = client.get(f"/saml/{saml_org}/metadata?download=1")
    assert "attachment" in download.headers["Content-Disposition"]
    signed = client.get(f"/saml/{saml_org}/metadata?signed=1").get_data(as_text=True)
    assert "<ds:Signature" in signed


def test_test_mode_shows_the_assertion_and_provisions_nothing(client, app, tx, saml_org,
                                                             saml_idp, make_user):
    from tests.conftest import sign_in
    make_user("operator@trellis.test", operator=True)
    sign_in(client, "operator@trellis.test")
    token = csrf_token(client, "/admin/connections")
    response = client.post(f"/sso/{saml_org}/test", data={"csrf_token": token})
    fields = at_idp(response.headers["Location"])
    report = post_acs(client, saml_org, fields)
    page = report.get_data(as_text=True)
    assert report.status_code == 200 and "A real sign-in would succeed" in page
    assert "alice-persistent-id" in page and "org_owner" in page
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(FederatedIdentity)) == 0


def test_unchanged_returning_sign_in_records_only_the_login(client, app, tx, saml_org, saml_idp):
    saml_login(client, saml_org)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/o/partner/")})
    with tx() as session:
        first = session.scalar(sa.select(FederatedIdentity.last_login_at))
    before = len(audit_events(app))
    assert saml_login(client, saml_org).headers["Location"] == "/o/partner/"
    new = [e.action for e in audit_events(app)[before:]]
    assert new == ["auth.login", "auth.risk"]  # the risk score of every sign-in
    assert audit_events(app, "auth.login")[-1].details["method"] == "saml"
    with tx() as session:
        assert session.scalar(sa.select(FederatedIdentity.last_login_at)) > first
        assert session.scalar(sa.select(User.last_login_at)) is not None


def test_changed_groups_take_the_full_path_and_roles_follow(client, app, tx, saml_org,
                                                           saml_idp):
    saml_login(client, saml_org)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/o/partner/")})
    from tests.integration.test_oidc_signin import roles
    from tests.peers.saml_idp import USERS
    USERS["alice"]["groups"], old = ["staff"], USERS["alice"]["groups"]
    try:
        saml_login(client, saml_org)
    finally:
        USERS["alice"]["groups"] = old
    assert roles(tx, "alice@partner.example") == {"member", "buyer"}
    assert audit_events(app, "federation.roles")[-1].details == {
        "added": ["buyer"], "removed": ["org_owner"], "source": f"connection:{saml_org}"}
