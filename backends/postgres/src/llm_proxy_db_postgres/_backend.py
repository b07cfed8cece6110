"""The PostgreSQL backend: the shared SQL stores on a psycopg_pool connection pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, MigrationError, TransientError
from llm_proxy_db.sql import (
    POSTGRES,
    DbApiMigrationConnection,
    IntegrityViolation,
    PooledExecutor,
    SqlStores,
    Statements,
    sql_transaction,
)

__all__ = ["PostgresBackend", "translate_error"]

_STATEMENTS = Statements(POSTGRES)
POOL_TIMEOUT_S = 10.0
"""How long a call waits for a free pooled connection before failing."""
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
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return IntegrityViolation("unique", message)
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return IntegrityViolation("foreign_key", message)
    if isinstance(exc, psycopg.IntegrityError):
        return IntegrityViolation("other", message)
    if isinstance(exc, PoolTimeout):
        return DatabaseError(
            f"no PostgreSQL connection was free within {POOL_TIMEOUT_S:g}s; "
            "raise DATABASE_POOL_SIZE or lower the load"
        )
    if isinstance(exc, _RETRYABLE):
        return TransientError(f"PostgreSQL: {message}; retry")
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
        # psycopg's reason may quote the string, password included: give none of it.
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL URL; use the form "
            "postgresql://user:password@host:5432/dbname"
        ) from None
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


class PostgresBackend(SqlStores):
    """A ``Backend`` on a PostgreSQL database (or one schema of it)."""

    def __init__(self, config: FullConfig) -> None:
        self._url = _conninfo(config)
        kwargs: dict[str, Any] = {"autocommit": True}
        self._pool = ConnectionPool(
            self._url,
            kwargs=kwargs,
            min_size=config.max_idle_conns,
            max_size=config.max_open_conns,
            max_lifetime=config.conn_max_lifetime.total_seconds(),
            timeout=POOL_TIMEOUT_S,
            open=False,
            name="llm-proxy-db",
        )
        super().__init__(
            PooledExecutor(self._pool.connection, psycopg.Error, self._translate), _STATEMENTS
        )
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
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            password = conninfo.conninfo_to_dict(self._url).get("password")
            if password:
                reason = reason.replace(str(password), "***")
            raise DatabaseError(
                f"cannot reach PostgreSQL at {describe_target(self._url)}: {reason}"
            ) from None

    def _translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``; after a lost connection, also test the idle ones.

        A server restart or ``pg_terminate_backend`` kills every pooled connection, but the
        pool only learns it when each one fails a call. Testing the idle connections here
        (on the error path only: no round trip per checkout) lets the next call get a fresh
        connection instead of the next dead one.
        """
        if _connection_lost(exc):
            with suppress(Exception):
                self._pool.check()
        return translate_error(exc)

    def close(self) -> None:
        self._pool.close()

    def health_check(self) -> None:
        try:
            self._ex.query("SELECT 1")
        except DatabaseError as exc:
            raise DatabaseError(
                f"cannot reach PostgreSQL at {describe_target(self._url)}: {exc}"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[SqlStores]:
        try:
            with (
                self._pool.connection() as conn,
                sql_transaction(conn, _STATEMENTS, psycopg.Error, self._translate) as stores,
            ):
                yield stores
        except psycopg.Error as exc:  # checkout failed (pool timeout, server gone)
            raise self._translate(exc) from None

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        """One dedicated connection; when ``exclusive``, holding goose's advisory lock for
        the whole run (read-only calls never wait for another process's migration)."""
        try:
            conn = psycopg.connect(self._url, autocommit=True)
        except psycopg.Error as exc:
            raise MigrationError(
                f"cannot connect to run migrations: {translate_error(exc)}"
            ) from None
        try:
            if not exclusive:
                yield DbApiMigrationConnection(conn, POSTGRES)
                return
            self._lock(conn)
            try:
                yield DbApiMigrationConnection(conn, POSTGRES)
            finally:
                # A dead connection has released its session lock already; never let a
                # failed unlock hide the run's own error behind a raw psycopg exception.
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
        finally:
            conn.close()

    @staticmethod
    def _lock(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(f"SET statement_timeout = {int(MIGRATION_LOCK_TIMEOUT_S * 1000)}")
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        except psycopg.errors.QueryCanceled:
            raise MigrationError(
                f"another process held the migration lock for {MIGRATION_LOCK_TIMEOUT_S:g}s; "
                "wait for it to finish, then retry"
            ) from None
        except psycopg.Error as exc:
            raise MigrationError(
                f"cannot take the migration lock: {translate_error(exc)}"
            ) from None
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET statement_timeout")
