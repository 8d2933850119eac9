"""Engine and session handling, kept free of Flask so services and the CLI share it.

Services take a ``Session`` and never commit; the caller owns the transaction, so a write
path is stored whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def for_dialect(dialect: str):
    """``include_object`` for Alembic's comparison: an object marked
    ``info={"dialects": (...)}`` (a PostgreSQL-only index) exists only on those dialects, so
    it is left out of the comparison elsewhere. Its DDL carries the same ``ddl_if``."""
    def include(obj, _name, _type, _reflected, _compare_to) -> bool:
        dialects = getattr(obj, "info", {}).get("dialects")
        return dialects is None or dialect in dialects
    return include


def core(session: Session) -> sa.Connection:
    """The session's connection, for the prebuilt Core statements of hot paths (every
    sign-in runs a dozen). Through ``Session.execute`` each costs ~40 µs more (ORM execute
    events and state) for the same result: such statements load no entities, and the session
    runs them without flushing either way."""
    return session.connection()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """One engine and session factory per app (or CLI invocation)."""

    def __init__(self, url: str, **engine_options) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_options)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def create_engine(url: str, **options) -> sa.Engine:
    if url.startswith("sqlite"):
        options.setdefault("connect_args", {}).setdefault("timeout", 15)
        engine = sa.create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **options)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def flush_or_conflict(session: Session, message: str, code: str) -> None:
    """Flush new rows, turning a unique-constraint race into a clean ``Conflict``: a concurrent
    writer can win between our existence check and our insert."""
    from portal.errors import Conflict

    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(message, code=code) from None
