"""The SQLite backend: the shared SQL store logic on pooled sqlite3 connections."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, TransientError
from llm_proxy_db.sql import (
    DbApiExecutor,
    DbApiMigrationConnection,
    Dialect,
    IntegrityViolation,
    SqlBackend,
    Statements,
)

from ._dialect import SQLITE
from ._pool import Connection, ConnectionPool

__all__ = ["SQLiteBackend", "translate_error"]

_log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
_UNIQUE_CODES = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
_FOREIGN_KEY_CODE = 787  # SQLITE_CONSTRAINT_FOREIGNKEY
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED


def translate_error(exc: Exception) -> DatabaseError:
    """Map a sqlite3 exception onto the core's error tree."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.IntegrityError):
        if code == _FOREIGN_KEY_CODE:
            return IntegrityViolation("a foreign key constraint failed", kind="foreign_key")
        if code in _UNIQUE_CODES:
            # "UNIQUE constraint failed: projects.name": the columns, never the values.
            columns = str(exc).partition("failed: ")[2] or None
            return IntegrityViolation(
                "a unique constraint failed", kind="unique", constraint=columns
            )
        return IntegrityViolation(f"a constraint failed: {exc}", kind="other")
    if code is not None and code & 0xFF in _BUSY_CODES:
        return TransientError(f"SQLite is busy: {exc}")
    return DatabaseError(f"SQLite error: {exc}")


def _database_file(path: str) -> str:
    if path == ":memory:" or path.startswith("file:"):
        return path
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"DATABASE_PATH {path!r} is a directory; name a file inside it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the folder for DATABASE_PATH {path!r}: {exc.strerror}"
        ) from None
    return os.fspath(target)


def _unicode_lower(value: str | bytes | int | float | None) -> str | bytes | int | float | None:
    return value.lower() if isinstance(value, str) else value


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs a lock that busy_timeout does not wait for: when
    # several processes open a fresh file at once, retry for a while instead of failing.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    attempt = 0
    while True:
        attempt += 1
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            if time.monotonic() > deadline:
                _log.warning(
                    "switching SQLite to WAL: the database stayed locked for %gs (%d attempts); "
                    "giving up",
                    BUSY_TIMEOUT_MS / 1000,
                    attempt,
                )
                raise
            _log.debug("switching SQLite to WAL: the database is locked; retry %d", attempt)
            time.sleep(0.01)


class SQLiteBackend(SqlBackend):
    """A ``Backend`` on one SQLite database file (or ``:memory:``).

    ``dialect`` is :data:`SQLITE` unless a test asks for a variant (for example one
    without ``UPDATE ... RETURNING``, the path MySQL takes).
    """

    def __init__(self, config: FullConfig, *, dialect: Dialect = SQLITE) -> None:
        self._dialect = dialect
        self._path = _database_file(config.path)
        in_memory = self._path == ":memory:"
        if in_memory:
            # One connection behind the pool's lock: every thread sees the same database.
            self._shared = self._connect()
        self._pool = ConnectionPool(
            self._shared_connection if in_memory else self._connect,
            max_open=1 if in_memory else config.max_open_conns,
            max_idle=1 if in_memory else config.max_idle_conns,
            max_lifetime=float("inf") if in_memory else config.conn_max_lifetime.total_seconds(),
            timeout=BUSY_TIMEOUT_MS / 1000 * 3,
        )
        executor = DbApiExecutor(
            self._pool.connection,
            dialect=dialect,
            driver_error=sqlite3.Error,
            translate=translate_error,
        )
        super().__init__(executor, Statements(dialect))
        self._in_memory = in_memory

    def _connect(self) -> Connection:
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
                factory=Connection,
                uri=self._path.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open SQLite database {self._path!r}: {exc}") from None
        assert isinstance(conn, Connection)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            # SQLite's own lower() folds ASCII only; audit search is case-insensitive for
            # every script, as on the other backends.
            conn.create_function("lower", 1, _unicode_lower, deterministic=True)
            if self._path != ":memory:":
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot open SQLite database {self._path!r}: {exc}") from None
        return conn

    def _shared_connection(self) -> Connection:
        return self._shared

    def close(self) -> None:
        self._pool.close()
        if self._in_memory:
            self._shared.close()

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        # Each file's BEGIN IMMEDIATE transaction serialises writers: no lock is needed.
        with self.executor.connection() as conn:
            yield DbApiMigrationConnection(
                conn, self._dialect, driver_error=sqlite3.Error, translate=translate_error
            )
