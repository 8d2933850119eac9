"""The account page: profile (read-only where an identity provider manages it), sessions
with revoke, sign-in history."""

import re

import sqlalchemy as sa

from portal.models import AuthSession, Connection, FederatedIdentity, Protocol, User
from tests.conftest import CLI_CTX, audit_events, csrf_token, services_of, sign_in


def _post(client, path, **data):
    return client.post(path, data={"csrf_token": csrf_token(client, "/account/"), **data})


def _name(app, email):
    with services_of(app).db.sessions() as session:
        return session.scalar(sa.select(User.display_name).where(User.email == email))


def _session_ids(app, email):
    with services_of(app).db.sessions() as session:
        return list(session.scalars(
            sa.select(AuthSession.id).join(User, User.id == AuthSession.user_id)
            .where(User.email == email, AuthSession.revoked_at.is_(None))
            .order_by(AuthSession.id)))


def test_a_local_user_edits_their_name(app, client, make_user):
    make_user("alice@acme.test", display_name="Alice")
    sign_in(client, "alice@acme.test")
    page = client.get("/account/").get_data(as_text=True)
    assert 'value="alice@acme.test" readonly' in page and "Change your password" in page
    saved = _post(client, "/account/profile", display_name="  Alice Acme ")
    assert saved.status_code == 302 and _name(app, "alice@acme.test") == "Alice Acme"
    [event] = audit_events(app, "user.profile")
    assert event.details == {"display_name": ["Alice", "Alice Acme"]}
    bad = _post(client, "/account/profile", display_name="x" * 201)
    assert "at most 200" in client.get(bad.headers["Location"]).get_data(as_text=True)
    assert _name(app, "alice@acme.test") == "Alice Acme"


def test_a_federated_users_profile_is_read_only_and_says_where_it_comes_from(
        app, client, make_user, make_org, tx):
    org = make_org("acme")
    user = make_user("fed@acme.test", password=None, org="acme", display_name="Fed")
    with tx() as session:
        connection = Connection(organization_id=org.id, protocol=Protocol.OIDC,
                                name="Acme Okta", settings={})
        session.add(connection)
        session.flush()
        session.add(FederatedIdentity(connection_id=connection.id, subject="s",
                                      user_id=user.id))
        from portal.services import auth
        token = auth.start_session(session, session.get(User, user.id), CLI_CTX, 1)
    with client.session_transaction() as browser:
        browser["sid"], browser["_user_id"], browser["_fresh"] = token, str(user.id), True
    page = client.get("/account/").get_data(as_text=True)
    assert "Managed by Acme Okta" in page and 'name="display_name" value="Fed"' in page
    assert re.search(r'id="display_name"[^>]*readonly', page)
    assert "Your password is managed by Acme Okta" in page
    refused = _post(client, "/account/profile", display_name="Someone Else")
    assert "comes from Acme Okta" in client.get(refused.headers["Location"]).get_data(
        as_text=True)
    assert _name(app, "fed@acme.test") == "Fed"
    assert "Change your email address" not in page
    moved = _post(client, "/account/email", new_email="fed@elsewhere.test", password="x")
    assert "Your email comes from Acme Okta" in client.get(moved.headers["Location"]).get_data(
        as_text=True)


def test_sessions_are_listed_and_another_one_is_signed_out(app, client, make_user):
    make_user("alice@acme.test")
    laptop = app.test_client()
    laptop.environ_base["HTTP_USER_AGENT"] = "Laptop/1.0"
    sign_in(laptop, "alice@acme.test")
    sign_in(client, "alice@acme.test")
    page = client.get("/account/").get_data(as_text=True)
    assert "This browser" in page and page.count("the session from") == 1
    assert "Laptop/1.0" in page
    other, mine = _session_ids(app, "alice@acme.test")
    own = _post(client, f"/account/sessions/{mine}/revoke")
    assert own.status_code == 400 and "sign out instead" in own.get_data(as_text=True)
    done = _post(client, f"/account/sessions/{other}/revoke")
    assert done.status_code == 302
    assert laptop.get("/").status_code == 302 and client.get("/").status_code == 200
    assert [e.target for e in audit_events(app, "session.revoke")] == [f"session:{other}"]


def test_nobody_signs_out_someone_elses_session(app, client, make_user):
    make_user("alice@acme.test")
    make_user("bob@acme.test")
    bob = app.test_client()
    sign_in(bob, "bob@acme.test")
    [bobs] = _session_ids(app, "bob@acme.test")
    sign_in(client, "alice@acme.test")
    assert _post(client, f"/account/sessions/{bobs}/revoke").status_code == 404
    assert bob.get("/").status_code == 200
    assert "bob@acme.test" not in client.get("/account/").get_data(as_text=True)


def test_sign_out_everywhere_else(app, client, make_user):
    make_user("alice@acme.test")
    others = [app.test_client() for _ in range(2)]
    for other in others:
        sign_in(other, "alice@acme.test")
    sign_in(client, "alice@acme.test")
    done = _post(client, "/account/sessions/revoke-others")
    assert "2 other sessions signed out" in client.get(done.headers["Location"]).get_data(
        as_text=True)
    assert [o.get("/").status_code for o in others] == [302, 302]
    assert len(_session_ids(app, "alice@acme.test")) == 1


def test_sign_in_history_shows_failures_and_successes(app, client, make_user):
    make_user("alice@acme.test")
    mallory = app.test_client()
    mallory.environ_base["HTTP_USER_AGENT"] = "Mallory/6.6"
    sign_in(mallory, "alice@acme.test", "wrong password here")
    sign_in(client, "alice@acme.test")
    page = client.get("/account/").get_data(as_text=True)
    history = page.split("Recent sign-ins", 1)[1]
    assert history.index("Signed in") < history.index("Failed")  # newest first
    assert "Mallory/6.6" in history and "password" in history


def _mail_app(settings, smtp_server):
    from portal import create_app
    return create_app({**settings, **smtp_server.settings()})


def test_changing_the_email_needs_the_new_mailbox_and_tells_the_old_one(
        settings, smtp_server, make_user):
    from tests.peers.smtp import links_in, text_of
    app = _mail_app(settings, smtp_server)
    try:
        make_user("alice@acme.test")
        client = app.test_client()
        sign_in(client, "alice@acme.test")
        wrong = _post(client, "/account/email", new_email="alice@new.test", password="nope")
        assert "current password is not correct" in client.get(
            wrong.headers["Location"]).get_data(as_text=True)
        asked = _post(client, "/account/email", new_email="Alice@New.test",
                      password="correct horse battery")
        assert "Your address changes when you open it" in client.get(
            asked.headers["Location"]).get_data(as_text=True)
        [mail] = smtp_server.wait_for("alice@new.test")
        link = next(u for u in links_in(mail) if "/account/email/confirm/" in u)
        path = link.replace("http://localhost", "")
        # Nothing changed yet; a mail scanner opening the link changes nothing either.
        assert "Confirm the new address" in app.test_client().get(path).get_data(as_text=True)
        assert sign_in(app.test_client(), "alice@acme.test").status_code == 302
        done = client.post(path, data={"csrf_token": csrf_token(client, "/account/")})
        assert done.headers["Location"] == "/account/"
        mails = smtp_server.wait_for("alice@acme.test", 2)  # and a new-device notice
        [notice] = [m for m in mails if "email address" in m["Subject"]]
        assert "alice@new.test" in text_of(notice) and "was changed" in notice["Subject"]
        assert sign_in(app.test_client(), "alice@new.test").status_code == 302
        assert sign_in(app.test_client(), "alice@acme.test").status_code == 401
        [event] = audit_events(app, "user.email_change")
        assert event.details == {"from": "alice@acme.test", "to": "alice@new.test"}
        # Once only.
        again = client.post(path, data={"csrf_token": csrf_token(client, "/account/")})
        assert again.status_code == 400
    finally:
        services_of(app).db.dispose()


def test_an_address_of_another_account_gets_a_notice_and_the_page_looks_the_same(
        settings, smtp_server, make_user):
    from tests.peers.smtp import text_of
    app = _mail_app(settings, smtp_server)
    try:
        make_user("alice@acme.test")
        make_user("bob@acme.test")
        client = app.test_client()
        sign_in(client, "alice@acme.test")
        asked = _post(client, "/account/email", new_email="bob@acme.test",
                      password="correct horse battery")
        assert "Your address changes when you open it" in client.get(
            asked.headers["Location"]).get_data(as_text=True)
        [mail] = smtp_server.wait_for("bob@acme.test")
        assert "nothing was changed" in text_of(mail) and "/confirm/" not in text_of(mail)
        assert _name(app, "alice@acme.test") is not None
    finally:
        services_of(app).db.dispose()


def test_expired_and_forged_email_links_are_refused(app, client, make_user, tx):
    from datetime import timedelta

    from portal.db import utcnow
    from portal.models import UserToken
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    _post(client, "/account/email", new_email="alice@new.test",
          password="correct horse battery")
    with services_of(app).db.sessions() as session:
        from portal.models import OutboxMessage
        body = session.scalar(sa.select(OutboxMessage.text_body))
    path = re.search(r"http://localhost(/account/email/confirm/\S+)", body).group(1)
    with tx() as session:
        session.execute(sa.update(UserToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get(path).status_code == 400
    assert client.get("/account/email/confirm/" + "C" * 43).status_code == 400
    assert sign_in(app.test_client(), "alice@acme.test").status_code == 302


def test_purposes_are_granted_and_withdrawn_and_each_change_is_kept(app, client,
                                                                    make_user):
    from portal.models import ConsentRecord
    make_user("alice@acme.test")
    sign_in(client, "alice@acme.test")
    page = client.get("/account/").get_data(as_text=True)
    assert "Product news by email" in page and "Usage analytics" in page
    assert not re.search(r'id="purpose-product_news"[^>]*checked', page)
    saved = _post(client, "/account/consents", purpose=["product_news", "made_up"])
    assert "Your choices were saved" in client.get(saved.headers["Location"]).get_data(
        as_text=True)
    page = client.get("/account/").get_data(as_text=True)
    assert re.search(r'id="purpose-product_news"[^>]*checked', page)
    unchanged = _post(client, "/account/consents", purpose="product_news")
    assert "Nothing changed" in client.get(unchanged.headers["Location"]).get_data(
        as_text=True)
    _post(client, "/account/consents")  # withdraw everything
    with services_of(app).db.sessions() as session:
        rows = session.execute(sa.select(ConsentRecord.purpose, ConsentRecord.granted,
                                         ConsentRecord.document_version,
                                         ConsentRecord.method)
                               .order_by(ConsentRecord.id)).all()
    assert rows == [("product_news", True, "1", "account_page"),
                    ("product_news", False, "1", "account_page")]
    assert [e.details for e in audit_events(app, "consent.change")] == [
        {"product_news": True}, {"product_news": False}]


def test_smtp_down_the_email_change_link_waits_and_the_page_says_so(
        settings, smtp_server, make_user):
    from portal.models import OutboxMessage, OutboxStatus
    app = _mail_app(settings, smtp_server)
    try:
        make_user("alice@acme.test")
        client = app.test_client()
        sign_in(client, "alice@acme.test")
        smtp_server.stop()
        asked = _post(client, "/account/email", new_email="alice@new.test",
                      password="correct horse battery")
        page = client.get(asked.headers["Location"]).get_data(as_text=True)
        assert "we will send it shortly" in page
        with services_of(app).db.sessions() as session:
            [row] = session.scalars(sa.select(OutboxMessage).where(
                OutboxMessage.to_address == "alice@new.test")).all()
        assert row.status == OutboxStatus.PENDING and row.last_error
        assert _name(app, "alice@acme.test") is not None  # nothing changed yet
    finally:
        services_of(app).db.dispose()
