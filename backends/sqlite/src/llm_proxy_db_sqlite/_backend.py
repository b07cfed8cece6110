"""The SQLite backend: the shared SQL stores on pooled sqlite3 connections."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, TransientError
from llm_proxy_db.sql import (
    SQLITE,
    DbApiMigrationConnection,
    IntegrityViolation,
    PooledExecutor,
    SqlStores,
    Statements,
    sql_transaction,
)

from ._pool import Connection, ConnectionPool

__all__ = ["SQLiteBackend"]

BUSY_TIMEOUT_MS = 10_000
_STATEMENTS = Statements(SQLITE)
_UNIQUE_CODES = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
_FOREIGN_KEY_CODE = 787  # SQLITE_CONSTRAINT_FOREIGNKEY
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED


def translate_error(exc: Exception) -> DatabaseError:
    """Map a sqlite3 exception onto the core's error tree."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.IntegrityError):
        if code == _FOREIGN_KEY_CODE:
            return IntegrityViolation("foreign_key", "a foreign key constraint failed")
        if code in _UNIQUE_CODES:
            return IntegrityViolation("unique", "a unique constraint failed")
        return IntegrityViolation("other", f"a constraint failed: {exc}")
    if code is not None and code & 0xFF in _BUSY_CODES:
        return TransientError(f"SQLite is busy: {exc}; retry")
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
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteBackend(SqlStores):
    """A ``Backend`` on one SQLite database file (or ``:memory:``)."""

    def __init__(self, config: FullConfig) -> None:
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
        super().__init__(
            PooledExecutor(self._pool.connection, sqlite3.Error, translate_error), _STATEMENTS
        )
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

    def health_check(self) -> None:
        self._ex.query("SELECT 1")

    @contextmanager
    def transaction(self) -> Iterator[SqlStores]:
        with (
            self._pool.connection() as conn,
            sql_transaction(conn, _STATEMENTS, sqlite3.Error, translate_error) as stores,
        ):
            yield stores

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        # Each file's BEGIN IMMEDIATE transaction serialises writers: no lock is needed.
        with self._pool.connection() as conn:
            yield DbApiMigrationConnection(conn, SQLITE)
