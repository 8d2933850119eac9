"""A refused first sign-in (the account exists) linked by a link mailed to the account's
address: real OpenID Provider, real SMTP server on loopback."""

import pytest
import sqlalchemy as sa

from portal.models import FederatedIdentity, UserToken
from portal.services import organizations
from tests.conftest import CLI_CTX, audit_events, csrf_token
from tests.integration.test_oidc_signin import add_connection, count, federated_login
from tests.peers.smtp import links_in

pytestmark = pytest.mark.mail


@pytest.fixture
def acme_sso(app, tx, make_org, oidc_provider):
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
    return add_connection(app, tx, oidc_provider, "acme", "Acme SSO")


def ask_for_link(client, oidc_provider, email):
    refused = federated_login(client, oidc_provider, email)
    assert refused.headers["Location"] == "/sso/link"
    assert "Email me a link" in client.get("/sso/link").get_data(as_text=True)
    return client.post("/sso/link/email", data={"csrf_token": csrf_token(client, "/sso/link")})


def mailed_path(smtp_server, email, number=1):
    mail = smtp_server.wait_for(email, number)[number - 1]
    [link] = [u for u in links_in(mail) if "/sso/link/confirm/" in u]
    return link.replace("http://localhost", "")


def test_the_mailed_link_links_in_the_browser_that_asked(app, tx, acme_sso, oidc_provider,
                                                        make_user, smtp_server):
    make_user("lee@acme.test", org="acme", password=None)
    oidc_provider.put_account("lee@acme.test", groups=["purchasing"])
    client = app.test_client()
    sent = ask_for_link(client, oidc_provider, "lee@acme.test")
    assert sent.status_code == 200 and "in this browser" in sent.get_data(as_text=True)
    path = mailed_path(smtp_server, "lee@acme.test")
    # Another browser (someone the mail was forwarded to, or an attacker's victim) gets nothing.
    elsewhere = app.test_client()
    assert elsewhere.get(path).status_code in (400, 403)
    assert count(tx, FederatedIdentity) == 0
    page = client.get(path)
    assert page.status_code == 200 and "Link and sign in" in page.get_data(as_text=True)
    assert count(tx, FederatedIdentity) == 0  # opening the link (a mail scanner) links nothing
    done = client.post(path, data={"csrf_token": csrf_token(client, path)})
    assert done.status_code == 302 and done.headers["Location"] == "/o/acme/"
    assert count(tx, FederatedIdentity) == 1
    linked = audit_events(app, "federation.link")[-1]
    assert linked.details["proof"] == "email" and linked.actor == "lee@acme.test"
    with tx() as session:
        assert session.scalar(sa.select(UserToken.used_at)) is not None
    again = client.post(path, data={"csrf_token": csrf_token(client, "/")})
    assert again.status_code in (400, 403)  # single use (and the offer is gone)


def test_only_the_newest_mailed_link_works(app, tx, acme_sso, oidc_provider, make_user,
                                           smtp_server):
    from tests.integration.test_password_reset import age_outbox
    make_user("kim@acme.test", org="acme", password=None)
    oidc_provider.put_account("kim@acme.test")
    client = app.test_client()
    ask_for_link(client, oidc_provider, "kim@acme.test")
    first = mailed_path(smtp_server, "kim@acme.test")
    age_outbox(tx)
    client.post("/sso/link/email", data={"csrf_token": csrf_token(client, "/sso/link")})
    second = mailed_path(smtp_server, "kim@acme.test", 2)
    old = client.post(first, data={"csrf_token": csrf_token(client, "/sso/link")})
    assert old.status_code == 400 and "newer one" in old.get_data(as_text=True)
    assert client.post(second, data={"csrf_token": csrf_token(client, "/sso/link")}
                       ).status_code == 302
    assert count(tx, FederatedIdentity) == 1
