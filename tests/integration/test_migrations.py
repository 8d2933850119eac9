"""Migrations are the only way the schema changes: they go up and down cleanly, and the
models match what they build."""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from portal import migrate
from portal.db import Base, create_engine, for_dialect


def test_upgrade_downgrade_round_trip(backend_url, tmp_path):
    from tests.conftest import temporary_postgres_database
    if backend_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
        run(url)
    else:
        import os
        with temporary_postgres_database(os.environ["TEST_DATABASE_URL"]) as url:
            run(url)


def run(url):
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
        diff = compare_metadata(MigrationContext.configure(connection, opts={
            "include_object": for_dialect(connection.dialect.name)}), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    migrate.downgrade(url, "base")
    with engine.connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    engine.dispose()


def test_0016_rechains_existing_audit_events_and_keeps_the_old_head(backend_url, tmp_path):
    """Events written in the first chain format are re-chained (after the old chain was
    checked), verify afterwards, and can then be pseudonymized without breaking the chain;
    the downgrade re-chains them in the first format."""
    from tests.conftest import temporary_postgres_database
    if backend_url.startswith("sqlite"):
        check_rechain(f"sqlite:///{tmp_path / 'rechain.db'}")
    else:
        import os
        with temporary_postgres_database(os.environ["TEST_DATABASE_URL"]) as url:
            check_rechain(url)


V1 = ("seq", "occurred_at", "actor_id", "actor", "organization_id", "action", "target",
      "outcome", "reason", "ip", "user_agent", "request_id", "details")


def _v1_hash(prev, row):
    import hashlib
    import json
    data = {name: row[name] for name in V1}
    data["occurred_at"] = row["occurred_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256((prev + text).encode()).hexdigest()


def _v1_chain_ok(connection) -> bool:
    prev = "0" * 64
    for row in connection.execute(sa.text(
            "SELECT * FROM audit_events ORDER BY seq")).mappings():
        row = dict(row)
        if isinstance(row["details"], str):
            import json
            row["details"] = json.loads(row["details"])
        when = row["occurred_at"]
        if isinstance(when, str):
            from datetime import datetime
            when = datetime.fromisoformat(when)
        row["occurred_at"] = when.astimezone(UTC) if when.tzinfo else when
        if row["prev_hash"] != prev or _v1_hash(prev, row) != row["hash"]:
            return False
        prev = row["hash"]
    return True


def check_rechain(url):
    from sqlalchemy.orm import Session

    from portal import audit
    from portal.models import AuditHead
    migrate.upgrade(url, "0020")
    engine = create_engine(url)
    prev, when = "0" * 64, datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    events = sa.table("audit_events", sa.column("details", sa.JSON),
                      sa.column("occurred_at", sa.DateTime(timezone=True)),
                      *[sa.column(n) for n in (*V1, "prev_hash", "hash")
                        if n not in ("details", "occurred_at")])
    with engine.begin() as connection:
        for seq in (1, 2, 3):
            row = {"seq": seq, "occurred_at": when, "actor_id": 7,
                   "actor": "alice@example.test", "organization_id": None,
                   "action": "auth.login", "target": "user:alice@example.test",
                   "outcome": "success", "reason": "", "ip": "192.0.2.7",
                   "user_agent": "Firefox", "request_id": "", "details": {"n": seq}}
            row["prev_hash"], row["hash"] = prev, _v1_hash(prev, row)
            connection.execute(sa.insert(events).values(**row))
            prev = row["hash"]
        connection.execute(sa.text("UPDATE audit_head SET last_seq = 3, last_hash = :h"),
                           {"h": prev})
        assert _v1_chain_ok(connection)
    old_head = prev
    migrate.upgrade(url)
    with Session(engine) as session:
        assert audit.verify(session).ok
        head = session.get(AuditHead, 1)
        assert (head.legacy_seq, head.legacy_hash, head.legacy_problem) == (3, old_head, "")
        assert audit.pseudonymize(session, "key" * 11, 7, ["alice@example.test"]) == 3
        session.commit()
        assert audit.verify(session).ok
    migrate.downgrade(url, "0020")
    with engine.connect() as connection:
        assert _v1_chain_ok(connection)
    engine.dispose()
