"""Migrations are the only way the schema changes: they go up and down cleanly, and the
models match what they build."""

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
