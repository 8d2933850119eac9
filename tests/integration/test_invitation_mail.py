"""Invitations are emailed through the outbox (and still shown to the admin)."""

import pytest
import sqlalchemy as sa

from portal.models import OutboxMessage, OutboxStatus
from tests.conftest import csrf_token, services_of
from tests.integration.test_org_admin import as_user, post
from tests.peers.smtp import links_in, text_of

LINK = 'id="invite-link" type="text" readonly value="'


pytestmark = pytest.mark.mail


def _shown_link(response) -> str:
    page = response.get_data(as_text=True)
    return page.split(LINK, 1)[1].split('"', 1)[0]


def test_the_invited_person_gets_the_link_by_email(app, two_orgs, smtp_server):
    uma = as_user(app, "uma@acme.test")
    response = post(uma, "/o/acme/admin/invitations", email="Nina@Acme.test", role="member")
    assert "emailed to them" in response.get_data(as_text=True)
    shown = _shown_link(response)
    [mail] = smtp_server.wait_for("nina@acme.test")
    assert mail["Subject"] == "You are invited to join Acme Supplies"
    assert shown in links_in(mail) and "uma@acme.test invited you" in text_of(mail)
    # A new link is mailed again, and the old one stops working.
    [pending_id] = _pending_invitation_ids(app)
    resent = post(uma, f"/o/acme/admin/invitations/{pending_id}/resend")
    second = smtp_server.wait_for("nina@acme.test", 2)[1]
    assert _shown_link(resent) in links_in(second) and shown not in links_in(second)


def test_smtp_down_the_invitation_waits_and_the_admin_is_told(app, two_orgs, smtp_server):
    smtp_server.stop()
    uma = as_user(app, "uma@acme.test")
    response = post(uma, "/o/acme/admin/invitations", email="nina@acme.test", role="member")
    page = response.get_data(as_text=True)
    assert "emailed to them shortly" in page and LINK in page
    with services_of(app).db.sessions() as session:
        [row] = session.scalars(sa.select(OutboxMessage)).all()
    assert row.status == OutboxStatus.PENDING and row.template == "invitation"


def test_an_invited_person_without_an_account_registers_then_accepts(app, two_orgs,
                                                                     smtp_server):
    uma = as_user(app, "uma@acme.test")
    path = _shown_link(post(uma, "/o/acme/admin/invitations", email="nina@example.test",
                            role="member")).replace("http://localhost", "")
    nina = app.test_client()
    token = csrf_token(nina, "/o/acme/register")
    signed_up = nina.post("/o/acme/register", data={
        "email": "nina@example.test", "password": "tangerine lighthouse okapi",
        "confirm": "tangerine lighthouse okapi", "accept_terms": "y", "csrf_token": token})
    assert signed_up.status_code == 200  # Acme is invitation only: the invitation lets her in
    verify = next(u for u in links_in(smtp_server.wait_for("nina@example.test", 2)[1])
              if "/register/verify/" in u).replace("http://localhost", "")
    nina.post(verify, data={"csrf_token": csrf_token(nina)})
    nina.post("/login", data={"email": "nina@example.test",
                              "password": "tangerine lighthouse okapi",
                              "csrf_token": csrf_token(nina)})
    joined = post(nina, path)
    assert joined.status_code == 302 and joined.headers["Location"] == "/o/acme/"


def _pending_invitation_ids(app):
    from portal.models import Invitation
    with services_of(app).db.sessions() as session:
        return list(session.scalars(sa.select(Invitation.id)))
