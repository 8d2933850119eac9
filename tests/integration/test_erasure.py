"""Deleting an account: asked on the account page (re-authenticated), a grace period during
which signing in cancels it, then erasure by the worker or an operator. The audit chain
still verifies and names the person only by a keyed hash."""

import json
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from portal import audit
from portal.cli import main
from portal.db import utcnow
from portal.models import (
    AuditEvent,
    AuthSession,
    Connection,
    ConsentRecord,
    FederatedIdentity,
    Membership,
    OutboxMessage,
    ProfileValue,
    Protocol,
    RoleGrant,
    User,
    UserStatus,
)
from portal.services import gdpr, outbox
from tests.conftest import CLI_CTX, PASSWORD, audit_events, csrf_token, services_of, sign_in


@pytest.fixture
def alice(app, tx, make_org, make_user):
    org = make_org("acme", "Acme Supplies")
    user = make_user("alice@acme.test", org="acme", display_name="Alice Acme")
    bob = make_user("bob@acme.test", org="acme")
    with tx() as session:
        session.add(RoleGrant(user_id=bob.id, organization_id=org.id, role="org_owner"))
        connection = Connection(organization_id=org.id, protocol=Protocol.OIDC,
                                name="Acme Okta", settings={})
        session.add(connection)
        session.flush()
        session.add(FederatedIdentity(connection_id=connection.id, subject="okta-123",
                                      user_id=user.id))
        session.add(ProfileValue(user_id=user.id, field="phone", value="+33 1 23 45 67 89",
                                 collected_via="account_page", purpose="support"))
        outbox.enqueue(session, to="alice@acme.test", template="test", org=None,
                       context={"sender": "cli:test"})
    return user


def _ask_deletion(client, password: str | None = None):
    return client.post("/account/delete", data={
        "csrf_token": csrf_token(client, "/account/"),
        "password": PASSWORD if password is None else password})


def _user(app, user_id) -> User:
    with services_of(app).db.sessions() as session:
        return session.get(User, user_id)


def _run_worker(app) -> int:
    from portal.cli_mail import erase_due
    with app.app_context():
        return erase_due()


def test_deletion_waits_for_the_grace_period_then_erases_everything(app, client, alice):
    sign_in(client, "alice@acme.test")
    client.post("/account/consents", data={"purpose": "product_news",
                                           "csrf_token": csrf_token(client, "/account/")})
    done = _ask_deletion(client)
    assert done.status_code == 302
    page = client.get("/account/").get_data(as_text=True)
    assert "Your account will be deleted on" in page and "Cancel the deletion" in page
    erase_after = _user(app, alice.id).erase_after
    assert timedelta(days=13, hours=23) < erase_after - utcnow() <= timedelta(days=14)
    [event] = audit_events(app, "gdpr.erase_requested")
    assert event.outcome == "success" and event.details["grace_days"] == 14

    assert _run_worker(app) == 0  # still in the grace period: nothing happens
    assert _user(app, alice.id).email == "alice@acme.test"

    with services_of(app).db.transaction() as session:  # the grace period ends
        session.get(User, alice.id).erase_after = utcnow() - timedelta(seconds=1)
    assert _run_worker(app) == 1
    user = _user(app, alice.id)
    assert user.status == UserStatus.DELETED and user.erased_at is not None
    assert user.email == f"erased-{alice.id}@erased.invalid" and user.display_name == ""
    assert user.password_hash is None
    with services_of(app).db.sessions() as session:
        for model in (FederatedIdentity, ProfileValue, AuthSession, Membership, RoleGrant):
            assert session.scalar(sa.select(sa.func.count()).select_from(model)
                                  .where(model.user_id == alice.id)) == 0, model
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)
                              .where(OutboxMessage.to_address == "alice@acme.test")) == 0
        consents = session.scalars(sa.select(ConsentRecord).where(
            ConsentRecord.user_id == alice.id).order_by(ConsentRecord.id)).all()
        # The ledger keeps who/what/when, without IP or browser; granted purposes end.
        assert [(c.purpose, c.granted, c.method) for c in consents] == [
            ("product_news", True, "account_page"), ("product_news", False, "erasure")]
        assert all(c.ip_hash == "" and c.user_agent_hash == "" for c in consents)
        assert audit.verify(session).ok  # the chain survives the pseudonymization
        events = session.scalars(sa.select(AuditEvent)).all()
        text = json.dumps([[e.actor, e.target, e.reason, e.ip, e.details] for e in events])
    assert "alice@acme.test" not in text and "bob@acme.test" in text
    [erased] = audit_events(app, "gdpr.erase")
    alias = audit.pseudonym(gdpr.pseudonym_key(app.config), "alice@acme.test")
    assert erased.target == f"user:{alias}" and erased.details["removed"]["identities"] == 1
    assert erased.details["events_pseudonymized"] >= 3
    # The old address no longer signs in, and the old session is gone.
    assert client.get("/account/").status_code == 302
    refused = sign_in(app.test_client(), "alice@acme.test")
    assert refused.status_code == 401


def test_signing_in_during_the_grace_period_cancels_the_deletion(app, client, alice):
    sign_in(client, "alice@acme.test")
    _ask_deletion(client)
    other = app.test_client()
    assert sign_in(other, "alice@acme.test").status_code == 302
    assert _user(app, alice.id).erase_after is None
    page = other.get("/account/").get_data(as_text=True)
    assert "the deletion of your account is cancelled" in page
    [event] = audit_events(app, "gdpr.erase_cancelled")
    assert event.details == {"how": "sign_in"}


def test_the_account_page_cancels_the_deletion(app, client, alice):
    sign_in(client, "alice@acme.test")
    _ask_deletion(client)
    response = client.post("/account/delete/cancel",
                           data={"csrf_token": csrf_token(client, "/account/")})
    assert response.status_code == 302 and _user(app, alice.id).erase_after is None
    assert "Delete my account" in client.get("/account/").get_data(as_text=True)
    assert audit_events(app, "gdpr.erase_cancelled")[0].details == {"how": "account_page"}


def test_a_wrong_password_schedules_nothing(app, client, alice):
    sign_in(client, "alice@acme.test")
    _ask_deletion(client, password="not my password at all")
    assert _user(app, alice.id).erase_after is None
    assert "Your current password is not correct" in client.get("/account/").get_data(
        as_text=True)
    [event] = audit_events(app, "gdpr.erase_requested")
    assert event.outcome == "failure" and event.reason == "not_confirmed"


def test_the_last_owner_must_hand_over_first(app, client, alice, tx):
    with tx() as session:
        org_id = session.scalar(sa.select(Membership.organization_id)
                                .where(Membership.user_id == alice.id))
        session.execute(sa.delete(RoleGrant).where(RoleGrant.role == "org_owner"))
        session.add(RoleGrant(user_id=alice.id, organization_id=org_id, role="org_owner"))
    sign_in(client, "alice@acme.test")
    _ask_deletion(client)
    assert _user(app, alice.id).erase_after is None
    page = client.get("/account/").get_data(as_text=True)
    assert "You are the last owner of acme" in page and "Make someone else an owner" in page
    # Once the ownership is shared, the deletion goes through.
    with tx() as session:
        bob = session.scalar(sa.select(User).where(User.email == "bob@acme.test"))
        session.add(RoleGrant(user_id=bob.id, organization_id=org_id, role="org_owner"))
    _ask_deletion(client)
    assert _user(app, alice.id).erase_after is not None


def test_people_without_a_password_confirm_with_a_recent_sign_in(app, client, alice, tx):
    with tx() as session:
        session.get(User, alice.id).password_hash = None
    with tx() as session:  # a federated sign-in's session, an hour old
        from portal.services.auth import start_session
        token = start_session(session, session.get(User, alice.id), CLI_CTX, 1)
    with client.session_transaction() as flask_session:
        flask_session.update({"sid": token, "_user_id": str(alice.id), "_fresh": True,
                              "assurance": 1, "amr": ["fed"],
                              "auth_time": int(time.time()) - 3600})
    page = client.get("/account/").get_data(as_text=True)
    assert "sign out and sign in again" in page
    _ask_deletion(client, password="")
    assert _user(app, alice.id).erase_after is None
    with client.session_transaction() as flask_session:
        flask_session["auth_time"] = int(time.time())
    _ask_deletion(client, password="")
    assert _user(app, alice.id).erase_after is not None


def _cli_env(monkeypatch, settings):
    for name, value in {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
                        "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
                        "SECRET_KEY": settings["SECRET_KEY"]}.items():
        monkeypatch.setenv(name, value)


def test_an_operator_schedules_or_erases_from_the_command_line(app, alice, settings,
                                                              monkeypatch):
    _cli_env(monkeypatch, settings)
    scheduled = CliRunner().invoke(main, ["gdpr", "erase", "alice@acme.test"],
                                   catch_exceptions=False)
    assert scheduled.exit_code == 0 and "erasure scheduled for" in scheduled.output
    assert _user(app, alice.id).erase_after is not None
    [event] = audit_events(app, "gdpr.erase_requested")
    assert event.details["by_operator"] is True and event.actor.startswith("cli:")
    now = CliRunner().invoke(main, ["gdpr", "erase", "alice@acme.test", "--now", "--yes"],
                             catch_exceptions=False)
    assert now.exit_code == 0 and "erased user" in now.output
    assert _user(app, alice.id).status == UserStatus.DELETED
    verify = CliRunner().invoke(main, ["audit", "verify"], catch_exceptions=False)
    assert verify.exit_code == 0 and "audit chain intact" in verify.output
    again = CliRunner().invoke(main, ["gdpr", "erase", "alice@acme.test", "--now", "--yes"])
    assert again.exit_code == 1 and "no user" in again.stderr


def test_the_worker_leaves_a_last_owner_waiting(app, alice, tx):
    with tx() as session:
        org_id = session.scalar(sa.select(Membership.organization_id)
                                .where(Membership.user_id == alice.id))
        session.execute(sa.delete(RoleGrant).where(RoleGrant.role == "org_owner"))
        gdpr.request_erasure(session, CLI_CTX, alice.id, grace_days=0, confirmed=True,
                             by_operator=True)
        # Became the last owner during the grace period.
        session.add(RoleGrant(user_id=alice.id, organization_id=org_id, role="org_owner"))
    assert _run_worker(app) == 0
    assert _user(app, alice.id).status == UserStatus.ACTIVE


def _change_email(app, client, new_email: str) -> None:
    """The account page's email change, link opened from the mail in the outbox."""
    import re
    asked = client.post("/account/email", data={
        "csrf_token": csrf_token(client, "/account/"), "new_email": new_email,
        "password": PASSWORD})
    assert asked.status_code == 302
    with services_of(app).db.sessions() as session:
        body = session.scalar(sa.select(OutboxMessage.text_body).where(
            OutboxMessage.to_address == new_email, OutboxMessage.template == "email_confirm"))
    path = re.search(r"http://localhost(/account/email/confirm/\S+)", body).group(1)
    done = client.post(path, data={"csrf_token": csrf_token(client, "/account/")})
    assert done.headers["Location"] == "/account/"


def _everything_written(session) -> str:
    events = session.scalars(sa.select(AuditEvent)).all()
    mail = session.execute(sa.select(OutboxMessage.to_address, OutboxMessage.subject,
                                     OutboxMessage.text_body, OutboxMessage.html_body)).all()
    return json.dumps([[e.actor, e.target, e.reason, e.ip, e.details] for e in events] +
                      [list(m) for m in mail], default=str)


def test_addresses_from_before_an_email_change_are_erased_too(app, client, alice):
    sign_in(client, "alice@acme.test")
    _change_email(app, client, "alice@new.test")
    _change_email(app, client, "alice@newer.test")
    assert sign_in(app.test_client(), "alice@acme.test").status_code == 401  # history
    with services_of(app).db.sessions() as session:
        before = _everything_written(session)
    assert "alice@acme.test" in before and "alice@new.test" in before

    with services_of(app).db.transaction() as session:
        erased = gdpr.erase(session, CLI_CTX, alice.id, key=gdpr.pseudonym_key(app.config))
    assert erased.removed["emails"] >= 5  # the old mail, both confirmations, both notices
    with services_of(app).db.sessions() as session:
        after = _everything_written(session)
        assert audit.verify(session).ok
    for address in ("alice@acme.test", "alice@new.test", "alice@newer.test"):
        assert address not in after, address
    key = gdpr.pseudonym_key(app.config)
    assert audit.pseudonym(key, "alice@acme.test") in after
    assert "bob@acme.test" in after  # someone else's address is left alone


def test_an_old_address_now_used_by_someone_else_stays_theirs(app, client, alice, tx,
                                                              make_user):
    sign_in(client, "alice@acme.test")
    _change_email(app, client, "alice@new.test")
    newcomer = make_user("alice@acme.test", display_name="Another Alice")
    with tx() as session:
        outbox.enqueue(session, to="alice@acme.test", template="test", org=None,
                       context={"sender": "cli:test"})
        assert gdpr.addresses_of(session, alice.id) == {"alice@new.test"}
        gdpr.erase(session, CLI_CTX, alice.id, key=gdpr.pseudonym_key(app.config))
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage).where(
            OutboxMessage.to_address == "alice@acme.test")) >= 1
        assert session.get(User, newcomer.id).email == "alice@acme.test"
        assert "alice@new.test" not in _everything_written(session)


def test_the_export_includes_what_was_sent_to_an_earlier_address(app, client, alice):
    sign_in(client, "alice@acme.test")
    _change_email(app, client, "alice@new.test")
    data = client.get("/account/export").get_json(force=True)
    assert data["profile"]["email"] == "alice@new.test"
    templates = {m["template"] for m in data["emails"]}
    assert {"test", "email_confirm", "email_changed"} <= templates
