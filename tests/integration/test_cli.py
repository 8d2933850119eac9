"""The operator CLI: one line on stderr and a non-zero exit for every error."""

import json

import pytest
from click.testing import CliRunner

from portal.cli import main


@pytest.fixture
def trellis(settings, monkeypatch):
    env = {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
           "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
           "SECRET_KEY": settings["SECRET_KEY"], "TRELLIS_ARGON2_TIME_COST": "1",
           "TRELLIS_ARGON2_MEMORY_KIB": "8192", "TRELLIS_LOG_LEVEL": "WARNING"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def run(*args, input=None, expect=0):
        result = runner.invoke(main, list(args), input=input, catch_exceptions=False)
        assert result.exit_code == expect, result.output + result.stderr
        return result
    return run


def test_operator_sets_up_an_organization(trellis):
    assert "created organization acme (Acme Supplies)" in trellis(
        "org", "create", "acme", "--name", "Acme Supplies", "--kind", "partner",
        "--primary-color", "#0b6e4f").output
    assert "added acme.test to acme" in trellis("domain", "add", "acme", "ACME.test").output
    assert "acme.test is verified" in trellis("domain", "verify", "acme.test", "--manual").output
    trellis("user", "create", "alice@acme.test", "--org", "acme", "--name", "Alice",
            "--password-stdin", input="correct horse battery\n")
    trellis("admin", "create", "ops@trellis.test", "--password-stdin",
            input="operator password 1\n")
    assert trellis("org", "list").output == "acme\tpartner\tactive\tAcme Supplies\n"
    shown = trellis("org", "show", "acme").output
    assert "members:  1" in shown and "domain:   acme.test verified" in shown
    users = trellis("user", "list").output.splitlines()
    assert users == ["alice@acme.test\tactive\tuser\tacme", "ops@trellis.test\tactive\toperator\t-"]
    assert "suspended alice@acme.test" in trellis("user", "suspend", "alice@acme.test").output
    assert "audit chain intact: 7 events" in trellis("audit", "verify").output
    events = [json.loads(line) for line in trellis("audit", "export").output.splitlines()]
    assert [e["action"] for e in events] == [
        "org.create", "domain.add", "domain.verify", "user.create", "membership.add",
        "user.create", "user.suspend"]
    assert all(e["actor"].startswith("cli:") for e in events)


@pytest.mark.parametrize(("args", "message"), [
    (("org", "show", "nobody"), "error: There is no organization with the slug 'nobody'.\n"),
    (("org", "create", "bad_slug", "--name", "X"), "error: A slug is 1 to 63 lowercase"),
    (("domain", "verify", "acme.test"), "error: The domain acme.test has not been added"),
    (("user", "suspend", "ghost@acme.test"), "error: There is no user with the email"),
    (("org", "create", "x", "--name", "X", "--primary-color", "red</style>"),
     "error: The primary colour must look like #1a73e8."),
])
def test_errors_are_one_line_without_traceback(trellis, args, message):
    result = trellis(*args, expect=1)
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_duplicates_are_refused_and_nothing_is_stored(trellis):
    trellis("org", "create", "acme", "--name", "Acme")
    again = trellis("org", "create", "ACME", "--name", "Other", expect=1)
    assert again.stderr == "error: An organization with the slug 'acme' already exists.\n"
    trellis("user", "create", "a@acme.test", "--no-password")
    dup = trellis("user", "create", "A@Acme.Test", "--no-password", expect=1)
    assert dup.stderr == "error: A user with the email a@acme.test already exists.\n"
    assert trellis("org", "list").output.count("\n") == 1
    assert "audit chain intact: 2 events" in trellis("audit", "verify").output


def test_user_with_unknown_org_is_not_created(trellis):
    trellis("user", "create", "a@acme.test", "--org", "nowhere", "--no-password", expect=1)
    assert trellis("user", "list").output == "no users\n"


def test_audit_verify_names_an_edited_row(trellis, tx):
    import sqlalchemy as sa

    from portal.models import AuditEvent
    trellis("org", "create", "acme", "--name", "Acme")
    trellis("org", "create", "globex", "--name", "Globex")
    with tx() as session:
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 2)
                        .values(target="org:someone-else"))
    result = trellis("audit", "verify", expect=1)
    assert "event 2 was altered" in result.stderr


def test_demo_seed_is_idempotent_and_refused_in_production(trellis, monkeypatch):
    assert "demo data created" in trellis("demo", "seed").output
    assert "demo data already present" in trellis("demo", "seed").output
    monkeypatch.setenv("TRELLIS_ENV", "production")
    monkeypatch.setenv("TRELLIS_COOKIE_SECURE", "true")
    monkeypatch.setenv("TRELLIS_ENCRYPTION_KEYS", __import__("portal.crypto").crypto.generate_key())
    refused = trellis("demo", "seed", expect=1)
    assert refused.stderr == "error: Demo data is refused when TRELLIS_ENV=production.\n"


def test_bad_configuration_is_one_line(trellis, monkeypatch):
    monkeypatch.setenv("TRELLIS_ARGON2_TIME_COST", "many")
    result = trellis("org", "list", expect=1)
    assert result.stderr == ("error: configuration: TRELLIS_ARGON2_TIME_COST: must be a whole "
                             "number\n")


def test_unexpected_failure_points_to_the_log_not_a_traceback(trellis, monkeypatch, settings):
    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr("portal.services.organizations.list_all", explode)
    result = trellis("org", "list", expect=1)
    assert result.stderr.startswith("error: unexpected failure (RuntimeError); details under")
    assert "Traceback" not in result.stderr and "disk on fire" not in result.stderr
    log = (__import__("pathlib").Path(settings["INSTANCE_PATH"]) / "cli-errors.log").read_text()
    assert "disk on fire" in log
