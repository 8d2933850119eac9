"""Bulk members: dry run, import in all-or-nothing batches, export, and every kind of bad
file."""

from __future__ import annotations

import csv
import io

import sqlalchemy as sa

from portal.models import Membership, Organization, RoleGrant, User
from tests.conftest import csrf_token
from tests.integration.test_org_admin import as_user, held


def upload(client, data: bytes, dry_run: bool):
    form = {"csrf_token": csrf_token(client, "/"), "file": (io.BytesIO(data), "people.csv")}
    if dry_run:
        form["dry_run"] = "1"
    return client.post("/o/acme/admin/users/import", data=form,
                       content_type="multipart/form-data")


def acme_members(tx) -> set[str]:
    with tx() as session:
        return set(session.scalars(sa.select(User.email).join(Membership).join(Organization)
                                   .where(Organization.slug == "acme")))


GOOD_AND_BAD = (b"email,name,role\n"
                b"new1@acme.test,New One,\n"
                b"NEW2@acme.test,New Two,user_manager\n"
                b"carol@globex.test,Carol from Globex,\n"
                b"not-an-email,Nobody,\n"
                b"new1@acme.test,Twice,\n"
                b"max@acme.test,Already,\n"
                b"new3@acme.test,Wrong role,wizard\n"
                b"new4@acme.test,Too high,org_owner\n")


def test_dry_run_reports_every_problem_and_writes_nothing(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    before = acme_members(tx)
    page = upload(uma, GOOD_AND_BAD, dry_run=True).get_data(as_text=True)
    assert "Dry run: nothing was written" in page
    for line, problem in ((5, "not a valid email address"), (6, "appears twice in the file"),
                          (7, "is already a member"), (8, "has no role"),
                          (9, "roles you hold yourself")):
        assert f"<td>{line}</td>" in page and problem in page, (line, problem)
    assert acme_members(tx) == before


def test_import_adds_valid_rows_and_keeps_accounts_elsewhere(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    page = upload(uma, GOOD_AND_BAD, dry_run=False).get_data(as_text=True)
    assert "Import finished" in page and "3 (2 new accounts)" in page
    assert {"new1@acme.test", "new2@acme.test", "carol@globex.test"} <= acme_members(tx)
    with tx() as session:
        new2 = session.scalar(sa.select(User).where(User.email == "new2@acme.test"))
        assert new2.password_hash is None and new2.display_name == "New Two"
        carol = session.scalar(sa.select(User).where(User.email == "carol@globex.test"))
        assert carol.display_name != "Carol from Globex"  # an existing account is not edited
    assert held(tx, two_orgs["uma@acme.test"]) == {"user_manager"}
    assert "user_manager" in held(tx, users_id(tx, "new2@acme.test"))


def users_id(tx, email):
    with tx() as session:
        return session.scalar(sa.select(User.id).where(User.email == email))


def test_bad_files_are_refused_with_a_reason(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    wrong = upload(uma, b"mail,fullname\nx@acme.test,X\n", dry_run=True)
    assert wrong.status_code == 400 and "must name the columns" in wrong.get_data(as_text=True)
    latin1 = upload(uma, "email,name\nj\u00fcrgen@acme.test,J\u00fcrgen\n".encode("latin-1"),
                    dry_run=True)
    assert latin1.status_code == 400 and "not UTF-8" in latin1.get_data(as_text=True)
    huge = upload(uma, b"email\n" + b"x" * (21 * 1024 * 1024), dry_run=True)
    assert huge.status_code == 413


def test_a_large_file_imports_in_batches(app, tx, two_orgs):
    rows = "".join(f"bulk{i:05d}@acme.test,Bulk {i}\n" for i in range(2500))
    uma = as_user(app, "uma@acme.test")
    page = upload(uma, f"email,name\n{rows}".encode(), dry_run=False).get_data(as_text=True)
    assert "2500 (2500 new accounts)" in page and "Batches imported</dt><dd>3" in page
    assert len(acme_members(tx)) == 5 + 2500


def test_export_lists_only_this_organization(app, tx, two_orgs):
    with tx() as session:
        session.execute(sa.update(User).where(User.email == "mia@acme.test")
                        .values(display_name="=HYPERLINK(\"http://evil\")"))
    uma = as_user(app, "uma@acme.test")
    response = uma.get("/o/acme/admin/users/export.csv")
    assert response.headers["Content-Disposition"].endswith('acme-members.csv"')
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert {r["email"] for r in rows} == acme_members(tx)
    assert [r["roles"] for r in rows if r["email"] == "uma@acme.test"] == ["user_manager"]
    mia = next(r for r in rows if r["email"] == "mia@acme.test")
    assert mia["name"].startswith("'=")  # a spreadsheet shows it as text, never runs it
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(RoleGrant)) > 0


def test_a_large_import_refreshes_the_planners_statistics(app, tx, two_orgs, monkeypatch):
    """On PostgreSQL an import of at least ANALYZE_AFTER rows ends with ANALYZE, so the
    member search uses its indexes at once rather than after autovacuum's next visit."""
    from portal.services import member_import
    monkeypatch.setattr(member_import, "ANALYZE_AFTER", 3)
    rows = "".join(f"bulk{i}@acme.test,Bulk {i},\n" for i in range(4))
    done = upload(as_user(app, "alice@acme.test"), f"email,name,role\n{rows}".encode(),
                  dry_run=False)
    assert done.status_code == 200
    with tx() as session:
        users = session.scalar(sa.select(sa.func.count()).select_from(User))
        if session.get_bind().dialect.name != "postgresql":
            return
        estimate = session.scalar(sa.text(
            "SELECT reltuples FROM pg_class WHERE relname = 'users'"))
    assert estimate == users  # ANALYZE read the table as it is after the import
