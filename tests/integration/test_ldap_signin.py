"""Sign-in by bind through the organization's sign-in flow, against a real slapd."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from portal.models import AuthSession, Connection, FederatedIdentity, Membership, User
from portal.services import connections, organizations
from portal.services.roles import roles_of
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of
from tests.peers.process import free_port
from tests.peers.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, USER_PASSWORD


def add_ldap(app, tx, server, org_slug="acme", **overrides):
    options = dict(urls=[server.url], bind_dn=SERVICE_DN, user_base=PEOPLE, group_base=GROUPS,
                   ca_cert_pem=server.tls.ca_pem if server.tls else "",
                   disabled_attribute="employeeType", disabled_values=["disabled"],
                   group_roles={"engineers": "user_manager", "auditors": "auditor"})
    if not server.tls:
        options.update(start_tls=False, allow_plain=True)
    options.update(overrides)
    password = options.pop("bind_password", SERVICE_PASSWORD)
    with tx() as session:
        return connections.create_ldap(session, CLI_CTX, services_of(app).secrets,
                                       org_slug=org_slug, name="Acme directory",
                                       bind_password=password, enabled=True, **options).id


@pytest.fixture
def ldap_org(app, tx, make_org, slapd):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    return add_ldap(app, tx, slapd)


def post_login(client, email, password=None, path="/login"):
    data = {"email": email, "csrf_token": csrf_token(client, path)}
    if password is not None:
        data["password"] = password
    return client.post(path, data=data)


def roles(tx, email):
    with tx() as session:
        user = session.scalar(sa.select(User).where(User.email == email))
        org_id = session.scalar(sa.select(Membership.organization_id)
                                .where(Membership.user_id == user.id))
        return roles_of(session, user.id, org_id)


def test_email_of_a_directory_domain_gets_the_password_step(client, ldap_org):
    page = post_login(client, "alice@acme.test")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'type="password"' in text
    assert 'readonly' in text  # the email step is done


def test_first_bind_sign_in_provisions_with_nested_group_roles(client, app, tx, ldap_org):
    response = post_login(client, "alice@acme.test", USER_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/o/acme/"
    assert "Welcome, Alice Archer" in client.get("/o/acme/").get_data(as_text=True)
    with tx() as session:
        user = session.scalar(sa.select(User))
        link = session.scalar(sa.select(FederatedIdentity))
        assert (user.email, user.password_hash) == ("alice@acme.test", None)
        assert link.connection_id == ldap_org and "uid=" not in link.subject
        # The organization's directory, for an address in its verified domain: level 2.
        assert (user.identity_level, user.identity_method) == (2, "ldap")
    assert roles(tx, "alice@acme.test") == {"user_manager", "member"}
    login = audit_events(app, "auth.login")[-1]
    assert login.outcome == "success" and login.details["method"] == "ldap"


def test_username_on_the_organizations_page(client, tx, ldap_org):
    response = post_login(client, "bob", USER_PASSWORD, path="/o/acme/login")
    assert response.status_code == 302
    assert roles(tx, "bob@acme.test") == {"auditor", "member"}
    # the same person by email afterwards: the same account (linked by entryUUID)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert post_login(client, "bob@acme.test", USER_PASSWORD).status_code == 302
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_wrong_password_fails_like_a_local_one_and_creates_nothing(client, app, tx, ldap_org):
    response = post_login(client, "alice@acme.test", "not it")
    assert response.status_code == 401
    assert "The email or password is not correct." in response.get_data(as_text=True)
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
    failure = audit_events(app, "auth.login")[-1]
    assert (failure.outcome, failure.reason) == ("failure", "wrong_password")


def test_empty_password_never_signs_in(client, tx, ldap_org):
    token = csrf_token(client)
    response = client.post("/login", data={"email": "alice@acme.test", "password": "",
                                           "csrf_token": token})
    # an empty password is no password: the form asks for one, nothing binds
    assert response.status_code == 200 and 'type="password"' in response.get_data(as_text=True)
    response = post_login(client, "alice", " ", path="/o/acme/login")
    assert response.status_code == 401
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuthSession)) == 0


def test_filter_metacharacters_and_unknown_users(client, tx, ldap_org):
    for name in ("*", "al*", "*)(uid=*", "al\\2aice"):
        response = post_login(client, name, USER_PASSWORD, path="/o/acme/login")
        assert response.status_code == 401, name
    # A control character never reaches the directory: the form refuses it.
    assert post_login(client, "alice\x00", USER_PASSWORD, path="/o/acme/login"
                      ).status_code == 400
    assert post_login(client, "nobody@acme.test", USER_PASSWORD).status_code == 401
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_two_entries_with_one_email(client, ldap_org):
    response = post_login(client, "dup@acme.test", USER_PASSWORD)
    assert response.status_code == 409
    assert "More than one account" in response.get_data(as_text=True)


def test_lockout_applies_to_directory_sign_ins(client, app, ldap_org):
    for _ in range(app.config["LOGIN_FREE_FAILURES"]):
        post_login(client, "alice@acme.test", "guess")
    locked = post_login(client, "alice@acme.test", USER_PASSWORD)
    assert locked.status_code == 429 and "Retry-After" in locked.headers
    assert audit_events(app, "auth.lockout")


def test_directory_sign_ins_are_rate_limited(settings, tx, ldap_org):
    from portal import create_app
    limited = create_app({**settings, "LOGIN_RATE_LIMIT": "3/minute"})
    client = limited.test_client()
    # different names, so no account lockout (5 failures) can be what answers 429
    statuses = [post_login(client, f"nobody{i}", "x", path="/o/acme/login").status_code
                for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    services_of(limited).db.dispose()


def test_unreachable_directory_shows_a_reference_and_changes_nothing(client, app, tx,
                                                                     make_org, slapd):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    add_ldap(app, tx, slapd, urls=[f"ldap://127.0.0.1:{free_port()}"])
    response = post_login(client, "alice@acme.test", USER_PASSWORD)
    text = response.get_data(as_text=True)
    assert response.status_code == 503 and "could not be reached" in text
    assert "Reference" in text or "reference" in text
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_untrusted_certificate_is_refused(client, app, tx, make_org, slapd):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    add_ldap(app, tx, slapd, urls=[slapd.ldaps_url], ca_cert_pem="")
    response = post_login(client, "alice@acme.test", USER_PASSWORD)
    assert response.status_code == 503
    assert audit_events(app, "auth.login")[-1].reason == "tls_untrusted"


def test_disabled_and_incomplete_entries_are_refused_plainly(client, ldap_org):
    disabled = post_login(client, "erin@acme.test", USER_PASSWORD)
    assert disabled.status_code == 403 and "disabled" in disabled.get_data(as_text=True)
    missing = post_login(client, "carol", USER_PASSWORD, path="/o/acme/login")
    assert missing.status_code == 403
    assert "lacks something" in missing.get_data(as_text=True)


def test_existing_local_account_is_offered_linking(client, make_user, ldap_org):
    make_user("alice@acme.test", org="acme")
    response = post_login(client, "alice@acme.test", USER_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/sso/link"


def test_connection_test_page_and_cli(app, tx, ldap_org, make_user):
    make_user("ops@trellis.test", operator=True)
    operator = app.test_client()
    from tests.conftest import sign_in as password_sign_in
    password_sign_in(operator, "ops@trellis.test")
    page = operator.post(f"/sso/{ldap_org}/test", data={
        "csrf_token": csrf_token(operator, "/admin/connections"), "login_hint": "alice"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "The service account can read the directory" in text
    assert "Users found</dt><dd>7" in text and "Groups found</dt><dd>4" in text
    assert "alice@acme.test" in text and "user_manager" in text
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1  # operator

    from portal.cli import main
    runner = CliRunner()
    result = runner.invoke(main, ["ldap", "test", str(ldap_org), "--user", "bob"],
                           obj=_script_info(app))
    assert result.exit_code == 0, result.output
    assert "users: 7" in result.output and "bob@acme.test" in result.output
    with tx() as session:
        row = session.get(Connection, ldap_org)
        row.sealed_secrets = services_of(app).secrets.seal({"bind_password": "wrong"})
    bad = operator.post(f"/sso/{ldap_org}/test", data={
        "csrf_token": csrf_token(operator, "/admin/connections")})
    assert "service_bind_failed" in bad.get_data(as_text=True)
    assert "refused the service account" in bad.get_data(as_text=True)
    result = runner.invoke(main, ["ldap", "test", str(ldap_org)], obj=_script_info(app))
    assert result.exit_code == 1 and "service_bind_failed" in result.output


def _script_info(app):
    from flask.cli import ScriptInfo
    return ScriptInfo(create_app=lambda: app)


def test_directory_chosen_among_several_connections(client, app, tx, ldap_org):
    with tx() as session:  # a second way in: the choice page appears
        connections.create_oidc(session, CLI_CTX, services_of(app).secrets, org_slug="acme",
                                name="Acme SSO", client_id="c", client_secret="s",
                                issuer="https://idp.acme.test", enabled=True)
    choice = post_login(client, "alice@acme.test")
    assert "Choose how to sign in" in choice.get_data(as_text=True)
    form = client.post(f"/sso/{ldap_org}/start", data={
        "csrf_token": csrf_token(client), "login_hint": "alice@acme.test"})
    text = form.get_data(as_text=True)
    assert form.status_code == 200 and 'action="/o/acme/login"' in text
    assert 'value="alice@acme.test"' in text
    signed_in = post_login(client, "alice@acme.test", USER_PASSWORD, path="/o/acme/login")
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == "/o/acme/"


def test_only_the_organizations_sso_managers_test_its_directory(app, tx, ldap_org, make_org,
                                                                  make_user):
    from tests.conftest import sign_in as password_sign_in
    make_org("globex", "Globex")
    # local accounts outside acme.test (whose passwords the directory checks)
    manager = make_user("sm@partners.test", org="acme")
    make_user("plain@partners.test", org="acme")
    outsider = make_user("admin@globex.test", org="globex")
    with tx() as session:
        services_of(app).role_grants.grant(session, manager.id, 1, "sso_manager", "manual")
        services_of(app).role_grants.grant(session, outsider.id, 2, "sso_manager", "manual")
    services_of(app).policy.invalidate()
    expected = {"sm@partners.test": 200, "plain@partners.test": 403, "admin@globex.test": 404}
    for email, status in expected.items():
        browser = app.test_client()
        password_sign_in(browser, email)
        response = browser.post(f"/sso/{ldap_org}/test",
                                data={"csrf_token": csrf_token(browser, "/")})
        assert response.status_code == status, email
        assert ("Users found" in response.get_data(as_text=True)) == (status == 200)
