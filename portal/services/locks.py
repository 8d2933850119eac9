"""Named locks across processes, for jobs that must not run twice at once.

A directory sync started by cron while the previous one is still running would read the same
pages and race on the same rows; the second run must stop at once with a plain message
instead. On PostgreSQL the lock is a session advisory lock, so it holds across hosts and ends
with the process however it dies. SQLite is a single-host database, so a ``flock`` on a file
beside the database file does the same; an in-memory database only has this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from portal.db import Database
from portal.errors import Conflict

_LOCAL: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


class Busy(Conflict):
    code = "busy"


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive(db: Database, name: str, busy_message: str) -> Iterator[None]:
    """Hold the lock ``name`` for the block, or raise ``Busy`` without waiting."""
    if db.engine.dialect.name == "postgresql":
        lock = _postgres_lock
    elif (db.engine.url.database or ":memory:") != ":memory:":
        lock = _file_lock
    else:
        lock = _process_lock
    with lock(db, name) as held:
        if not held:
            raise Busy(busy_message)
        yield


@contextlib.contextmanager
def _postgres_lock(db: Database, name: str) -> Iterator[bool]:
    key = _advisory_key(name)
    with db.engine.connect() as connection:
        held = bool(connection.scalar(sa.select(sa.func.pg_try_advisory_lock(key))))
        connection.commit()
        try:
            yield held
        finally:
            if held:
                connection.scalar(sa.select(sa.func.pg_advisory_unlock(key)))
                connection.commit()


@contextlib.contextmanager
def _file_lock(db: Database, name: str) -> Iterator[bool]:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(f"{db.engine.url.database}.{safe}.lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _process_lock(_db: Database, name: str) -> Iterator[bool]:
    with _LOCAL_GUARD:
        lock = _LOCAL.setdefault(name, threading.Lock())
    held = lock.acquire(blocking=False)
    try:
        yield held
    finally:
        if held:
            lock.release()
