"""The MySQL backend: the shared SQL store logic on pooled PyMySQL connections."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
from pymysql.connections import Connection
from pymysql.constants import CLIENT, SERVER_STATUS

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, TransientError
from llm_proxy_db.sql import (
    DbApiExecutor,
    DbApiMigrationConnection,
    DbApiPool,
    HeldConnections,
    IntegrityViolation,
    SqlBackend,
    Statements,
)

from ._dialect import MYSQL

__all__ = ["SQL_MODE", "MySQLBackend", "describe_target", "translate_error"]

_log = logging.getLogger(__name__)

_STATEMENTS = Statements(MYSQL)

SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)
"""Every connection's ``sql_mode``, whatever the server's default: an over-long or invalid
value is refused, never truncated or zeroed (``STRICT_ALL_TABLES``: for every table and
every row of a statement; ``NO_ZERO_DATE``/``NO_ZERO_IN_DATE``: no ``0000-00-00``); no
silent engine swap. Left out on purpose: ``NO_BACKSLASH_ESCAPES`` (PyMySQL escapes the
values it interpolates with backslashes: a server default with it would corrupt them),
``ANSI_QUOTES`` and ``PIPES_AS_CONCAT`` (the statements are written without either)."""

LIFETIME_SHARE_OF_WAIT_TIMEOUT = 0.9
"""A connection is retired before this share of the server's ``wait_timeout`` has passed
since it opened (the server closes a connection idle that long)."""

_URL_SCHEMES = ("mysql", "mariadb")
_DEFAULT_PORT = 3306

# Server error numbers (MySQL's and MariaDB's) and client ones (PyMySQL's CR_*).
_DUPLICATE = 1062  # ER_DUP_ENTRY
_FOREIGN_KEYS = {1451, 1452, 1216, 1217}  # row referenced / no referenced row (old and new)
_CHECKS = {3819, 4025}  # MySQL ER_CHECK_CONSTRAINT_VIOLATED, MariaDB ER_CONSTRAINT_FAILED
_NOT_NULL = {1048}  # ER_BAD_NULL_ERROR
_LOCK_WAIT, _DEADLOCK, _TOO_MANY = 1205, 1213, 1040
_STATEMENT_TIMEOUTS = {1969, 3024}  # MariaDB max_statement_time, MySQL max_execution_time
_CONNECTION_LOST = {2006, 2013, 2055}  # gone away, lost during query, lost (extended)
_CANNOT_CONNECT = {2003, 2005}  # can't connect, unknown host
_TRANSIENT = {_LOCK_WAIT, _DEADLOCK, _TOO_MANY, *_STATEMENT_TIMEOUTS, *_CONNECTION_LOST}
_QUOTES_NO_VALUES = {
    1045,  # access denied for user 'u'@'h' (using password: YES)
    1044,  # access denied for user to database
    1049,  # unknown database
    1054,  # unknown column
    1146,  # table doesn't exist
    1406,  # data too long for column 'c' at row 1
    1264,  # out of range value for column 'c' at row 1
    1048,  # column 'c' cannot be null
}
"""Error numbers whose server text names only objects (never a value), so it may be passed
on. Any other error is reported by number: PyMySQL interpolates parameters into the
statement, so a syntax error's text may quote a token."""

_KEY_NAME = re.compile(r"for key '([\w$.]{1,200})'\s*$")
"""The end of 1062's text, ``Duplicate entry '<the value>' for key '<key>'``: only the key
name is taken (anchored at the end: a value cannot forge it)."""
_CHECK_NAME = re.compile(r"^(?:CONSTRAINT|Check constraint) [`']([\w$.]{1,200})[`']")


def _error_number(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None


def _server_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = exc.args
    return str(args[1]) if len(args) > 1 else ""


def translate_error(exc: Exception) -> DatabaseError:
    """Map a PyMySQL exception onto the core's error tree, by error number.

    1062's text quotes the duplicated key (a token): only the key's name is kept. Server
    text is passed on only for errors that quote no value.
    """
    number = _error_number(exc)
    text = _server_text(exc)
    if number == _DUPLICATE:
        match = _KEY_NAME.search(text)
        return IntegrityViolation(
            "a unique constraint failed",
            kind="unique",
            constraint=match[1] if match else None,
        )
    if number in _FOREIGN_KEYS:
        return IntegrityViolation("a foreign key constraint failed", kind="foreign_key")
    if number in _CHECKS:
        match = _CHECK_NAME.match(text)
        name = match[1] if match else None
        what = f"the check constraint {name!r} failed" if name else "a check constraint failed"
        return IntegrityViolation(what, kind="other", constraint=name)
    if number in _NOT_NULL:
        return IntegrityViolation(f"a constraint failed: {text}", kind="other")
    shown = f"{text} (error {number})" if number in _QUOTES_NO_VALUES else f"error {number}"
    if number in _TRANSIENT:
        return TransientError(f"MySQL: {_transient_cause(number)} (error {number})")
    if number is None:
        return DatabaseError(f"MySQL: {type(exc).__name__}")
    return DatabaseError(f"MySQL: {shown}")


def _transient_cause(number: int | None) -> str:
    if number == _LOCK_WAIT:
        return "a lock wait timed out (innodb_lock_wait_timeout)"
    if number == _DEADLOCK:
        return "a deadlock: the server rolled the transaction back"
    if number == _TOO_MANY:
        return "the server has too many connections"
    if number in _STATEMENT_TIMEOUTS:
        return "a statement ran longer than statement_timeout and was interrupted"
    return "the connection was lost"


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.OperationalError) and _error_number(exc) in (
        _CONNECTION_LOST
    )


def _parse_url(url: str | None) -> dict[str, Any]:
    """PyMySQL's ``host``, ``port``, ``user``, ``password`` and ``database`` from a
    ``mysql://`` (or ``mariadb://``) URL; ``ConfigError`` quoting none of it otherwise."""
    url = (url or "").strip()
    form = "mysql://user:password@host:3306/dbname"
    if not url:
        raise ConfigError(f"the mysql backend needs DATABASE_URL, e.g. {form}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        parts, port = None, None
    if parts is None:  # raised here, not in the except: nothing of the URL is attached
        raise ConfigError(f"DATABASE_URL is not a valid MySQL URL; use the form {form}")
    if parts.scheme.lower() not in _URL_SCHEMES:
        raise ConfigError(
            f"DATABASE_URL for the mysql backend must start with mysql:// or mariadb://; "
            f"use the form {form}"
        )
    database = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not database or "/" in database:
        raise ConfigError(
            f"DATABASE_URL must name a host and a database; use the form {form} "
            "(percent-encode a '/' or '#' in the password)"
        )
    if parts.query or parts.fragment:
        names = sorted({item.partition("=")[0] for item in parts.query.split("&") if item})
        raise ConfigError(
            "DATABASE_URL for MySQL takes no options"
            + (f" (got {', '.join(repr(n) for n in names)})" if names else "")
            + f"; use the form {form}"
        )
    return {
        "host": parts.hostname,
        "port": port or _DEFAULT_PORT,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": database,
    }


def describe_target(url: str | None) -> str:
    """Where ``url`` points, as ``user@host:port/dbname``: never its password."""
    try:
        params = _parse_url(url)
    except ConfigError:
        return "(an unparsable DATABASE_URL)"
    user = f"{params['user']}@" if params["user"] else ""
    return f"{user}{params['host']}:{params['port']}/{params['database']}"


def _in_transaction(conn: Connection[Any]) -> bool:
    # The status flags of the server's last OK packet (PyMySQL keeps them; no round trip).
    status: int = getattr(conn, "server_status", 0)
    return bool(status & SERVER_STATUS.SERVER_STATUS_IN_TRANS)


def _reset(conn: Connection[Any]) -> bool:
    """The pool's check of a returned connection: closed (lost) ones are not reused; an
    open transaction is rolled back."""
    if not conn.open:
        return False
    if _in_transaction(conn):
        conn.rollback()
    return True


def _transaction_aborted(conn: Connection[Any]) -> str | None:
    if not conn.open:
        return "the connection to MySQL was lost"
    if not _in_transaction(conn):
        return "the server rolled it back (a deadlock or a lock wait timeout)"
    return None


def _ping(conn: Connection[Any]) -> None:
    conn.ping(reconnect=False)


class _Executor(DbApiExecutor["Connection[Any]"]):
    """The executor on PyMySQL connections (which have no ``execute`` of their own)."""

    def statement(self, conn: Connection[Any], sql: str, params: Any, rows: bool) -> Any:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if rows else cursor.rowcount
        finally:
            cursor.close()

    def statement_last_id(self, conn: Connection[Any], sql: str, params: Any) -> tuple[int, int]:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.rowcount, cursor.lastrowid
        finally:
            cursor.close()

    def statement_many(self, conn: Connection[Any], sql: str, params: Any) -> int:
        cursor = conn.cursor()
        try:
            return int(cursor.executemany(sql, params) or 0)
        finally:
            cursor.close()


def session_settings(config: FullConfig, *, mariadb: bool) -> str:
    """The ``SET SESSION`` every connection runs first: UTC, the strict ``sql_mode``, the
    lock wait (``busy_timeout``, whole seconds, at least 1) and, when set,
    ``statement_timeout`` (MariaDB ``max_statement_time``; MySQL ``max_execution_time``,
    which bounds SELECTs only)."""
    lock_wait = max(1, math.ceil(config.busy_timeout.total_seconds()))
    settings = [
        "time_zone = '+00:00'",
        f"sql_mode = '{SQL_MODE}'",
        f"innodb_lock_wait_timeout = {lock_wait}",
    ]
    statement = config.statement_timeout.total_seconds()
    if mariadb:
        settings.append(f"max_statement_time = {statement:.3f}")  # 0: no limit
    else:
        settings.append(f"max_execution_time = {round(statement * 1000)}")
    return "SET SESSION " + ", ".join(settings)


class MySQLBackend(SqlBackend):
    """A ``Backend`` on one MySQL or MariaDB database.

    Fork-safe: in a child of ``os.fork()`` the pool forgets the parent's connections and
    opens its own.
    """

    def __init__(self, config: FullConfig) -> None:
        params = _parse_url(config.database_url)
        self._config = config
        self._target = describe_target(config.database_url)
        statement = config.statement_timeout.total_seconds()
        # A socket timeout beyond the server's own limits, so that a server that stops
        # answering fails the call instead of hanging it (none without statement_timeout:
        # migrations and long reads may take their time).
        io_timeout = statement + config.busy_timeout.total_seconds() + 5 if statement else None
        self.connect_kwargs: dict[str, Any] = {
            **params,
            "charset": "utf8mb4",
            "autocommit": True,
            "client_flag": CLIENT.FOUND_ROWS,  # rowcount: rows matched, not rows changed
            "connect_timeout": config.connect_timeout.total_seconds(),
            "read_timeout": io_timeout,
            "write_timeout": io_timeout,
        }
        """PyMySQL's ``connect`` keywords (tests may add an ``init_command``: the backend's
        own settings are applied after it)."""
        self._pool: DbApiPool[Connection[Any]] = DbApiPool(
            self._connect,
            max_open=config.max_open_conns,
            max_idle=config.max_idle_conns,
            max_lifetime=config.conn_max_lifetime.total_seconds(),
            timeout=config.pool_timeout.total_seconds(),
            driver_error=pymysql.Error,
            reset=_reset,
            name="MySQL",
            log=_log,
        )
        # Each thread keeps the connection it used last, at most max_idle_conns of them.
        self._held: HeldConnections[Connection[Any]] = HeldConnections(
            self._pool, hold=self._pool.max_idle, expires=self._pool.expires
        )
        executor = _Executor(
            self._held,
            dialect=MYSQL,
            driver_error=pymysql.Error,
            translate=self._translate,
            transaction_aborted=_transaction_aborted,
        )
        super().__init__(executor, _STATEMENTS)
        try:
            self.health_check(tables=False)  # migrations may not have run yet
        except BaseException:
            self.close()
            raise

    @property
    def target(self) -> str:
        """Where the backend points, as ``user@host:port/dbname`` (no password)."""
        return self._target

    def _connect(self, **overrides: Any) -> Connection[Any]:
        """A new connection with this backend's session settings (``overrides``: other
        ``connect`` keywords)."""
        error: DatabaseError | None = None
        try:
            conn: Connection[Any] = pymysql.connect(**{**self.connect_kwargs, **overrides})
        except pymysql.Error as exc:
            error = self._cannot_connect(exc)
        if error is not None:
            raise error
        try:
            with conn.cursor() as cursor:
                mariadb = "mariadb" in str(getattr(conn, "server_version", "")).lower()
                cursor.execute(session_settings(self._config, mariadb=mariadb))
                cursor.execute("SELECT @@session.wait_timeout")
                row = cursor.fetchone()
        except pymysql.Error as exc:
            conn.close()
            error = DatabaseError(
                f"cannot configure a connection to MySQL at {self._target}: {translate_error(exc)}"
            )
        if error is not None:
            raise error
        wait_timeout = float(row[0]) if row else math.inf
        lifetime = LIFETIME_SHARE_OF_WAIT_TIMEOUT * wait_timeout
        if lifetime < self._pool.max_lifetime:
            _log.debug(
                "MySQL at %s closes idle connections after %gs (wait_timeout): retiring "
                "connections after %gs",
                self._target,
                wait_timeout,
                lifetime,
            )
            self._pool.max_lifetime = lifetime
        return conn

    def _cannot_connect(self, exc: pymysql.Error) -> DatabaseError:
        number = _error_number(exc)
        # 2003's text names the host and the socket error, 1045's the user: no password.
        reason = _server_text(exc).strip().splitlines()[0] if _server_text(exc) else ""
        message = f"cannot connect to MySQL at {self._target}: {reason or type(exc).__name__}"
        message = f"{message} (error {number})" if number is not None else message
        if number in _CANNOT_CONNECT or number in _TRANSIENT:
            return TransientError(f"{message}; retry later")
        return DatabaseError(message)

    def _translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``, naming the server; after a lost connection the pool's idle
        connections are tested (``ping``), so the next call does not get another dead one."""
        if _connection_lost(exc):
            _log.warning(
                "lost a connection to MySQL at %s (error %s): testing the pool's idle connections",
                self._target,
                _error_number(exc),
            )
            try:
                self._held.drain()  # parked connections back, so the check sees them
                self._pool.check(_ping)
            except Exception as check_error:
                _log.debug("the pool check failed: %s", type(check_error).__name__)
        error = translate_error(exc)
        if isinstance(error, TransientError):
            return TransientError(f"MySQL at {self._target}: {str(error).removeprefix('MySQL: ')}")
        return error

    def close(self) -> None:
        self._held.close()
        self._pool.close()

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        """A connection of its own for a migration run (``GET_LOCK`` held on it when
        ``exclusive``), with no socket timeout; a read-only run uses a pooled one."""
        from ._migration import migration_connection

        with migration_connection(
            self._connect_for_migrations,
            translate=self._translate,
            exclusive=exclusive,
            shared=self._pooled_migration_connection,
            dialect=MYSQL,
            target=f"MySQL at {self._target}",
        ) as conn:
            yield conn

    def _connect_for_migrations(self) -> Connection[Any]:
        return self._connect(read_timeout=None, write_timeout=None)

    @contextmanager
    def _pooled_migration_connection(self) -> Iterator[DbApiMigrationConnection]:
        with self.executor.connection() as conn:
            yield DbApiMigrationConnection(
                conn, MYSQL, driver_error=pymysql.Error, translate=self._translate
            )
