"""Second factors as users meet them: setting up an authenticator app, the code step of
sign-in, recovery codes, the organization's policy, and step-up before sensitive changes."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
import sqlalchemy as sa

from portal.errors import ValidationError
from portal.models import Membership, MembershipStatus, Organization, RecoveryCode, TotpFactor
from portal.services import mfa, organizations, roles, users
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in

SECRET = re.compile(r'id="totp-secret">([A-Z2-7]+)<')
CODES = re.compile(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>")


def enroll(client) -> tuple[str, list[str]]:
    """Set up TOTP from the account page; returns the secret and the recovery codes."""
    page = client.get("/account/security/totp")
    assert page.status_code == 200, page.headers.get("Location")
    html = page.get_data(as_text=True)
    assert 'src="data:image/svg+xml' in html  # the QR code, rendered server-side
    secret = SECRET.search(html).group(1)
    token = csrf_token(client, "/account/security/totp")
    done = client.post("/account/security/totp", data={
        "code": previous_code(secret), "csrf_token": token})
    assert done.status_code == 200
    codes = CODES.findall(done.get_data(as_text=True))
    assert len(codes) == 10
    return secret, codes


def previous_code(secret: str) -> str:
    """A code of the previous 30-second step (still accepted: clocks drift). Enrolling with
    it leaves the current and the next step's codes for the sign-in and a step-up."""
    return pyotp.TOTP(secret).at(clear_of_step_end() - 30)


def clear_of_step_end() -> float:
    """Now, once the last second of a 30-second step is over: a previous-step code made in
    that second is two steps old when the server checks it a moment later, and refused."""
    left = 30 - time.time() % 30
    if left < 1:
        time.sleep(left + 0.01)
    return time.time()


def confirmed_totp(app, email: str) -> str:
    """An authenticator app set up for the user directly through the service; its secret."""
    services = services_of(app)
    with services.db.transaction() as session:
        user = users.get_by_email(session, email)
        secret = mfa.begin_totp(session, services.secrets, user).secret
        mfa.confirm_totp(session, CLI_CTX, services.secrets, services.passwords, user,
                         previous_code(secret))
    return secret


def next_code(secret: str) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30)


def send_code(client, code: str, path: str = "/login/mfa", form_page: str | None = None,
              **extra):
    token = csrf_token(client, form_page or path)
    return client.post(path, data={"code": code, "csrf_token": token, **extra})


def grant(tx, email: str, role: str, slug: str = "acme") -> None:
    with tx() as session:
        roles.grant_manually(session, CLI_CTX, users.get_by_email(session, email),
                             organizations.get(session, slug), role, {role})


@pytest.fixture
def alice(make_org, make_user):
    make_org("acme", "Acme Supplies")
    return make_user("alice@acme.test", org="acme", display_name="Alice")


def test_enroll_then_sign_in_with_password_and_code(client, app, alice):
    sign_in(client, "alice@acme.test")
    secret, codes = enroll(client)
    with services_of(app).db.sessions() as s:
        row = s.scalar(sa.select(TotpFactor))
        assert row.confirmed_at is not None and secret not in row.sealed_secret  # sealed
        hashes = [r.code_hash for r in s.scalars(sa.select(RecoveryCode))]
        assert len(hashes) == 10 and all(h.startswith("$argon2id$") for h in hashes)
        assert not any(c.replace("-", "") in h for c in codes for h in hashes)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})

    response = sign_in(client, "alice@acme.test")
    assert response.status_code == 302 and response.headers["Location"] == "/login/mfa"
    assert client.get("/").status_code == 302  # not signed in before the code
    response = send_code(client, pyotp.TOTP(secret).now())
    assert response.status_code == 302 and response.headers["Location"] == "/"
    with client.session_transaction() as session:
        assert session["assurance"] == 2 and "otp" in session["amr"]
    assert "Welcome, Alice" in client.get("/").get_data(as_text=True)
    assert [e.outcome for e in audit_events(app, "auth.mfa")] == ["success"]
    assert [e.outcome for e in audit_events(app, "mfa.totp_enroll")] == ["success"]
    from portal.models import OutboxMessage
    with services_of(app).db.sessions() as s:
        [mail] = s.scalars(sa.select(OutboxMessage)).all()
        assert (mail.to_address, mail.template) == ("alice@acme.test", "mfa_changed")
        assert "an authenticator app was set up" in mail.text_body
        assert "http://localhost/account/security" in mail.text_body


def test_wrong_code_is_refused_and_audited(client, app, alice):
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    totp, now = pyotp.TOTP(secret), time.time()
    window = {totp.at(now + drift) for drift in (-60, -30, 0, 30, 60)}
    wrong = next(c for c in (f"{n:06d}" for n in range(1000)) if c not in window)
    response = send_code(client, wrong)
    assert response.status_code == 401
    assert "not correct" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302
    [event] = audit_events(app, "auth.mfa")
    assert (event.outcome, event.reason) == ("failure", "invalid_code")


def test_a_code_is_accepted_only_once_inside_its_window(client, app, alice):
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)  # used the previous step's code
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    response = send_code(client, previous_code(secret))  # the same code, still in its window
    assert response.status_code == 401
    assert client.get("/").status_code == 302


def test_a_recovery_code_works_once(client, app, alice):
    sign_in(client, "alice@acme.test")
    _, codes = enroll(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    response = send_code(client, codes[3].upper())
    assert response.status_code == 302 and response.headers["Location"] == "/"
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    response = send_code(client, codes[3])
    assert response.status_code == 401
    [ok] = [e for e in audit_events(app, "auth.mfa") if e.outcome == "success"]
    assert ok.details["method"] == "recovery" and ok.details["recovery_codes_left"] == 9


def test_wrong_codes_lock_the_step_like_passwords(client, app, alice):
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    for _ in range(app.config["LOGIN_FREE_FAILURES"]):
        send_code(client, "000000")
    response = send_code(client, pyotp.TOTP(secret).now())  # right code, but locked
    assert response.status_code == 429 and "Retry-After" in response.headers
    assert client.get("/").status_code == 302
    assert [e.reason for e in audit_events(app, "auth.lockout")] == ["mfa_account_locked"]


def test_enrollment_needs_a_recent_sign_in(client, app, alice):
    sign_in(client, "alice@acme.test")
    with client.session_transaction() as session:
        session["auth_time"] = int(time.time()) - 3600
    response = client.get("/account/security/totp")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    token = csrf_token(client, "/account/security")
    response = client.post("/account/security/totp", data={"code": "123456",
                                                           "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    with services_of(app).db.sessions() as s:
        assert s.scalar(sa.select(TotpFactor)) is None


def test_wrong_first_code_does_not_turn_mfa_on(client, app, alice):
    sign_in(client, "alice@acme.test")
    client.get("/account/security/totp")
    token = csrf_token(client, "/account/security/totp")
    response = client.post("/account/security/totp", data={"code": "000000",
                                                           "csrf_token": token})
    assert response.status_code == 401
    with services_of(app).db.sessions() as s:
        assert not mfa.has_second_factor(s, alice.id)
    assert audit_events(app, "mfa.totp_enroll")[0].outcome == "failure"


@pytest.mark.parametrize("policy", ["all", "admins"])
def test_policy_forces_enrollment_at_next_sign_in(client, app, tx, alice, make_user, policy):
    with tx() as session:
        org = session.scalar(sa.select(Organization).where(Organization.slug == "acme"))
        mfa.set_policy(session, CLI_CTX, org, policy)
    if policy == "admins":
        grant(tx, "alice@acme.test", "user_manager")
    make_user("bob@acme.test", org="acme")
    response = sign_in(client, "alice@acme.test")
    assert response.headers["Location"] == "/login/mfa/setup"
    assert client.get("/").status_code == 302
    page = client.get("/login/mfa/setup").get_data(as_text=True)
    assert "Your organization requires a second factor" in page
    secret = SECRET.search(page).group(1)
    done = send_code(client, pyotp.TOTP(secret).now(), "/login/mfa/setup")
    assert done.status_code == 200 and len(CODES.findall(done.get_data(as_text=True))) == 10
    assert client.get("/").status_code == 200
    with client.session_transaction() as session:
        assert session["assurance"] == 2

    other = app.test_client()  # bob: no admin role
    response = sign_in(other, "bob@acme.test")
    expected = "/login/mfa/setup" if policy == "all" else "/"
    assert response.headers["Location"] == expected


def test_policy_only_counts_active_memberships(app, tx, alice):
    with tx() as session:
        org = session.scalar(sa.select(Organization).where(Organization.slug == "acme"))
        mfa.set_policy(session, CLI_CTX, org, "all")
        assert mfa.required_for(session, alice.id)
        session.execute(sa.update(Membership).values(status=MembershipStatus.SUSPENDED))
        assert not mfa.required_for(session, alice.id)


def test_pending_sign_in_cannot_reach_pages_and_expires(client, app, alice):
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    assert client.get("/account/security").status_code == 302
    assert client.get("/login/step-up").status_code == 302
    with client.session_transaction() as session:
        sealed = services_of(app).secrets.open(session["mfa_pending"])
        sealed["at"] -= 3600
        session["mfa_pending"] = services_of(app).secrets.seal(sealed)
    response = send_code(client, pyotp.TOTP(secret).now(), form_page="/login")
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/").status_code == 302


# ---- step-up


@pytest.fixture
def admin_with_mfa(client, app, tx, alice, make_user):
    grant(tx, "alice@acme.test", "org_owner")
    bob = make_user("bob@acme.test", org="acme")
    sign_in(client, "alice@acme.test")
    secret, _ = enroll(client)
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    sign_in(client, "alice@acme.test")
    assert send_code(client, pyotp.TOTP(secret).now()).headers["Location"] == "/"
    return secret, bob


def _age_second_factor(client, minutes: int = 60) -> None:
    with client.session_transaction() as session:
        session["mfa_at"] = int(time.time()) - minutes * 60


def bob_status(app, bob) -> str:
    with services_of(app).db.sessions() as s:
        return s.scalar(sa.select(Membership.status).where(Membership.user_id == bob.id)).value


def test_sensitive_change_without_recent_code_is_refused(client, app, admin_with_mfa):
    secret, bob = admin_with_mfa
    _age_second_factor(client)
    page = f"/o/acme/admin/users/{bob.id}"
    token = csrf_token(client, page)
    response = client.post(f"{page}/suspend", data={"csrf_token": token},
                           headers={"Referer": f"http://localhost{page}"})
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login/step-up?next=")
    assert bob_status(app, bob) == "active"
    [event] = audit_events(app, "auth.step_up")
    assert event.reason == "step_up_required" and "manage member in acme" in \
        event.details["wanted"]
    # The same call as JSON is a 403 with a stable code.
    response = client.post(f"{page}/suspend", data={"csrf_token": token},
                           headers={"Accept": "application/json"})
    assert response.status_code == 403 and response.json["code"] == "step_up_required"

    # A fresh code, then the change goes through.
    response = send_code(client, next_code(secret), "/login/step-up", next=page)
    assert response.status_code == 302 and response.headers["Location"] == page
    response = client.post(f"{page}/suspend", data={"csrf_token": token})
    assert response.status_code == 302 and bob_status(app, bob) == "suspended"


def test_recent_code_at_sign_in_is_enough(client, app, admin_with_mfa):
    _, bob = admin_with_mfa
    page = f"/o/acme/admin/users/{bob.id}"
    response = client.post(f"{page}/suspend", data={"csrf_token": csrf_token(client, page)})
    assert response.status_code == 302 and bob_status(app, bob) == "suspended"


def test_admin_api_with_the_browser_session_needs_step_up_too(client, app, admin_with_mfa):
    _, bob = admin_with_mfa
    _age_second_factor(client)
    token = csrf_token(client, "/o/acme/admin/users")
    response = client.post(f"/api/v1/orgs/acme/members/{bob.id}/suspend",
                           headers={"X-CSRFToken": token})
    assert response.status_code == 403 and response.json["code"] == "step_up_required"
    assert bob_status(app, bob) == "active"


def test_own_security_settings_need_step_up(client, app, admin_with_mfa):
    _age_second_factor(client)
    token = csrf_token(client, "/account/security")
    response = client.post("/account/security/totp/remove", data={"csrf_token": token})
    assert response.status_code == 302 and "/login/step-up" in response.headers["Location"]
    with services_of(app).db.sessions() as s:
        assert s.scalar(sa.select(TotpFactor)) is not None


def test_users_without_a_second_factor_are_not_asked(client, app, tx, alice, make_user):
    grant(tx, "alice@acme.test", "org_owner")
    bob = make_user("bob@acme.test", org="acme")
    sign_in(client, "alice@acme.test", PASSWORD)
    page = f"/o/acme/admin/users/{bob.id}"
    response = client.post(f"{page}/suspend", data={"csrf_token": csrf_token(client, page)})
    assert response.status_code == 302 and bob_status(app, bob) == "suspended"


# ---- federated sign-in


@pytest.fixture
def sso_org(app, tx, make_org, oidc_provider):
    from tests.integration.test_oidc_signin import add_connection
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        mfa.set_policy(session, CLI_CTX, organizations.get(session, "acme"), "all")
    return add_connection(app, tx, oidc_provider, "acme", "Acme SSO")


def trust(tx, connection_id: int, value: bool) -> None:
    from portal.models import Connection
    with tx() as session:
        mfa.set_idp_mfa_trust(session, CLI_CTX, session.get(Connection, connection_id), value)


@pytest.mark.parametrize(("trusted", "amr", "lands_on"), [
    (True, ["pwd", "mfa"], "/o/acme/"),        # trusted and multi-factor: no code step
    (True, ["pwd"], "/login/mfa/setup"),       # trusted, but the IdP used a password only
    (False, ["pwd", "otp"], "/login/mfa/setup"),  # multi-factor, but not trusted
])
def test_federated_sign_in_and_the_idps_own_mfa(client, app, tx, sso_org, oidc_provider,
                                                trusted, amr, lands_on):
    from tests.integration.test_oidc_signin import federated_login
    trust(tx, sso_org, trusted)
    oidc_provider.put_account("jane@acme.test", name="Jane Doe", amr=amr)
    response = federated_login(client, oidc_provider, "jane@acme.test")
    assert response.status_code == 302 and response.headers["Location"] == lands_on
    if trusted and "mfa" in amr:
        with client.session_transaction() as session:
            assert session["assurance"] == 2 and session["amr"] == ["fed", "mfa"]
    else:
        assert client.get("/o/acme/").status_code == 302  # not signed in yet


def test_federated_user_with_a_factor_gets_the_code_step(client, app, tx, sso_org,
                                                         oidc_provider):
    from tests.integration.test_oidc_signin import federated_login
    oidc_provider.put_account("jane@acme.test", name="Jane Doe")
    response = federated_login(client, oidc_provider, "jane@acme.test")
    secret = SECRET.search(client.get(response.headers["Location"]).get_data(as_text=True))\
        .group(1)
    assert send_code(client, previous_code(secret), "/login/mfa/setup").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    response = federated_login(client, oidc_provider, "jane@acme.test")
    assert response.headers["Location"] == "/login/mfa"
    response = send_code(client, pyotp.TOTP(secret).now())
    assert response.status_code == 302 and response.headers["Location"] == "/o/acme/"
    with client.session_transaction() as session:
        assert session["amr"] == ["fed", "otp", "mfa"]


def test_organization_admin_sets_the_policy_and_trust(client, app, tx, sso_org):
    with tx() as session:
        mfa.set_policy(session, CLI_CTX, organizations.get(session, "acme"), "off")
        users.create(session, CLI_CTX, services_of(app).passwords, email="owner@acme.test",
                     password=PASSWORD, org_slug="acme")
    grant(tx, "owner@acme.test", "org_owner")
    sign_in(client, "owner@acme.test")
    page = client.get("/o/acme/admin/security").get_data(as_text=True)
    assert "Required for every member" in page and "Acme SSO" in page
    token = csrf_token(client, "/o/acme/admin/security")
    response = client.post("/o/acme/admin/security", data={
        "csrf_token": token, "policy": "admins", "trust_idp_mfa": str(sso_org)})
    assert response.status_code == 302
    with tx() as session:
        assert organizations.get(session, "acme").mfa_policy.value == "admins"
    event = audit_events(app, "organization.mfa_policy")[-1]
    assert event.details == {"before": "off", "after": "admins"}
    assert event.actor == "owner@acme.test"
    assert any(e.details.get("trust_idp_mfa") == [False, True]
               for e in audit_events(app, "connection.update"))
    response = client.post("/o/acme/admin/security", data={"csrf_token": token,
                                                           "policy": "sometimes"})
    assert response.status_code == 400
    with tx() as session:
        assert organizations.get(session, "acme").mfa_policy.value == "admins"


# ---- what apps are told


def test_the_openid_provider_reports_the_second_factor(app, op):
    from tests.integration.provider_helpers import (
        callback_params,
        consent,
        http,
        register,
        rp,
        start,
    )
    from tests.integration.test_provider_flow import validate_id_token
    secret = confirmed_totp(app, "alice@acme.test")
    browser = http.__class__()
    page = browser.get(op + "/login")
    answer = browser.post(op + "/login", data={
        "email": "alice@acme.test", "password": PASSWORD,
        "csrf_token": re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page.text)
        .group(1)}, allow_redirects=False)
    assert answer.headers["Location"] == "/login/mfa"
    page = browser.get(op + "/login/mfa")
    answer = browser.post(op + "/login/mfa", data={
        "code": pyotp.TOTP(secret).now(),
        "csrf_token": re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page.text)
        .group(1)}, allow_redirects=False)
    assert answer.status_code == 302
    registered = register(app)
    client = rp(op, registered)
    response, verifier, nonce, _ = start(op, client, browser)
    if response.status_code == 200:
        response = consent(op, browser, response)
    token = client.fetch_token(op + "/oauth/token", code=callback_params(response)["code"],
                               code_verifier=verifier)
    claims = validate_id_token(op, token["id_token"], registered.client_id, nonce)
    assert claims["acr"] == "urn:trellis:loa:2" and claims["amr"] == ["pwd", "otp", "mfa"]


def test_an_app_asking_for_level_2_gets_a_step_up_first(app, op):
    """acr_values=urn:trellis:loa:2 with a password-only session: the user confirms with a
    code, then the app gets acr loa:2; prompt=none gets interaction_required instead."""
    from tests.integration.provider_helpers import (
        browser_login,
        callback_params,
        consent,
        register,
        rp,
        start,
    )
    from tests.integration.test_provider_flow import validate_id_token
    browser = browser_login(op, "alice@acme.test")  # no second factor yet: level 1
    secret = confirmed_totp(app, "alice@acme.test")  # then one is set up (on a phone)
    registered = register(app)
    client = rp(op, registered)
    quiet, _, _, _ = start(op, client, browser, acr_values="urn:trellis:loa:2", prompt="none")
    assert callback_params(quiet)["error"] == "interaction_required"
    response, verifier, nonce, _ = start(op, client, browser, acr_values="urn:trellis:loa:2")
    assert response.status_code == 302
    step_up = response.headers["Location"]
    assert step_up.startswith("/login/step-up?next=")
    page = browser.get(op + step_up)
    token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page.text).group(1)
    next_url = re.search(r'name="next" value="([^"]+)"', page.text).group(1)
    answer = browser.post(op + "/login/step-up", data={
        "code": pyotp.TOTP(secret).now(), "csrf_token": token,
        "next": next_url.replace("&amp;", "&")}, allow_redirects=False)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(
        "/oauth/authorize?")
    response = browser.get(op + answer.headers["Location"], allow_redirects=False)
    if response.status_code == 200:
        response = consent(op, browser, response)
    tokens = client.fetch_token(op + "/oauth/token", code=callback_params(response)["code"],
                                code_verifier=verifier)
    claims = validate_id_token(op, tokens["id_token"], registered.client_id, nonce)
    assert claims["acr"] == "urn:trellis:loa:2" and claims["amr"] == ["pwd", "otp", "mfa"]


# ---- directory (LDAP) sign-in


def test_directory_admins_must_set_up_a_second_factor(client, app, tx, make_org, slapd):
    """alice is an engineer in the directory, mapped to user_manager: under the admins
    policy her first bind sign-in continues at the enrollment step."""
    from portal.models import Connection
    from tests.integration.test_ldap_signin import add_ldap, post_login
    from tests.peers.slapd import USER_PASSWORD
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        mfa.set_policy(session, CLI_CTX, organizations.get(session, "acme"), "admins")
    connection_id = add_ldap(app, tx, slapd)
    response = post_login(client, "alice@acme.test", USER_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/login/mfa/setup"
    assert client.get("/o/acme/").status_code == 302
    page = client.get("/login/mfa/setup").get_data(as_text=True)
    secret = SECRET.search(page).group(1)
    assert send_code(client, previous_code(secret), "/login/mfa/setup").status_code == 200
    assert client.get("/o/acme/").status_code == 200
    with client.session_transaction() as session:
        assert session["amr"] == ["pwd", "otp", "mfa"]
    # A bind proves a password only: a directory cannot be trusted for MFA.
    with tx() as session, pytest.raises(ValidationError, match="cannot vouch"):
        mfa.set_idp_mfa_trust(session, CLI_CTX, session.get(Connection, connection_id), True)


def test_password_and_email_changes_need_step_up(client, app, alice):
    """Security settings on the account page: a user with a second factor last used an
    hour ago is sent to confirm it before changing the password or the email."""
    sign_in(client, "alice@acme.test")
    enroll(client)
    _age_second_factor(client)
    token = csrf_token(client, "/account/password")
    response = client.post("/account/password", data={
        "current": PASSWORD, "password": "a whole new passphrase 42",
        "confirm": "a whole new passphrase 42", "csrf_token": token},
        headers={"Referer": "http://localhost/account/password"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login/step-up?next=/account/password"
    response = client.post("/account/email", data={"email": "alice@new.test",
                                                   "csrf_token": token})
    assert "/login/step-up" in response.headers["Location"]
    assert [e.details["endpoint"] for e in audit_events(app, "auth.step_up")] == [
        "account.change_password", "account.change_email"]
    assert audit_events(app, "password.change") == []


def test_organization_admins_see_their_members_sign_in_risk_only(app, tx, alice, make_org,
                                                                 make_user):
    make_org("globex", "Globex")
    make_user("gina@globex.test", org="globex")
    grant(tx, "alice@acme.test", "org_owner")
    sign_in(app.test_client(), "gina@globex.test")
    owner = app.test_client()
    sign_in(owner, "alice@acme.test")
    page = owner.get("/o/acme/admin/security").get_data(as_text=True)
    assert "Recent sign-ins and their risk" in page
    assert "alice@acme.test" in page and "new_device, new_network" in page
    assert "gina@globex.test" not in page
