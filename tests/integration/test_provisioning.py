"""Just-in-time provisioning decisions, shared by every protocol."""

import pytest
import sqlalchemy as sa

from federation import provisioning
from federation.errors import FederationError
from federation.identity import ExternalIdentity
from portal.models import Connection, FederatedIdentity, Membership, MembershipSource, User
from tests.conftest import CLI_CTX, audit_events, services_of


class MemoryGrants:
    """A stand-in grant store that records what provisioning asks of it."""

    def __init__(self):
        self.rows = set()

    def roles(self, session, user_id, org_id, source):
        return {r for (u, o, r, s) in self.rows if (u, o, s) == (user_id, org_id, source)}

    def grant(self, session, user_id, org_id, role, source):
        self.rows.add((user_id, org_id, role, source))

    def revoke(self, session, user_id, org_id, role, source):
        self.rows.discard((user_id, org_id, role, source))


@pytest.fixture
def acme(app, tx, make_org):
    from portal.services import connections, organizations
    make_org("acme", "Acme Supplies")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "acme", "acme.test")
        organizations.verify_domain_manually(session, CLI_CTX, "acme.test")
        organizations.add_domain(session, CLI_CTX, "acme", "unverified-acme.test")
        row = connections.create_oidc(
            session, CLI_CTX, services_of(app).secrets, org_slug="acme", name="Acme IdP",
            client_id="trellis", client_secret="s3cret", issuer="https://idp.acme.test",
            enabled=True, group_roles={"purchasing": "buyer", "it-admins": "org_owner"})
        return row.id


def identity(connection_id, subject="u-1", email="jane@acme.test", verified=True,
             groups=("purchasing",), name="Jane Doe"):
    return ExternalIdentity(connection_id=connection_id, issuer="https://idp.acme.test",
                            subject=subject, email=email, email_verified=verified,
                            display_name=name, groups=tuple(groups))


def sign_in(tx, connection_id, ident, grants):
    with tx() as session:
        connection = session.get(Connection, connection_id)
        plan = provisioning.plan(session, connection, ident)
        return provisioning.apply(session, CLI_CTX, connection, plan, grants)


def count(tx, model):
    with tx() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_first_login_creates_user_membership_identity_and_roles(app, tx, acme):
    grants = MemoryGrants()
    user = sign_in(tx, acme, identity(acme), grants)
    assert (user.email, user.display_name, user.password_hash) == ("jane@acme.test",
                                                                    "Jane Doe", None)
    with tx() as session:
        membership = session.scalar(sa.select(Membership))
        link = session.scalar(sa.select(FederatedIdentity))
    assert membership.source == MembershipSource.JIT and link.subject == "u-1"
    assert {r for (_, _, r, _) in grants.rows} == {"buyer", "member"}
    actions = [e.action for e in audit_events(app)]
    assert actions[-5:] == ["federation.provision", "membership.add", "federation.roles",
                            "user.identity_assurance", "auth.login"]  # a verified domain


def test_returning_login_updates_attributes_and_follows_idp_roles(app, tx, acme):
    grants = MemoryGrants()
    first = sign_in(tx, acme, identity(acme), grants)
    grants.grant(None, first.id, 1, "auditor", "manual")  # granted by hand: must stay
    again = sign_in(tx, acme, identity(acme, groups=("it-admins",), name="Jane Q. Doe"),
                    grants)
    assert again.id == first.id and again.display_name == "Jane Q. Doe"
    assert {r for (_, _, r, _) in grants.rows} == {"org_owner", "member", "auditor"}
    assert count(tx, User) == 1 and count(tx, Membership) == 1
    [roles_change] = [e for e in audit_events(app, "federation.roles")][-1:]
    assert roles_change.details == {"added": ["org_owner"], "removed": ["buyer"],
                                    "source": f"connection:{acme}"}


def test_returning_user_is_found_by_subject_not_email(app, tx, acme):
    sign_in(tx, acme, identity(acme), MemoryGrants())
    renamed = sign_in(tx, acme, identity(acme, email="jane.doe@acme.test"), MemoryGrants())
    assert renamed.email == "jane@acme.test"  # same subject, same account
    assert count(tx, User) == 1


@pytest.mark.parametrize(("ident_args", "code"), [
    ({"email": "mallory@evil.test"}, "domain_not_verified"),
    ({"email": "jane@unverified-acme.test"}, "domain_not_verified"),
    ({"verified": False}, "email_unverified"),
    ({"email": None}, "email_missing"),
])
def test_first_login_refusals_create_nothing(app, tx, acme, ident_args, code):
    with pytest.raises(FederationError) as caught:
        sign_in(tx, acme, identity(acme, **ident_args), MemoryGrants())
    assert caught.value.code == code
    assert count(tx, User) == count(tx, Membership) == count(tx, FederatedIdentity) == 0


def test_existing_local_account_is_not_linked_silently(app, tx, acme, make_user):
    make_user("jane@acme.test")
    with pytest.raises(FederationError) as caught:
        sign_in(tx, acme, identity(acme), MemoryGrants())
    assert caught.value.code == "account_exists"
    assert count(tx, FederatedIdentity) == 0 and count(tx, Membership) == 0


def test_suspended_user_and_suspended_membership_are_refused(app, tx, acme):
    from portal.models import MembershipStatus
    from portal.services import users
    user = sign_in(tx, acme, identity(acme), MemoryGrants())
    with tx() as session:
        session.scalar(sa.select(Membership)).status = MembershipStatus.SUSPENDED
    with pytest.raises(FederationError, match="membership_suspended"):
        sign_in(tx, acme, identity(acme), MemoryGrants())
    with tx() as session:
        users.suspend(session, CLI_CTX, user.email)
    with pytest.raises(FederationError, match="user_suspended"):
        sign_in(tx, acme, identity(acme), MemoryGrants())


def test_jit_off_and_disabled_connection_are_refused(app, tx, acme):
    with tx() as session:
        session.get(Connection, acme).jit_enabled = False
    with pytest.raises(FederationError, match="jit_disabled"):
        sign_in(tx, acme, identity(acme), MemoryGrants())
    with tx() as session:
        session.get(Connection, acme).enabled = False
    with pytest.raises(FederationError, match="connection_disabled"):
        sign_in(tx, acme, identity(acme), MemoryGrants())


def test_any_domain_when_the_connection_allows_it(app, tx, acme):
    with tx() as session:
        session.get(Connection, acme).allow_any_domain = True
    user = sign_in(tx, acme, identity(acme, email="contractor@freelance.test"), MemoryGrants())
    assert user.email == "contractor@freelance.test"


def test_test_mode_plan_writes_nothing_and_explains(app, tx, acme):
    with tx() as session:
        plan = provisioning.plan(session, session.get(Connection, acme), identity(acme))
    report = plan.as_report()
    assert report["create_user"] and report["create_membership"]
    assert report["roles"] == ["buyer", "member"] and report["refused"] is None
    assert count(tx, User) == 0
    with tx() as session:
        refused = provisioning.plan(session, session.get(Connection, acme),
                                    identity(acme, email="x@evil.test"))
    assert refused.as_report()["refused"] == "domain_not_verified"
