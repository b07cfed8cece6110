"""The PostgreSQL backend: the shared SQL store logic on a psycopg_pool connection pool."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, MigrationError, TransientError
from llm_proxy_db.sql import (
    DbApiExecutor,
    DbApiMigrationConnection,
    IntegrityViolation,
    SqlBackend,
    Statements,
)

from ._dialect import POSTGRES

__all__ = ["PostgresBackend", "translate_error"]

_log = logging.getLogger(__name__)

_STATEMENTS = Statements(POSTGRES)
POOL_TIMEOUT_S = 10.0
"""How long a call waits for a free pooled connection before failing."""
MIN_KEPT_CONNECTIONS = 1
"""Connections the pool keeps open while idle (fewer if ``max_idle_conns`` says so)."""
IDLE_SECONDS = 60.0
"""How long a connection beyond those stays open unused."""
MIGRATION_LOCK_TIMEOUT_S = 120.0
"""How long ``up``/``down`` wait for another process's migration run to finish."""
MIGRATION_LOCK_ID = 5887940537704921958
"""goose's own advisory lock id: this runner and the goose CLI exclude each other."""
_RETRYABLE = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.OperationalError,
)


def describe_target(url: str) -> str:
    """Where ``url`` points, as ``user@host:port/dbname``: never its password or options.

    A string that does not parse is not quoted at all (any part of it may be a secret).
    """
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unparsable DATABASE_URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    if "@" in host:  # an unescaped '@' in the password ended up in the host
        return "(a DATABASE_URL whose password needs percent-encoding)"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{host}{port}/{params.get('dbname') or ''}"


def translate_error(exc: Exception) -> DatabaseError:
    """Map a psycopg exception onto the core's error tree.

    Only the primary message is kept: a DETAIL line may quote a key value (a token).
    """
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag is not None else None) or type(exc).__name__
    constraint = diag.constraint_name if diag is not None else None
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return IntegrityViolation(message, kind="unique", constraint=constraint)
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return IntegrityViolation(message, kind="foreign_key", constraint=constraint)
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityViolation(message, kind="other", constraint=constraint)
    if isinstance(exc, PoolTimeout):
        return DatabaseError(f"no PostgreSQL connection was free within {POOL_TIMEOUT_S:g}s")
    if isinstance(exc, _RETRYABLE):
        return TransientError(f"PostgreSQL: {message}")
    return DatabaseError(f"PostgreSQL: {message}")


def _conninfo(config: FullConfig) -> str:
    url = (config.database_url or "").strip()
    if not url:
        raise ConfigError(
            "the postgres backend needs DATABASE_URL, e.g. postgresql://user@host:5432/dbname"
        )
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        params = None
    if params is None:  # raised here, not in the except: nothing of psycopg's is attached
        # psycopg's reason may quote the string, password included: give none of it.
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL URL; use the form "
            "postgresql://user:password@host:5432/dbname"
        )
    # libpq takes any text as a port and only fails when connecting: refuse it here.
    ports = str(params.get("port") or "")
    if not all(port.strip().isdigit() for port in ports.split(",") if port.strip()):
        raise ConfigError(
            f"DATABASE_URL for {describe_target(url)} is not a valid PostgreSQL URL: "
            "the port must be a number"
        )
    return url


def _connection_lost(exc: Exception) -> bool:
    """Whether ``exc`` says the server closed the connection (killed, restarted, network)."""
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, PoolTimeout):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    # No SQLSTATE: the client saw the socket close; 08: connection exception;
    # 57P01-57P05: admin/crash shutdown, cannot connect now, database dropped, idle timeout.
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


class PostgresBackend(SqlBackend):
    """A ``Backend`` on a PostgreSQL database (or one schema of it)."""

    def __init__(self, config: FullConfig) -> None:
        self._url = _conninfo(config)
        kwargs: dict[str, Any] = {"autocommit": True}
        # max_open_conns bounds every server connection of this DB: the pool's, the
        # migration runner's (lent by the pool) and the probe (closed before the pool
        # opens one). psycopg_pool keeps min_size connections for ever and closes the
        # others after IDLE_SECONDS unused: the closest it comes to Go's idle cap.
        self._pool = ConnectionPool(
            self._url,
            kwargs=kwargs,
            min_size=min(MIN_KEPT_CONNECTIONS, config.max_idle_conns),
            max_size=config.max_open_conns,
            max_idle=IDLE_SECONDS,
            max_lifetime=config.conn_max_lifetime.total_seconds(),
            timeout=POOL_TIMEOUT_S,
            open=False,
            name="llm-proxy-db",
        )
        executor = DbApiExecutor(
            self._pool.connection,
            dialect=POSTGRES,
            driver_error=psycopg.Error,
            translate=self._translate,
        )
        super().__init__(executor, _STATEMENTS)
        self._probe()
        try:
            self._pool.open(wait=False)
            self.health_check()
        except BaseException:
            self._pool.close()
            raise

    def _probe(self) -> None:
        """Connect once before opening the pool, so an unreachable server or a refused login
        fails at once with the server's reason (the pool would retry for POOL_TIMEOUT_S and
        then only say that no connection was free)."""
        try:
            psycopg.connect(self._url, connect_timeout=max(2, int(POOL_TIMEOUT_S))).close()
            return
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        password = conninfo.conninfo_to_dict(self._url).get("password")
        if password:
            reason = reason.replace(str(password), "***")
        raise DatabaseError(f"cannot reach PostgreSQL at {describe_target(self._url)}: {reason}")

    def _translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``; after a lost connection, also test the idle ones.

        A server restart or ``pg_terminate_backend`` kills every pooled connection, but the
        pool only learns it when each one fails a call. Testing the idle connections here
        (on the error path only: no round trip per checkout) lets the next call get a fresh
        connection instead of the next dead one.
        """
        if _connection_lost(exc):
            _log.warning(
                "lost a connection to PostgreSQL at %s (%s, SQLSTATE %s): testing the pool's "
                "idle connections",
                describe_target(self._url),
                type(exc).__name__,
                getattr(exc, "sqlstate", None) or "none",
            )
            try:
                self._pool.check()
            except Exception as check_error:
                _log.debug("the pool check failed: %s", type(check_error).__name__)
        return translate_error(exc)

    def close(self) -> None:
        self._pool.close()

    def health_check(self) -> None:
        try:
            super().health_check()
        except DatabaseError as exc:
            error = DatabaseError(f"cannot reach PostgreSQL at {describe_target(self._url)}: {exc}")
        else:
            return
        raise error

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        """A connection of the pool, used by the runner alone; when ``exclusive``, holding
        goose's advisory lock for the whole run, taken and released on it (read-only
        calls never wait for another process's migration)."""
        with self.executor.connection() as conn:
            migration = DbApiMigrationConnection(
                conn, POSTGRES, driver_error=psycopg.Error, translate=translate_error
            )
            if not exclusive:
                yield migration
                return
            self._lock(conn)
            try:
                yield migration
            finally:
                # A dead connection has released its session lock already; never let a
                # failed unlock hide the run's own error behind a raw psycopg exception.
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
                except psycopg.Error as exc:
                    _log.debug(
                        "could not release the migration lock on %s (%s): the session's end "
                        "releases it",
                        describe_target(self._url),
                        type(exc).__name__,
                    )
                else:
                    _log.debug("released the migration lock on %s", describe_target(self._url))

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        error: MigrationError | None = None
        target = describe_target(self._url)
        try:
            conn.execute(f"SET statement_timeout = {int(MIGRATION_LOCK_TIMEOUT_S * 1000)}")
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_ID,)).fetchone()
            if row is not None and row[0]:
                _log.debug("took the migration lock on %s", target)
            else:
                _log.info(
                    "another process holds the migration lock on %s: waiting up to %gs for it",
                    target,
                    MIGRATION_LOCK_TIMEOUT_S,
                )
                started = time.monotonic()
                conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
                _log.info(
                    "took the migration lock on %s after waiting %.0f ms",
                    target,
                    (time.monotonic() - started) * 1000,
                )
        except psycopg.errors.QueryCanceled:
            error = MigrationError(
                f"another process held the migration lock for {MIGRATION_LOCK_TIMEOUT_S:g}s; "
                "wait for it to finish, then retry"
            )
        except psycopg.Error as exc:
            error = MigrationError(f"cannot take the migration lock: {translate_error(exc)}")
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET statement_timeout")
        if error is not None:
            raise error
