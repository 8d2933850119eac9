"""Federated sign-in through Trellis against a real OpenID Provider (node oidc-provider)."""

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import sqlalchemy as sa

from portal.models import Connection, FederatedIdentity, Membership, User
from portal.services import connections, organizations
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of

BASE = "http://localhost"


def roles(tx, email: str) -> set[str]:
    from portal.services.roles import roles_of
    with tx() as session:
        user = session.scalar(sa.select(User).where(User.email == email))
        org_id = session.scalar(sa.select(Membership.organization_id)
                                .where(Membership.user_id == user.id))
        return roles_of(session, user.id, org_id)


@pytest.fixture
def oidc_org(app, tx, make_org, oidc_provider):
    """Acme, with acme.test verified and an enabled connection to the provider."""
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    return add_connection(app, tx, oidc_provider, "acme", "Acme SSO")


def add_connection(app, tx, peer, org_slug, name, **options):
    with tx() as session:
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug=org_slug, name=name,
            client_id="pending", client_secret="pending", issuer=peer.issuer, enabled=True,
            scopes=("openid", "email", "profile", "groups"),
            group_roles={"purchasing": "buyer", "it-admins": "org_owner"}, **options)
        client_id, secret = peer.register_client(f"{BASE}/sso/oidc/{row.id}/callback")
        row.settings = {**row.settings, "client_id": client_id}
        row.sealed_secrets = services_of(app).secrets.seal({"client_secret": secret})
        return row.id


def start(client, email, **extra):
    response = client.post("/login", data={"email": email, "csrf_token": csrf_token(client),
                                           **extra})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return response.headers["Location"]


def federated_login(client, peer, email, **extra):
    callback = peer.authorize(start(client, email, **extra), f"{BASE}/sso/")
    return client.get(callback.removeprefix(BASE))


def count(tx, model):
    with tx() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_first_login_provisions_into_the_organization(client, app, tx, oidc_org, oidc_provider):
    oidc_provider.put_account("jane@acme.test", name="Jane Doe", groups=["purchasing"])
    authorize_url = start(client, "Jane@Acme.test")
    query = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(oidc_provider.issuer)
    assert query["code_challenge_method"] == ["S256"] and query["login_hint"] == ["jane@acme.test"]
    assert query["redirect_uri"] == [f"{BASE}/sso/oidc/{oidc_org}/callback"]
    landing = client.get(oidc_provider.authorize(authorize_url, f"{BASE}/sso/")
                         .removeprefix(BASE))
    assert landing.status_code == 302 and landing.headers["Location"] == "/o/acme/"
    home = client.get("/o/acme/").get_data(as_text=True)
    assert "Welcome, Jane Doe" in home and "Acme Supplies" in home
    with tx() as session:
        user = session.scalar(sa.select(User))
        assert (user.email, user.password_hash) == ("jane@acme.test", None)
        assert session.scalar(sa.select(Membership)).source.value == "jit"
    assert roles(tx, "jane@acme.test") == {"buyer", "member"}
    login = audit_events(app, "auth.login")[-1]
    assert login.outcome == "success" and login.details["method"] == "oidc"


def test_second_login_updates_attributes_and_roles(client, app, tx, oidc_org, oidc_provider):
    oidc_provider.put_account("sam@acme.test", name="Sam", groups=["purchasing"])
    federated_login(client, oidc_provider, "sam@acme.test")
    with tx() as session:  # an admin grants a role by hand: the IdP must not take it away
        user = session.scalar(sa.select(User))
        services_of(app).role_grants.grant(session, user.id, 1, "auditor", "manual")
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    oidc_provider.put_account("sam@acme.test", name="Samantha", groups=["it-admins"])
    assert federated_login(client, oidc_provider, "sam@acme.test").status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(User.display_name)) == "Samantha"
    assert roles(tx, "sam@acme.test") == {"org_owner", "member", "auditor"}
    assert count(tx, User) == 1 and count(tx, FederatedIdentity) == 1


def test_email_outside_the_organizations_domains_is_refused(client, app, tx, oidc_org,
                                                            oidc_provider):
    oidc_provider.put_account("eve@acme.test", email="eve@elsewhere.test")
    response = federated_login(client, oidc_provider, "eve@acme.test")
    page = response.get_data(as_text=True)
    assert response.status_code == 403
    assert "Your email domain is not registered for this organization." in page
    assert response.headers["X-Request-ID"] in page
    assert count(tx, User) == 0 and client.get("/").status_code == 302
    failure = audit_events(app, "auth.login")[-1]
    assert (failure.outcome, failure.reason) == ("failure", "domain_not_verified")


def test_allowed_domains_shut_out_first_and_returning_sign_ins(client, app, tx, oidc_org,
                                                              oidc_provider):
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme-eu.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme-eu.test")
    oidc_provider.put_account("ola@acme-eu.test")
    assert federated_login(client, oidc_provider, "ola@acme-eu.test").status_code == 302
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    with tx() as session:
        connections.set_allowed_domains(session, CLI_CTX, session.get(Connection, oidc_org),
                                        ["ACME.test", "acme.test"])
        assert session.get(Connection, oidc_org).settings["allowed_domains"] == ["acme.test"]
    oidc_provider.put_account("new@acme-eu.test")
    for email in ("ola@acme-eu.test", "new@acme-eu.test"):
        response = federated_login(app.test_client(), oidc_provider, email)
        assert response.status_code == 403
        assert "may not sign in through this identity provider" in response.get_data(
            as_text=True)
        failure = audit_events(app, "auth.login")[-1]
        assert (failure.outcome, failure.reason) == ("failure", "domain_not_allowed")
    assert count(tx, User) == 1
    oidc_provider.put_account("kai@acme.test")
    assert federated_login(app.test_client(), oidc_provider, "kai@acme.test").headers[
        "Location"] == "/o/acme/"


def test_allowed_domains_reject_bad_names_and_too_long_lists(tx, oidc_org):
    from portal.errors import ValidationError
    with tx() as session:
        row = session.get(Connection, oidc_org)
        with pytest.raises(ValidationError, match="not a valid domain"):
            connections.set_allowed_domains(session, CLI_CTX, row, ["acme.test", "not a name"])
        with pytest.raises(ValidationError, match="At most 50"):
            connections.set_allowed_domains(session, CLI_CTX, row,
                                            [f"d{i}.test" for i in range(51)])


def test_existing_local_account_is_linked_only_with_its_password(client, app, tx, oidc_org,
                                                                 oidc_provider, make_user):
    make_user("lee@acme.test", display_name="Lee")
    oidc_provider.put_account("lee@acme.test", groups=["purchasing"])
    response = federated_login(client, oidc_provider, "lee@acme.test")
    assert response.status_code == 302 and response.headers["Location"] == "/sso/link"
    page = client.get("/sso/link").get_data(as_text=True)
    assert "An account with <strong>lee@acme.test</strong> already exists" in page
    assert count(tx, FederatedIdentity) == 0  # nothing linked silently
    wrong = client.post("/sso/link", data={"password": "not the password",
                                           "csrf_token": csrf_token(client, "/sso/link")})
    assert wrong.status_code == 401 and "not correct" in wrong.get_data(as_text=True)
    assert count(tx, FederatedIdentity) == 0 and client.get("/").status_code == 302
    from tests.conftest import PASSWORD
    done = client.post("/sso/link", data={"password": PASSWORD,
                                          "csrf_token": csrf_token(client, "/sso/link")})
    assert done.status_code == 302 and done.headers["Location"] == "/o/acme/"
    assert count(tx, FederatedIdentity) == 1 and roles(tx, "lee@acme.test") == {
        "buyer", "member"}
    [linked] = audit_events(app, "federation.link")
    assert linked.actor == "lee@acme.test" and linked.details["proof"] == "password"
    from portal.models import AuthSession
    with tx() as session:  # only the session in use stays open
        open_sessions = session.scalar(sa.select(sa.func.count()).select_from(AuthSession)
                                       .where(AuthSession.revoked_at.is_(None)))
    assert open_sessions == 1
    # From now on the company sign-in goes straight in.
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    again = federated_login(client, oidc_provider, "lee@acme.test")
    assert again.headers["Location"] == "/o/acme/"


def test_an_org_admin_links_a_refused_sign_in_to_the_existing_account(app, tx, oidc_org,
                                                                      oidc_provider,
                                                                      make_user):
    from tests.integration.test_admin_api import token_for
    from tests.integration.test_org_admin import as_user, grant, post
    lee = make_user("lee@acme.test", org="acme", password=None).id
    make_user("alice@acme.test", org="acme")
    grant(tx, "alice@acme.test", "acme", "user_manager")
    oidc_provider.put_account("lee@acme.test", groups=["purchasing"])
    refused = federated_login(app.test_client(), oidc_provider, "lee@acme.test")
    assert refused.headers["Location"] == "/sso/link" and count(tx, FederatedIdentity) == 0
    admin = as_user(app, "alice@acme.test")
    page = admin.get(f"/o/acme/admin/users/{lee}").get_data(as_text=True)
    assert "Waiting for a link" in page and "lee@acme.test" in page
    event_id = int(re.search(r'name="event_id" value="(\d+)"', page).group(1))
    api = app.test_client()
    listed = api.get(f"/api/v1/orgs/acme/members/{lee}/link-requests",
                     headers=token_for(tx, "alice@acme.test"))
    assert [r["event_id"] for r in listed.get_json()["link_requests"]] == [event_id]
    assert post(admin, f"/o/acme/admin/users/{lee}/links",
                event_id=str(event_id + 1000)).status_code == 404
    done = post(admin, f"/o/acme/admin/users/{lee}/links", event_id=str(event_id))
    assert done.status_code == 302 and count(tx, FederatedIdentity) == 1
    linked = audit_events(app, "federation.link")[-1]
    assert linked.actor == "alice@acme.test" and linked.details["proof"] == "admin"
    assert "Waiting for a link" not in admin.get(f"/o/acme/admin/users/{lee}").get_data(
        as_text=True)
    again = post(admin, f"/o/acme/admin/users/{lee}/links", event_id=str(event_id))
    assert again.status_code == 404  # one link per request
    back = federated_login(app.test_client(), oidc_provider, "lee@acme.test")
    assert back.headers["Location"] == "/o/acme/"


def test_link_offer_is_tied_to_the_browser_and_expires(client, app):
    response = client.get("/sso/link")
    assert response.status_code == 400 and "expired" in response.get_data(as_text=True)


def test_suspended_user_is_refused(client, app, tx, oidc_org, oidc_provider):
    from portal.services import users
    oidc_provider.put_account("kim@acme.test")
    federated_login(client, oidc_provider, "kim@acme.test")
    with tx() as session:
        users.suspend(session, CLI_CTX, "kim@acme.test")
    other = app.test_client()
    response = federated_login(other, oidc_provider, "kim@acme.test")
    assert response.status_code == 403 and "suspended" in response.get_data(as_text=True)


def test_unknown_domains_get_the_same_password_step(client, oidc_org):
    for email in ("someone@unknown.test", "someone@unverified.test"):
        response = client.post("/login", data={"email": email,
                                               "csrf_token": csrf_token(client)})
        page = response.get_data(as_text=True)
        assert response.status_code == 200 and 'name="password"' in page
        assert "Use a different email" in page


def test_several_connections_offer_a_choice(client, app, tx, oidc_org, oidc_provider):
    add_connection(app, tx, oidc_provider, "acme", "Acme Contractors")
    response = client.post("/login", data={"email": "jane@acme.test",
                                           "csrf_token": csrf_token(client)})
    page = response.get_data(as_text=True)
    assert "Choose how to sign in" in page
    assert "Acme SSO" in page and "Acme Contractors" in page


def test_org_sign_in_page_offers_its_connection(client, oidc_org):
    page = client.get("/o/acme/login").get_data(as_text=True)
    assert "Continue with Acme SSO" in page


def test_replayed_callback_is_refused(client, app, tx, oidc_org, oidc_provider):
    oidc_provider.put_account("ray@acme.test")
    callback = oidc_provider.authorize(start(client, "ray@acme.test"), f"{BASE}/sso/")
    with client.session_transaction() as saved:
        cookie_copy = dict(saved)  # an attacker's copy of the session before the callback
    assert client.get(callback.removeprefix(BASE)).status_code == 302
    replay = app.test_client()
    with replay.session_transaction() as session:
        session.update(cookie_copy)
    response = replay.get(callback.removeprefix(BASE))
    assert response.status_code == 400
    assert "already used" in response.get_data(as_text=True)
    assert audit_events(app, "auth.login")[-1].reason == "state_replayed"


def test_callback_in_another_browser_is_refused(client, app, oidc_org, oidc_provider):
    oidc_provider.put_account("ana@acme.test")
    callback = oidc_provider.authorize(start(client, "ana@acme.test"), f"{BASE}/sso/")
    other = app.test_client()
    response = other.get(callback.removeprefix(BASE))
    assert response.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "state_unknown"
    assert other.get("/").status_code == 302


def test_mixed_up_issuer_in_the_response_is_refused(client, app, oidc_org, oidc_provider):
    oidc_provider.put_account("mia@acme.test")
    callback = oidc_provider.authorize(start(client, "mia@acme.test"), f"{BASE}/sso/")
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["iss"] == oidc_provider.issuer  # the provider sends RFC 9207 iss
    query["iss"] = "https://attacker.example"
    response = client.get(f"{parts.path}?{urlencode(query)}")
    assert response.status_code == 400
    assert audit_events(app, "auth.login")[-1].reason == "iss_mismatch"


def test_code_is_single_use_at_the_provider(app, tx, oidc_org, oidc_provider):
    from federation.errors import FederationError
    from federation.identity import RequestContext
    oidc_provider.put_account("cy@acme.test")
    with tx() as session:
        settings = connections.oidc_settings(session.get(Connection, oidc_org),
                                             services_of(app).secrets,
                                             allow_insecure_loopback=True)
    adapter = services_of(app).oidc
    redirect = adapter.begin(settings, RequestContext(
        redirect_uri=f"{BASE}/sso/oidc/{oidc_org}/callback", login_hint="cy@acme.test"))
    callback = oidc_provider.authorize(redirect.url, f"{BASE}/sso/")
    params = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    identity = adapter.complete(settings, params, redirect.pending_state)
    assert identity.email == "cy@acme.test" and identity.email_verified
    with pytest.raises(FederationError) as caught:
        adapter.complete(settings, params, redirect.pending_state)
    assert caught.value.code == "token_error"


def test_provider_down_gives_a_clear_page(client, app, tx, oidc_org):
    with tx() as session:
        row = session.get(Connection, oidc_org)
        row.settings = {**row.settings, "issuer": "http://127.0.0.1:9"}
    response = client.post("/login", data={"email": "jane@acme.test",
                                           "csrf_token": csrf_token(client)})
    assert response.status_code == 502
    assert "could not be reached" in response.get_data(as_text=True)


def test_bad_id_token_ends_on_an_error_page_and_creates_nothing(client, app, tx, make_org,
                                                                rogue_provider):
    from tests.peers.rogue_op import CLIENT_ID, CLIENT_SECRET
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        connections.create_oidc(session, CLI_CTX, services_of(app).secrets, org_slug="acme",
                                name="Rogue", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                issuer=rogue_provider.issuer("expired"), enabled=True)
    location = start(client, "rogue@acme.test")
    callback = requests.get(location, allow_redirects=False, timeout=5).headers["Location"]
    response = client.get(callback.removeprefix(BASE))
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "We could not sign you in" in page and response.headers["X-Request-ID"] in page
    failure = audit_events(app, "auth.login")[-1]
    assert (failure.outcome, failure.reason) == ("failure", "id_token_expired")
    assert failure.request_id == response.headers["X-Request-ID"]
    assert count(tx, User) == 0 and client.get("/").status_code == 302
    api = client.get(callback.removeprefix(BASE), headers={"Accept": "application/json"})
    assert api.mimetype == "application/problem+json" and api.get_json()["code"]


def test_platform_oauth2_sign_in_creates_a_user_without_organization(client, app, tx,
                                                                     rogue_provider):
    from tests.peers.rogue_op import CLIENT_ID, CLIENT_SECRET
    base = rogue_provider.issuer("github")
    with tx() as session:
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug=None, name="GitHub",
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, preset="github", enabled=True,
            issuer=base,
            authorization_endpoint=f"{base}/auth", token_endpoint=f"{base}/token",
            userinfo_endpoint=f"{base}/userinfo", emails_verified=True)
    page = client.get("/login").get_data(as_text=True)
    assert "Continue with GitHub" in page
    assert "Continue with GitHub" not in client.get("/o/nowhere/login").get_data(as_text=True)
    start_page = client.post(f"/sso/{row.id}/start", data={"csrf_token": csrf_token(client)})
    query = parse_qs(urlsplit(start_page.headers["Location"]).query)
    assert "nonce" not in query and query["scope"] == ["read:user user:email"]
    callback = requests.get(start_page.headers["Location"], allow_redirects=False,
                            timeout=5).headers["Location"]
    landing = client.get(callback.removeprefix(BASE))
    assert landing.status_code == 302 and landing.headers["Location"] == "/"
    assert "You are not a member of any organization yet." in client.get("/").get_data(
        as_text=True)
    with tx() as session:
        user = session.scalar(sa.select(User))
        link = session.scalar(sa.select(FederatedIdentity))
    assert (user.email, user.display_name, link.subject) == ("octo@freelance.test",
                                                             "Octo Cat", "4242")
    assert count(tx, Membership) == 0


def test_test_mode_shows_claims_and_mapping_and_provisions_nothing(app, tx, oidc_org,
                                                                   oidc_provider, make_user):
    make_user("ops@trellis.test", operator=True)
    operator = app.test_client()
    from tests.conftest import sign_in as password_sign_in
    password_sign_in(operator, "ops@trellis.test")
    listing = operator.get("/admin/connections").get_data(as_text=True)
    assert "Acme SSO" in listing and "Test" in listing
    oidc_provider.put_account("tess@acme.test", name="Tess", groups=["purchasing"])
    start_test = operator.post(f"/sso/{oidc_org}/test", data={
        "csrf_token": csrf_token(operator, "/admin/connections"),
        "login_hint": "tess@acme.test"})
    callback = oidc_provider.authorize(start_test.headers["Location"], f"{BASE}/sso/")
    report = operator.get(callback.removeprefix(BASE))
    page = report.get_data(as_text=True)
    assert report.status_code == 200 and "A real sign-in would succeed" in page
    assert "tess@acme.test" in page and "buyer, member" in page
    assert "a new account would be created" in page and "<code>groups</code>" in page
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1  # the operator
    # A failing check is named on the page, and the operator stays signed in as themselves.
    oidc_provider.put_account("out@acme.test", email="out@elsewhere.test")
    start_test = operator.post(f"/sso/{oidc_org}/test", data={
        "csrf_token": csrf_token(operator, "/admin/connections"),
        "login_hint": "out@acme.test"})
    callback = oidc_provider.authorize(start_test.headers["Location"], f"{BASE}/sso/")
    page = operator.get(callback.removeprefix(BASE)).get_data(as_text=True)
    assert "A real sign-in would be refused" in page and "domain_not_verified" in page
    assert operator.get("/admin/").status_code == 200
    tests = audit_events(app, "auth.test_login")
    assert [(e.outcome, e.actor) for e in tests] == [("success", "ops@trellis.test"),
                                                     ("failure", "ops@trellis.test")]


def test_test_mode_is_for_operators_only(client, oidc_org, make_user):
    make_user("alice@acme.test", org="acme")
    from tests.conftest import sign_in as password_sign_in
    password_sign_in(client, "alice@acme.test")
    response = client.post(f"/sso/{oidc_org}/test", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 403
    assert client.get("/admin/connections").status_code == 403


def test_sso_managers_test_their_own_connection_only(app, tx, oidc_org, make_org, make_user):
    from tests.conftest import sign_in as password_sign_in
    make_org("globex", "Globex")
    manager = make_user("sm@acme.test", org="acme")
    make_user("plain@acme.test", org="acme")
    outsider = make_user("admin@globex.test", org="globex")
    with tx() as session:
        services_of(app).role_grants.grant(session, manager.id, 1, "sso_manager", "manual")
        services_of(app).role_grants.grant(session, outsider.id, 2, "sso_manager", "manual")
    services_of(app).policy.invalidate()
    expected = {"sm@acme.test": 302, "plain@acme.test": 403, "admin@globex.test": 404}
    for email, status in expected.items():
        browser = app.test_client()
        password_sign_in(browser, email)
        response = browser.post(f"/sso/{oidc_org}/test",
                                data={"csrf_token": csrf_token(browser, "/")})
        assert response.status_code == status, email
