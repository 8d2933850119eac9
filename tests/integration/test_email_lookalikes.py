"""One mailbox, one spelling: an address typed with Unicode look-alikes (full-width letters)
or with its domain in IDNA form reaches the same account at sign-in, password reset,
registration and email change, never a second account."""

import pytest
import sqlalchemy as sa

from portal.models import Registration, User
from portal.services import registration
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in
from tests.integration.test_password_reset import _forgot, _reset_link
from tests.integration.test_registration import _register
from tests.peers.smtp import text_of

pytestmark = pytest.mark.mail

FULL_WIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45@\uff21\uff23\uff2d\uff25.test"  # alice@ACME
UNICODE_DOMAIN = "jos\u00e9@b\u00fccher.example"
IDNA_DOMAIN = "JOS\u00c9@xn--bcher-kva.example"


@pytest.fixture
def people(make_org, make_user, tx):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        registration.set_mode(session, CLI_CTX, "acme", "open")
    make_user("alice@acme.test", org="acme")
    make_user(IDNA_DOMAIN, org="acme")  # stored in one spelling, whichever was typed


def test_look_alikes_reach_the_same_account_everywhere(app, client, people, smtp_server):
    # Stored once, in the Unicode spelling.
    with services_of(app).db.sessions() as session:
        assert UNICODE_DOMAIN in session.scalars(sa.select(User.email)).all()
    # Sign-in.
    assert sign_in(app.test_client(), FULL_WIDTH_ALICE).status_code == 302
    assert sign_in(app.test_client(), UNICODE_DOMAIN).status_code == 302
    # Password reset: the link goes to the account's own address.
    assert _forgot(client, FULL_WIDTH_ALICE).status_code == 200
    assert _reset_link(smtp_server, "alice@acme.test").startswith("/password/reset/")
    # Registration: the existing owner is told, no second sign-up is kept.
    assert _register(client, email=IDNA_DOMAIN.lower()).status_code == 200
    [mail] = smtp_server.wait_for(UNICODE_DOMAIN)
    assert "already have" in mail["Subject"]
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Registration)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 2
    # Email change to another account's address, typed as look-alikes: "taken".
    signed_in = app.test_client()
    sign_in(signed_in, "alice@acme.test")
    signed_in.post("/account/email", data={
        "csrf_token": csrf_token(signed_in, "/account/"),
        "new_email": "\uff2a\uff2f\uff33E\u0301@xn--bcher-kva.example", "password": PASSWORD})
    [notice] = [m for m in smtp_server.wait_for(UNICODE_DOMAIN, 2)
                if "already have" not in m["Subject"]]
    assert "nothing was changed" in text_of(notice)
    [event] = audit_events(app, "user.email_change_request")
    assert event.reason == "address_taken" and event.details["new_email"] == UNICODE_DOMAIN


@pytest.mark.parametrize("email", ["alice@acme.test\u200b", "alice@xn--zz.test"])
def test_invisible_or_broken_characters_are_a_form_error(app, client, people, email,
                                                         smtp_server):
    response = _register(client, email=email)
    assert response.status_code == 400
    assert "valid email address" in response.get_data(as_text=True)
