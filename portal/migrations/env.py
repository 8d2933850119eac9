"""Alembic environment: the URL comes from the caller (``portal.migrate``), never a file."""

from alembic import context

from portal.db import Base, create_engine, for_dialect
from portal import models  # noqa: F401  (registers the tables on Base.metadata)

config = context.config


def run_migrations() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=connection.dialect.name == "sqlite",
                          compare_type=True,
                          include_object=for_dialect(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
