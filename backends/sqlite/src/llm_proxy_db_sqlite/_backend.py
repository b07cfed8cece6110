"""The SQLite backend: the shared SQL store logic on pooled sqlite3 connections."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, TransientError
from llm_proxy_db.sql import (
    Connections,
    DbApiExecutor,
    DbApiMigrationConnection,
    Dialect,
    HeldConnections,
    IntegrityViolation,
    SqlBackend,
    Statements,
    Step,
    fold_case,
)

from ._dialect import SQLITE
from ._pool import Connection, ConnectionPool

__all__ = ["SQLiteBackend", "SQLiteFile", "translate_error"]

_log = logging.getLogger(__name__)

_PROGRESS_OPCODES = 1000
"""How many virtual-machine instructions run between two checks of ``statement_timeout``."""
_INTERRUPT_CODE = 9  # SQLITE_INTERRUPT
_UNIQUE_CODES = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
_FOREIGN_KEY_CODE = 787  # SQLITE_CONSTRAINT_FOREIGNKEY
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_FULL_CODE = 13  # SQLITE_FULL


_DECODE_ERROR = re.compile(r"Could not decode to UTF-8 column '([A-Za-z0-9_]{1,64})' with text")
"""sqlite3's message for a stored value that is not UTF-8: it goes on to quote the value."""


def translate_error(exc: Exception) -> DatabaseError:
    """Map a sqlite3 exception onto the core's error tree."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    if text.startswith("Could not decode to UTF-8"):
        # The rest quotes the stored value: an upstream key or a token. Name the column only.
        match = _DECODE_ERROR.match(text)
        column = f"column {match[1]!r}" if match else "a column"
        return DatabaseError(
            f"SQLite: {column} of a stored row holds text that is not valid UTF-8 (written by "
            "another program?); repair or delete that row"
        )
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


_READONLY_CODE = 8  # SQLITE_READONLY (and its extended codes)
_CANTOPEN_CODE = 14  # SQLITE_CANTOPEN


def _read_only_reason(path: str) -> str | None:
    """Why an existing database file cannot be written here (a read-only file, folder or
    mount), or None: it is then opened read-only, where the WAL switch (a write) would
    fail every open."""
    if path == ":memory:" or path.startswith("file:") or not os.path.isfile(path):
        return None
    folder = os.path.dirname(os.path.abspath(path)) or "."
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
    if not os.access(path, os.W_OK):
        return "the file is read-only"
    if not os.access(folder, os.W_OK):
        return "its folder is read-only"
    return None


def _read_only_uri(path: str, *, immutable: bool) -> str:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    # immutable: no -shm file is needed (none can be created in a read-only folder); only
    # used when no -wal file exists either, so no committed write is left unread.
    return uri + "&immutable=1" if immutable else uri


def _transaction_aborted(conn: sqlite3.Connection) -> str | None:
    # SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR,
    # SQLITE_NOMEM, ...): COMMIT would then fail with "no transaction is active".
    return None if conn.in_transaction else "SQLite rolled it back after an error"


def _unicode_lower(value: str | bytes | int | float | None) -> str | bytes | int | float | None:
    return fold_case(value) if isinstance(value, str) else value  # as the models compare


def _enable_wal(conn: sqlite3.Connection, wait: float) -> None:
    # Switching a new file to WAL needs a lock that busy_timeout does not wait for: when
    # several processes open a fresh file at once, retry for a while instead of failing.
    deadline = time.monotonic() + wait
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
                    wait,
                    attempt,
                )
                raise
            _log.debug("switching SQLite to WAL: the database is locked; retry %d", attempt)
            time.sleep(0.01)


def quick_check(path: str) -> Step[None]:
    """``PRAGMA quick_check`` of the database at ``path``: ``DatabaseError`` naming the
    first problems it reports."""
    return Step("PRAGMA quick_check", decode=_quick_check_passed, subject=path)


def _quick_check_passed(rows: list[Any], path: str) -> None:
    problems = [str(row[0]) for row in rows if str(row[0]) != "ok"]
    if problems:
        shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
        raise DatabaseError(f"SQLite database {path!r} failed quick_check: {shown}")


class _TimedExecutor(DbApiExecutor[Connection]):
    """The executor when ``statement_timeout`` is set: each statement runs with a deadline
    that the connection's progress handler enforces (SQLite interrupts the statement)."""

    limit = math.inf
    """``statement_timeout`` in seconds."""

    def statement(self, conn: Connection, sql: str, params: Any, rows: bool) -> Any:
        conn.deadline = time.monotonic() + self.limit
        try:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if rows else cursor.rowcount
        finally:
            conn.deadline = math.inf

    def statement_many(self, conn: Connection, sql: str, params: Any) -> int:
        conn.deadline = time.monotonic() + self.limit
        try:
            return int(conn.executemany(sql, params).rowcount)
        finally:
            conn.deadline = math.inf


class SQLiteFile:
    """One SQLite database as every backend of this package opens it: the path checked,
    read-only files detected, each connection configured the same way (busy_timeout,
    statement_timeout, foreign keys, Unicode ``lower``, WAL), driver errors translated
    naming the file, and the executor over a set of its connections."""

    def __init__(self, config: FullConfig, *, dialect: Dialect = SQLITE) -> None:
        self.dialect = dialect
        self.busy_timeout = config.busy_timeout.total_seconds()
        self.statement_timeout = config.statement_timeout.total_seconds()
        self.path = _database_file(config.path)
        self.read_only = _read_only_reason(self.path)
        """Why the file cannot be written here, or None."""
        if self.read_only is not None:
            _log.info(
                "opening SQLite database %r read-only: %s; writes will fail",
                self.path,
                self.read_only,
            )
        self.in_memory = self.path == ":memory:"

    def executor(self, connections: Connections[Connection]) -> DbApiExecutor[Connection]:
        """The executor over ``connections`` (a deadline per statement when
        ``statement_timeout`` is set)."""
        options: dict[str, Any] = {
            "dialect": self.dialect,
            "driver_error": sqlite3.Error,
            "translate": self.translate,
            "transaction_aborted": _transaction_aborted,
        }
        if self.statement_timeout > 0:
            timed = _TimedExecutor(connections, **options)
            timed.limit = self.statement_timeout
            return timed
        return DbApiExecutor(connections, **options)  # no deadline kept per statement

    def connect(self) -> Connection:
        """A new connection, configured (read-only where the file cannot be written)."""
        if self.read_only is not None:
            return self._configure(self._open_read_only())
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=Connection,
                uri=self.path.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open SQLite database {self.path!r}: {exc}") from None
        return self._configure(conn)

    def _open_read_only(self) -> Connection:
        """A read-only connection: ``mode=ro``; where that cannot read (a WAL database
        without its ``-shm`` file in a read-only folder), ``immutable=1`` when no ``-wal``
        file exists either."""
        error = ""
        modes = (False,) if os.path.exists(self.path + "-wal") else (False, True)
        for immutable in modes:
            try:
                conn = sqlite3.connect(
                    _read_only_uri(self.path, immutable=immutable),
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                    factory=Connection,
                    uri=True,
                )
            except sqlite3.Error as exc:
                error = str(exc)
                continue
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.Error as exc:
                conn.close()
                error = str(exc)
                if getattr(exc, "sqlite_errorcode", None) == _CANTOPEN_CODE:
                    continue  # no -shm file and none can be made: try immutable
                break
            assert isinstance(conn, Connection)
            return conn
        raise DatabaseError(
            f"cannot open SQLite database {self.path!r} read-only ({self.read_only}): {error}"
        )

    def _configure(self, conn: sqlite3.Connection) -> Connection:
        assert isinstance(conn, Connection)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.statement_timeout > 0:
                conn.set_progress_handler(conn.past_deadline, _PROGRESS_OPCODES)
            conn.execute("PRAGMA foreign_keys = ON")
            # SQLite's own lower() folds ASCII only; audit search is case-insensitive for
            # every script, as on the other backends.
            conn.create_function("lower", 1, _unicode_lower, deterministic=True)
            if self.path != ":memory:" and self.read_only is None:
                _enable_wal(conn, max(self.busy_timeout, 1.0))
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot open SQLite database {self.path!r}: {exc}") from None
        return conn

    def translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``, naming the file and the timeout that ran out."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _READONLY_CODE:
            why = f" ({self.read_only})" if self.read_only else ""
            return DatabaseError(
                f"the SQLite database {self.path!r} is read-only{why}: it can be read, not written"
            )
        if code is not None and code & 0xFF in _BUSY_CODES:
            return TransientError(
                f"the SQLite database {self.path!r} is locked: another connection held its "
                f"lock longer than busy_timeout ({self.busy_timeout:g} s); retry later"
            )
        if code is not None and code & 0xFF == _INTERRUPT_CODE:
            return TransientError(
                f"a statement on the SQLite database {self.path!r} ran longer than "
                f"statement_timeout ({self.statement_timeout:g} s) and was interrupted"
            )
        if code is not None and code & 0xFF == _FULL_CODE:
            return DatabaseError(
                f"the SQLite database {self.path!r} could not grow: the disk or its "
                "quota is full; nothing of the failed call was stored"
            )
        return translate_error(exc)


class SQLiteBackend(SqlBackend):
    """A ``Backend`` on one SQLite database file (or ``:memory:``).

    ``dialect`` is :data:`SQLITE` unless a test asks for a variant (for example one
    without ``UPDATE ... RETURNING``, the path MySQL takes).
    """

    def __init__(self, config: FullConfig, *, dialect: Dialect = SQLITE) -> None:
        database = self._database = SQLiteFile(config, dialect=dialect)
        self._dialect = dialect
        self._path = database.path
        self._translate = database.translate
        in_memory = database.in_memory
        if in_memory:
            # One connection behind the pool's lock: every thread sees the same database.
            self._shared = self._connect()
        self._pool = ConnectionPool(
            self._shared_connection if in_memory else self._connect,
            max_open=1 if in_memory else config.max_open_conns,
            max_idle=1 if in_memory else config.max_idle_conns,
            max_lifetime=float("inf") if in_memory else config.conn_max_lifetime.total_seconds(),
            timeout=config.pool_timeout.total_seconds(),
            shared=in_memory,
        )
        # Each thread keeps the connection it used last (no pool round per call), at most
        # max_idle_conns of them: a held connection waiting for its thread is an idle one.
        self._held = HeldConnections(
            self._pool,
            hold=self._pool.max_idle,
            expires=self._pool.expires,
        )
        super().__init__(database.executor(self._held), Statements(dialect))
        self._in_memory = in_memory

    def _connect(self) -> Connection:
        return self._database.connect()

    def check_integrity(self) -> None:
        """``PRAGMA quick_check``: every page of the file read and checked (the b-tree
        structure, not index contents); raise ``DatabaseError`` naming the first problems."""
        self._executor.run(quick_check(self._path))

    def _shared_connection(self) -> Connection:
        return self._shared

    def close(self) -> None:
        self._held.close()
        self._pool.close()
        if self._in_memory:
            self._shared.close()

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        # Each file's BEGIN IMMEDIATE transaction serialises writers: no lock is needed.
        with self.executor.connection() as conn:
            yield DbApiMigrationConnection(
                conn, self._dialect, driver_error=sqlite3.Error, translate=self._translate
            )
