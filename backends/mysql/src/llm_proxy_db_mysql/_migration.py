"""The migration runner's connection on MySQL and MariaDB, and the migration lock.

The lock is ``GET_LOCK``, named as the Go llm-proxy names its own (so its migration runs
and this package's exclude each other). A named lock belongs to the session that took it:
released on another connection it stays held, and a connection handed back to a pool
would keep it. So every run gets a connection of its own, opened here and closed at the
end (which releases the lock whatever happened); the lock is taken on it, and only for an
exclusive run, which the runner starts only when a file is pending (or for ``down``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import pymysql
from pymysql.connections import Connection

from llm_proxy_db import DatabaseError, MigrationError
from llm_proxy_db.sql import DbApiMigrationConnection, Dialect, Translate

from ._dialect import MYSQL

__all__ = ["MIGRATION_LOCK", "MIGRATION_LOCK_TIMEOUT_S", "migration_connection"]

_log = logging.getLogger(__name__)

MIGRATION_LOCK = "llm-proxy-migrations"
"""The ``GET_LOCK`` name: the Go llm-proxy's own, so the two programs never migrate one
database at the same time. Named locks are server-wide: as with the Go program, runs on
different databases of one server wait for each other too."""
MIGRATION_LOCK_TIMEOUT_S = 120.0
"""How long ``up``/``down`` wait for another process's migration run to finish."""
_LOCK_POLL_S = 1.0
"""The longest single ``GET_LOCK`` wait: the lock is waited for in such steps, so no call
blocks longer than a connection's read timeout."""


@contextmanager
def migration_connection(
    connect: Callable[[], Connection[Any]],
    *,
    translate: Translate,
    exclusive: bool = True,
    shared: Callable[[], AbstractContextManager[DbApiMigrationConnection]] | None = None,
    dialect: Dialect = MYSQL,
    target: str = "MySQL",
    lock_timeout: float = MIGRATION_LOCK_TIMEOUT_S,
) -> Iterator[DbApiMigrationConnection]:
    """A connection for one run of the migration runner (``MigrationTarget``'s method).

    ``connect`` opens a new connection (autocommit, the backend's session settings; no
    client read timeout shorter than the longest ``ALTER TABLE``), used by this run alone
    and closed when the block ends; the session's statement time limit is lifted on it.
    With ``exclusive`` the run holds ``GET_LOCK(MIGRATION_LOCK)`` on it throughout;
    waiting longer than ``lock_timeout`` seconds is a ``MigrationError`` naming the
    holder's connection id (``IS_USED_LOCK``). A read-only run (not ``exclusive``) takes
    no lock and uses ``shared()`` when given (a pooled connection: opening an up-to-date
    database then costs no new connection). ``translate`` maps driver errors; ``target``
    names the server in messages.
    """
    if not exclusive and shared is not None:
        with shared() as pooled:
            yield pooled
        return
    conn = connect()
    try:
        _lift_statement_limit(conn, translate)
        migration = DbApiMigrationConnection(
            conn, dialect, driver_error=pymysql.Error, translate=translate
        )
        if not exclusive:
            yield migration
            return
        _lock(conn, translate, target=target, timeout=lock_timeout)
        try:
            yield migration
        finally:
            _unlock(conn, target)
    finally:
        with suppress(pymysql.Error):  # a broken connection: closing it releases the lock
            conn.close()


def _lift_statement_limit(conn: Connection[Any], translate: Translate) -> None:
    """Migrations run without ``max_statement_time`` (MariaDB) / ``max_execution_time``."""
    mariadb = "mariadb" in str(getattr(conn, "server_version", "")).lower()
    setting = "max_statement_time = 0" if mariadb else "max_execution_time = 0"
    error: DatabaseError | None = None
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SET SESSION {setting}")
    except pymysql.Error as exc:
        error = translate(exc)
    if error is not None:
        raise error


def _scalar(conn: Connection[Any], statement: str, params: tuple[Any, ...]) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def _holder(conn: Connection[Any]) -> int | None:
    value = _scalar(conn, "SELECT IS_USED_LOCK(%s)", (MIGRATION_LOCK,))
    return None if value is None else int(value)


def _holder_database(conn: Connection[Any], holder: int) -> str | None:
    """The database the holder's session uses, where this user may see it (``PROCESS``)."""
    try:
        value = _scalar(
            conn, "SELECT db FROM information_schema.processlist WHERE id = %s", (holder,)
        )
    except pymysql.Error:
        return None
    return None if value is None else str(value)


def _lock(conn: Connection[Any], translate: Translate, *, target: str, timeout: float) -> None:
    error: MigrationError | None = None
    try:
        if _scalar(conn, "SELECT GET_LOCK(%s, 0)", (MIGRATION_LOCK,)) == 1:
            _log.debug("took the migration lock on %s", target)
            return
        _log.info(
            "another process (MySQL connection id %s) holds the migration lock on %s: "
            "waiting up to %gs for it",
            _holder(conn),
            target,
            timeout,
        )
        started = time.monotonic()
        deadline = started + timeout
        while True:
            step = max(0.0, min(_LOCK_POLL_S, deadline - time.monotonic()))
            taken = _scalar(conn, "SELECT GET_LOCK(%s, %s)", (MIGRATION_LOCK, step))
            if taken != 0 or time.monotonic() >= deadline:
                break
        if taken == 1:
            _log.info(
                "took the migration lock on %s after waiting %.0f ms",
                target,
                (time.monotonic() - started) * 1000,
            )
            return
        if taken == 0:
            holder = _holder(conn)
            if holder is None:
                who = "it has released the lock just now"
            else:
                database = _holder_database(conn, holder)
                on = f" on database {database!r}" if database else ""
                who = (
                    f"MySQL connection id {holder}{on}: SHOW PROCESSLIST shows it, "
                    f"KILL {holder} ends it"
                )
            error = MigrationError(
                f"another process held the migration lock {MIGRATION_LOCK!r} on {target} for "
                f"{timeout:g}s ({who}); wait for its migration run to finish, then retry"
            )
        else:
            error = MigrationError(
                f"cannot take the migration lock {MIGRATION_LOCK!r} on {target}: GET_LOCK "
                "returned NULL"
            )
    except pymysql.Error as exc:
        error = MigrationError(f"cannot take the migration lock on {target}: {translate(exc)}")
    raise error


def _unlock(conn: Connection[Any], target: str) -> None:
    # A dead connection has released its lock already; never let a failed release hide
    # the run's own error behind a driver exception (closing the connection releases it).
    try:
        _scalar(conn, "SELECT RELEASE_LOCK(%s)", (MIGRATION_LOCK,))
    except pymysql.Error as exc:
        _log.debug(
            "could not release the migration lock on %s (%s): closing the connection releases it",
            target,
            type(exc).__name__,
        )
    else:
        _log.debug("released the migration lock on %s", target)
