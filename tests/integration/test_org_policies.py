"""Organizations' own uploaded policies: checked at upload, audited, last good kept."""

import sqlalchemy as sa

from portal.cli import main
from portal.models import OrgPolicy
from tests.conftest import audit_events, services_of

GOOD = "# Acme's buyers may also export reports.\np, buyer, *, report, export, True, allow\n"


def run(app, *args, input=None):
    return app.test_cli_runner().invoke(main, list(args), input=input)


def exports(app, user_id):
    return services_of(app).policy.decide({"id": str(user_id)}, "acme", {"type": "report"},
                                          "export").allowed


def test_an_upload_applies_and_a_broken_one_is_refused_with_file_line_and_reason(
        app, tx, make_org, make_user, tmp_path):
    make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    assert run(app, "role", "grant", "alice@acme.test", "acme", "buyer").exit_code == 0
    assert not exports(app, alice.id)
    good = tmp_path / "acme.csv"
    good.write_text(GOOD)
    result = run(app, "policy", "upload", "acme", str(good))
    assert result.exit_code == 0, result.output
    assert exports(app, alice.id)  # in force at once in this process
    explained = services_of(app).policy.explain({"id": str(alice.id)}, "acme",
                                                {"type": "report"}, "export")
    assert explained.where == "uploaded policy of acme, line 2"
    assert explained.chain == (str(alice.id), "buyer")

    broken = tmp_path / "broken.csv"
    broken.write_text("p, buyer, *, report, export, True, allow\np, buyer, *, report, read, "
                      "True, alow\n")
    result = run(app, "policy", "upload", "acme", str(broken))
    assert result.exit_code == 1
    assert "orgs/acme.csv:2: effect must be allow or deny, not 'alow'" in result.output
    assert exports(app, alice.id)  # the last good policy stays
    with services_of(app).db.sessions() as session:
        stored = session.scalar(sa.select(OrgPolicy))
    assert stored.text == GOOD
    uploads = audit_events(app, "org_policy.upload")
    assert [e.outcome for e in uploads] == ["success", "failure"]
    assert "orgs/acme.csv:2" in uploads[1].details["problem"]


def test_rules_for_another_organization_and_unknown_roles_are_refused(app, make_org, tmp_path):
    make_org("acme", "Acme")
    make_org("globex", "Globex")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("p, buyer, globex, report, export, True, allow\n")
    result = run(app, "policy", "upload", "acme", str(foreign))
    assert result.exit_code == 1 and "orgs/acme.csv:1: domain 'globex'" in result.output
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("g, clerk, no_such_role, *\n")
    result = run(app, "policy", "upload", "acme", str(unknown))
    assert result.exit_code == 1 and "inherits 'no_such_role'" in result.output
    nowhere = run(app, "policy", "upload", "initech", str(foreign))
    assert nowhere.exit_code == 1 and "initech" in nowhere.output
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count(OrgPolicy.id))) == 0


def test_a_stored_policy_that_no_longer_loads_keeps_its_last_good_rules(
        app, tx, make_org, make_user, tmp_path, client):
    org = make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    run(app, "role", "grant", "alice@acme.test", "acme", "buyer")
    good = tmp_path / "acme.csv"
    good.write_text(GOOD)
    assert run(app, "policy", "upload", "acme", str(good)).exit_code == 0
    assert exports(app, alice.id)
    # The text in the database is broken behind Trellis's back (or by a newer rule grammar).
    with tx() as session:
        session.execute(sa.update(OrgPolicy).where(OrgPolicy.organization_id == org.id)
                        .values(text="p, buyer, *, report, export, True\n", sha256="x"))
    assert exports(app, alice.id)  # last good rules, not an empty or template-only policy
    engine = services_of(app).policy
    assert "orgs/acme.csv:1" in engine.org_errors["acme"].detail
    ready = client.get("/readyz").get_json()
    assert any("uploaded policy of acme is broken" in w for w in ready["warnings"])
    assert run(app, "policy", "remove", "acme").exit_code == 0
    assert not exports(app, alice.id) and "acme" not in engine.org_errors
    assert [e.action for e in audit_events(app)][-1] == "org_policy.remove"


def test_operators_upload_and_remove_from_the_policies_page(app, tx, make_org, make_user):
    import io

    from tests.conftest import csrf_token, sign_in
    make_org("acme", "Acme")
    alice = make_user("alice@acme.test", org="acme")
    run(app, "role", "grant", "alice@acme.test", "acme", "buyer")
    make_user("olga@trellis.test", operator=True)
    client = app.test_client()
    assert sign_in(client, "olga@trellis.test").status_code == 302
    page = client.get("/admin/policy")
    assert page.status_code == 200 and "No organization has an uploaded policy" in page.text

    def upload(text: str, org: str = "acme"):
        return client.post("/admin/policy/upload", data={
            "csrf_token": csrf_token(client, "/admin/policy"), "org": org,
            "file": (io.BytesIO(text.encode()), "acme.csv")},
            content_type="multipart/form-data", follow_redirects=True)

    refused = upload("p, buyer, *, report, export, True, allow\np, buyer, *, x, y\n")
    assert "orgs/acme.csv:2: a p rule has 6 fields" in refused.text
    assert not exports(app, alice.id)
    done = upload(GOOD)
    assert "The policy of acme is in force." in done.text and "report, export" in done.text
    assert exports(app, alice.id)
    assert [e.outcome for e in audit_events(app, "org_policy.upload")] == ["failure",
                                                                            "success"]
    assert audit_events(app, "org_policy.upload")[1].actor == "olga@trellis.test"
    removed = client.post("/admin/policy/acme/remove", data={
        "csrf_token": csrf_token(client, "/admin/policy")}, follow_redirects=True)
    assert "The uploaded policy of acme was removed." in removed.text
    assert not exports(app, alice.id)
    no_csrf = client.post("/admin/policy/upload", data={"org": "acme", "file": (
        io.BytesIO(GOOD.encode()), "acme.csv")}, content_type="multipart/form-data")
    assert no_csrf.status_code == 400

    member = app.test_client()
    assert sign_in(member, "alice@acme.test").status_code == 302
    assert member.get("/admin/policy").status_code == 403
    assert member.post("/admin/policy/upload", data={
        "csrf_token": csrf_token(member, "/"), "org": "acme",
        "file": (io.BytesIO(GOOD.encode()), "acme.csv")},
        content_type="multipart/form-data").status_code == 403
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count(OrgPolicy.id))) == 0
