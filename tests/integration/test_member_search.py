"""Member search at scale: a search or role filter stops counting at members.COUNT_CAP and
says so, and on PostgreSQL the ``%text%`` search can use the trigram indexes of migration
0020 (SQLite scans)."""

from __future__ import annotations

import sqlalchemy as sa

from portal.models import User
from portal.services import members, organizations
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, two_orgs  # noqa: F401


def test_counting_stops_at_the_cap_and_says_so(app, tx, two_orgs, monkeypatch):  # noqa: F811
    monkeypatch.setattr(members, "COUNT_CAP", 2)
    page = as_user(app, "alice@acme.test").get("/o/acme/admin/users?q=acme")
    text = page.get_data(as_text=True)
    assert "More than 2 members match; narrow the search" in text
    assert "mia@acme.test" in text  # the page itself is complete
    exact = as_user(app, "alice@acme.test").get("/o/acme/admin/users?q=mia")
    assert "1 member match." in exact.get_data(as_text=True)
    auth = token_for(tx, "alice@acme.test")
    listed = app.test_client().get("/api/v1/orgs/acme/members?q=acme", headers=auth).get_json()
    assert listed["total"] == 2 and listed["total_exact"] is False
    assert len(listed["members"]) == 4  # the page is complete; only the count stops
    unfiltered = app.test_client().get("/api/v1/orgs/acme/members", headers=auth).get_json()
    assert unfiltered["total"] == 5 and unfiltered["total_exact"] is True  # Oscar too


def test_search_can_use_the_trigram_index_on_postgresql(app, tx, two_orgs):  # noqa: F811
    with tx() as session:
        if session.get_bind().dialect.name != "postgresql":
            indexes = sa.inspect(session.connection()).get_indexes("users")
            assert not [i for i in indexes if i["name"].endswith("_trgm")]
            return
        session.execute(sa.text("SET LOCAL enable_seqscan = off"))
        query = sa.select(User.id).where(  # the search's condition, as the service writes it
            sa.or_(sa.func.lower(User.email).like("%ali%"),
                   sa.func.lower(User.display_name).like("%ali%")))
        compiled = query.compile(dialect=session.get_bind().dialect,
                                 compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.scalars(sa.text(f"EXPLAIN {compiled}")))
    assert "ix_users_email_trgm" in plan and "ix_users_display_name_trgm" in plan, plan
    found = members.list_members
    with tx() as session:
        page = found(session, organizations.get(session, "acme"), query="ALI")
        assert [row.email for row in page.rows] == ["alice@acme.test"]
