"""The PostgreSQL backend: the shared SQL store logic on a psycopg_pool connection pool."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import psycopg
import psycopg.errors
from psycopg import conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from llm_proxy_db import ConfigError, DatabaseError, FullConfig, MigrationError, TransientError
from llm_proxy_db.sql import (
    DbApiExecutor,
    DbApiMigrationConnection,
    HeldConnections,
    IntegrityViolation,
    SqlBackend,
    Statements,
)

from ._dialect import POSTGRES

__all__ = ["PostgresBackend", "translate_error"]

_log = logging.getLogger(__name__)

_STATEMENTS = Statements(POSTGRES)
RECONNECT_TIMEOUT_S = 1.0
"""How long psycopg_pool retries one failed connection attempt before giving the slot up
(its default, 5 minutes with exponential backoff, would leave a recovered server unused for
seconds); while the server is down the backend's own reconnect loop starts new attempts."""
RECONNECT_INTERVAL_S = 0.25
"""The pause between two attempts of that loop."""
MIN_KEPT_CONNECTIONS = 1
"""Connections the pool keeps open while idle (fewer if ``max_idle_conns`` says so)."""
IDLE_SECONDS = 60.0
"""How long a connection beyond those stays open unused."""
MIGRATION_LOCK_TIMEOUT_S = 120.0
"""How long ``up``/``down`` wait for another process's migration run to finish."""
MIGRATION_LOCK_ID = 5887940537704921958
"""goose's own advisory lock id: this runner and the goose CLI exclude each other."""
COALESCING_LEADERS = 1
"""With ``coalesce_increments``: how many increments or batches run at once (the others
wait and go as one batch)."""
_RETRYABLE = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.OperationalError,
)
_CHECKOUT_TIMEOUT: ContextVar[float | None] = ContextVar("_CHECKOUT_TIMEOUT", default=None)
"""The pool wait of this context's checkouts (None: ``pool_timeout``); ``health_check``
waits no longer than ``connect_timeout``."""


_URL_SCHEMES = ("postgresql://", "postgres://")
_MISPARSED = "(a DATABASE_URL whose password needs percent-encoding)"
_PARSED_PARTS = ("user", "host", "hostaddr", "port", "dbname")
"""Where a password's tail lands when libpq splits a URL at the wrong character."""


def encode_userinfo(url: str) -> str:
    """``url`` with every ``@`` of its user and password percent-encoded.

    libpq ends the user part of a URL at its first ``@``, so the rest of a password holding
    an unescaped ``@`` becomes the host and is quoted by every connection error and by
    psycopg's DEBUG log. Go's ``net/url`` (the Go llm-proxy's) ends it at the last ``@``;
    this reads the URL as Go does. Any other string is returned unchanged.
    """
    scheme = next((s for s in _URL_SCHEMES if url[: len(s)].lower() == s), None)
    if scheme is None:
        return url
    rest = url[len(scheme) :]
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if authority.count("@") < 2:
        return url
    at = authority.rindex("@")
    userinfo = authority[:at].replace("@", "%40")
    return f"{url[: len(scheme)]}{userinfo}{authority[at:]}{rest[end:]}"


def _misparsed(params: dict[str, Any]) -> bool:
    """Whether a part that cannot hold an ``@`` holds one: a password's tail, misplaced."""
    return any("@" in str(params.get(part) or "") for part in _PARSED_PARTS)


def describe_target(url: str) -> str:
    """Where ``url`` points, as ``user@host:port/dbname``: never its password or options.

    A string that does not parse is not quoted at all (any part of it may be a secret).
    """
    try:
        params = conninfo.conninfo_to_dict(encode_userinfo(url))
    except psycopg.Error:
        return "(an unparsable DATABASE_URL)"
    if _misparsed(params):  # an unescaped '@' or '/' in the password: any part may hold it
        return _MISPARSED
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
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
        return TransientError("no PostgreSQL connection was free within the pool timeout")
    if isinstance(exc, _RETRYABLE):
        return TransientError(f"PostgreSQL: {message}")
    return DatabaseError(f"PostgreSQL: {message}")


def _conninfo(config: FullConfig) -> str:
    url = (config.database_url or "").strip()
    if not url:
        raise ConfigError(
            "the postgres backend needs DATABASE_URL, e.g. postgresql://user@host:5432/dbname"
        )
    url = encode_userinfo(url)
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
    if _misparsed(params):  # never hand psycopg a string it would quote a password from
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL URL: a part of it holds an '@', so the "
            "password probably holds a reserved character; percent-encode it "
            "('@' as %40, '/' as %2F)"
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


_ADOPT = "_llm_proxy_db_adopt"
"""The pool's connect keyword holding the probe's connection, handed over as the pool's
first connection (closing the probe and opening another could count one connection more
than ``max_open_conns`` on the server while the probe's backend process exits)."""


_BREAKER = "_llm_proxy_db_breaker"
"""The pool's connect keyword holding the backend's :class:`_Breaker`, told of every
connection attempt's outcome."""
_OURS = frozenset({_ADOPT, _BREAKER})


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a connection error, with the URL's password (if any) masked."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    password = conninfo.conninfo_to_dict(url).get("password")
    return reason.replace(str(password), "***") if password else reason


def _connect_error_is_transient(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed later: no SQLSTATE (refused,
    unreachable, timed out), a connection exception, too many connections, a server
    starting or shutting down; not a refused login or a missing database."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "53", "57P"))


class _Breaker:
    """What the backend knows of the server: up, or down since a connection attempt
    failed. While down, calls fail at once (no wait for the pool), and a background
    thread tries to reconnect every ``RECONNECT_INTERVAL_S`` until an attempt succeeds."""

    def __init__(self, url: str, reconnect: Callable[[], None]) -> None:
        self.reason: str | None = None
        """Why the last connection attempt failed; None while the server is up."""
        self._url = url
        self._target = describe_target(url)
        self._transient = True
        self._reconnect = reconnect
        self._lock = threading.Lock()
        self._recovering = False
        self._closed = False
        self._pid = os.getpid()

    def failed(self, exc: BaseException) -> None:
        reason = _first_line(exc, self._url)
        if os.getpid() != self._pid:  # a forked child: the parent's reconnect thread is not here
            self.reset()
        with self._lock:
            was_up, self.reason = self.reason is None, reason
            self._transient = _connect_error_is_transient(exc)
            start = not self._recovering and not self._closed
            self._recovering = self._recovering or start
        if was_up:
            _log.warning(
                "cannot connect to PostgreSQL at %s (%s): failing calls at once until a "
                "reconnect succeeds",
                self._target,
                reason,
            )
        if start:
            threading.Thread(
                target=self._recover, name="llm-proxy-db-reconnect", daemon=True
            ).start()

    def succeeded(self) -> None:
        if self.reason is not None:
            self.reason = None
            _log.warning("PostgreSQL at %s is reachable again", self._target)

    def error(self) -> DatabaseError | None:
        """The error a call gets while the server is down, or None."""
        reason = self.reason
        if reason is None:
            return None
        if os.getpid() != self._pid:  # a forked child: its own pool, nothing known yet
            self.reset()
            return None
        return self.describe(reason)

    def describe(self, reason: str) -> DatabaseError:
        """The error for a failed connection attempt (transient unless a refused login or
        a missing database)."""
        if "refused" in reason.lower():
            what = f"PostgreSQL at {self._target} refused the connection ({reason})"
        else:
            what = f"cannot connect to PostgreSQL at {self._target} ({reason})"
        if not self._transient:
            return DatabaseError(what)
        return TransientError(f"{what}; reconnecting in the background, retry later")

    def reset(self) -> None:
        """Forget the state (a forked child's copy of the parent's breaker)."""
        self.reason, self._recovering, self._pid = None, False, os.getpid()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._closed = True

    def _recover(self) -> None:
        again = True
        while again:
            try:
                while not self._closed and self.reason is not None:
                    time.sleep(RECONNECT_INTERVAL_S)
                    try:
                        self._reconnect()
                    except Exception as exc:  # still down: the next round tries again
                        _log.debug("reconnect attempt failed: %s", type(exc).__name__)
            finally:
                with self._lock:  # marked down again while finishing: go on
                    again = self.reason is not None and not self._closed
                    self._recovering = again


class _PoolConnection(psycopg.Connection[Any]):
    """The pool's connections: the first one is the probe's, when it is still open."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        adopt: list[psycopg.Connection[Any]] = kwargs.get(_ADOPT) or []
        breaker: _Breaker | None = kwargs.get(_BREAKER)
        kwargs = {name: value for name, value in kwargs.items() if name not in _OURS}
        while adopt:
            try:
                conn = adopt.pop()
            except IndexError:  # another pool worker took it
                break
            if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                return conn  # stamped when the probe opened it
            conn.close()
        if breaker is None:
            return _stamped(super().connect(conninfo, **kwargs))
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            breaker.failed(exc)
            raise
        breaker.succeeded()
        return _stamped(conn)


_OPENED_AT = "_llm_proxy_db_opened_at"
"""Where a connection keeps the ``time.monotonic()`` of its opening (psycopg_pool starts
its lifetime then)."""


def _stamped(conn: Any) -> Any:
    setattr(conn, _OPENED_AT, time.monotonic())
    return conn


_BACKENDS: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()
_INHERITED: list[object] = []
"""A forked child's copies of the parent's pools: kept referenced and never closed (closing
would end the parent's sessions on the shared sockets)."""


def _after_fork_in_child() -> None:
    for backend in list(_BACKENDS):
        backend._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _transaction_aborted(conn: psycopg.Connection[Any]) -> str | None:
    # COMMIT of a transaction in error is a silent ROLLBACK on PostgreSQL: ask first.
    status = conn.info.transaction_status
    if status == TransactionStatus.INTRANS:
        return None
    if status == TransactionStatus.INERROR:
        return "a statement failed and the server aborted the transaction"
    if status == TransactionStatus.IDLE:
        return "the server ended the transaction"
    return "the connection to PostgreSQL was lost"


def _session_options(url: str, config: FullConfig) -> str:
    """The URL's own ``options`` plus ``statement_timeout`` (0: none) and ``lock_timeout``
    (``busy_timeout``; libpq's 0 would mean none, so at least 1 ms), in milliseconds."""
    own = str(conninfo.conninfo_to_dict(url).get("options") or "")
    statement_ms = round(config.statement_timeout.total_seconds() * 1000)
    lock_ms = max(1, round(config.busy_timeout.total_seconds() * 1000))
    return f"{own} -c statement_timeout={statement_ms} -c lock_timeout={lock_ms}".strip()


def connect_kwargs(url: str, config: FullConfig) -> dict[str, Any]:
    """The keywords of every connection, the probe's included (both backends): autocommit,
    libpq's connect_timeout (whole seconds, at least 2) and, through the startup options,
    statement_timeout and lock_timeout."""
    return {
        "autocommit": True,
        "connect_timeout": max(2, math.ceil(config.connect_timeout.total_seconds())),
        "options": _session_options(url, config),
    }


def pool_sizing(config: FullConfig, *, name: str) -> dict[str, Any]:
    """The pool settings both backends give psycopg_pool.

    max_open_conns bounds every server connection of this DB: the pool's, the migration
    runner's (lent by the pool) and the probe (handed to the pool as its first connection).
    psycopg_pool keeps min_size connections for ever and closes the others after
    IDLE_SECONDS unused: the closest it comes to Go's idle cap.
    """
    return dict(
        min_size=min(MIN_KEPT_CONNECTIONS, config.max_idle_conns),
        max_size=config.max_open_conns,
        max_idle=IDLE_SECONDS,
        max_lifetime=config.conn_max_lifetime.total_seconds(),
        timeout=config.pool_timeout.total_seconds(),
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        open=False,
        name=name,
    )


class Failures:
    """What both backends say of a failure: the server, the cause, the limit that cut it."""

    __slots__ = ("_lock_timeout", "_max_open", "_pool_timeout", "_statement_timeout", "_url")

    def __init__(self, url: str, config: FullConfig) -> None:
        self._url = url
        self._lock_timeout = config.busy_timeout.total_seconds()
        self._statement_timeout = config.statement_timeout.total_seconds()
        self._pool_timeout = config.pool_timeout.total_seconds()
        self._max_open = config.max_open_conns

    def probe_error(self, exc: psycopg.Error) -> DatabaseError:
        """The error of a failed probe: ``TransientError`` when a retry may cure it
        (refused, unreachable, too many connections), else ``DatabaseError``."""
        reason = _first_line(exc, self._url)
        message = f"cannot reach PostgreSQL at {describe_target(self._url)}: {reason}"
        transient = _connect_error_is_transient(exc)
        return TransientError(message) if transient else DatabaseError(message)

    def connection_lost(self, exc: Exception) -> bool:
        """Whether ``exc`` says the connection was lost (logged: the caller tests the
        pool's idle connections next)."""
        if not _connection_lost(exc):
            return False
        _log.warning(
            "lost a connection to PostgreSQL at %s (%s, SQLSTATE %s): testing the pool's "
            "idle connections",
            describe_target(self._url),
            type(exc).__name__,
            getattr(exc, "sqlstate", None) or "none",
        )
        return True

    def translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``, naming the server and the cause of a retryable failure (a
        ``PoolTimeout`` aside: see :meth:`pool_timeout`)."""
        if isinstance(exc, _RETRYABLE):
            return TransientError(f"PostgreSQL at {describe_target(self._url)}: {self.cause(exc)}")
        return translate_error(exc)

    def cause(self, exc: Exception) -> str:
        """What went wrong, as seen: never a DETAIL line (it may quote a token)."""
        diag = getattr(exc, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or ""
        if _connection_lost(exc):
            seen = primary or _first_line(exc, self._url)
            return f"the connection was lost ({seen})"
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return f"{primary or 'lock timeout'} (lock_timeout {self._lock_timeout:g} s)"
        if isinstance(exc, psycopg.errors.QueryCanceled):
            limit = self._statement_timeout
            return f"{primary or 'statement cancelled'} (statement_timeout {limit:g} s)"
        return primary or type(exc).__name__

    def pool_timeout(
        self, stats: dict[str, int], waited: float | None, reason: str | None = None
    ) -> TransientError:
        """No connection was free within ``waited`` (None: ``pool_timeout``) seconds;
        ``reason``: why the last connection attempt failed, if known."""
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        message = (
            f"PostgreSQL at {describe_target(self._url)}: no connection free within "
            f"{waited or self._pool_timeout:g} s: {in_use} in use (max_open_conns {self._max_open})"
        )
        if reason is not None:
            message += f"; the last connection attempt failed ({reason})"
        return TransientError(message)

    def unreachable(self, exc: DatabaseError) -> DatabaseError:
        """A failed health check's error: a ``TransientError`` names the server and the
        cause already; any other is wrapped to say which server failed it."""
        if isinstance(exc, TransientError):
            return exc
        return DatabaseError(f"cannot reach PostgreSQL at {describe_target(self._url)}: {exc}")


@contextmanager
def _untimed(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The migration runner's connection without ``statement_timeout`` and
    ``lock_timeout`` (the session's own values again afterwards)."""
    error: DatabaseError | None = None
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET lock_timeout = 0")
    except psycopg.Error as exc:
        error = translate_error(exc)
    if error is not None:
        raise error
    try:
        yield
    finally:
        with suppress(psycopg.Error):
            conn.execute("RESET statement_timeout")
            conn.execute("RESET lock_timeout")


class _PoolAdapter:
    """This process's ``psycopg_pool`` as the :class:`HeldConnections`'s pool (the
    backend's pool is replaced in a forked child)."""

    __slots__ = ("_backend",)

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend

    def acquire(self) -> Any:
        return self._backend._pool.getconn(_CHECKOUT_TIMEOUT.get())

    def release(self, conn: psycopg.Connection[Any]) -> None:
        # putconn rolls back a transaction left open and discards a broken connection.
        self._backend._pool.putconn(conn)


class _Lender:
    """The executor's connections: each thread's held one (no pool checkout per call),
    after the fork and circuit-breaker checks every call makes."""

    __slots__ = ("_backend", "_held", "give_back", "release")

    def __init__(self, backend: PostgresBackend, held: HeldConnections[Any]) -> None:
        self._backend = backend
        self._held = held
        self.release = held.release
        self.give_back = held.give_back

    def acquire(self) -> Any:
        backend = self._backend
        if backend._reopen:
            backend._open_after_fork()
        breaker = backend._breaker
        if breaker.reason is not None and (down := breaker.error()) is not None:
            raise down  # the server is known to be down: fail now, not after pool_timeout
        return self._held.acquire()


class PostgresBackend(SqlBackend):
    """A ``Backend`` on a PostgreSQL database (or one schema of it).

    Fork-safe: in a child of ``os.fork()`` (gunicorn or uvicorn with the app loaded before
    forking) the parent's pool is left alone, never used nor closed, and the child's first
    call opens a new pool with the same settings.
    """

    def __init__(self, config: FullConfig) -> None:
        self._url = _conninfo(config)
        self._adopt: list[psycopg.Connection[Any]] = []
        self._connect_timeout = config.connect_timeout.total_seconds()
        self._failures = Failures(self._url, config)
        self._breaker = _Breaker(self._url, self._reconnect)
        self._connect_kwargs: dict[str, Any] = connect_kwargs(self._url, config)
        kwargs: dict[str, Any] = {
            **self._connect_kwargs,
            _ADOPT: self._adopt,
            _BREAKER: self._breaker,
        }
        self._pool_settings: dict[str, Any] = dict(
            connection_class=_PoolConnection,
            kwargs=kwargs,
            **pool_sizing(config, name="llm-proxy-db"),
        )
        self._pool: ConnectionPool[Any] = ConnectionPool(self._url, **self._pool_settings)
        self._reopen = False  # set in a forked child: open a new pool on the first call
        self._fork_lock = threading.Lock()
        # A thread keeps the connection it used last, at most max_idle_conns of them, each
        # back through the pool at least every second and before psycopg_pool's lifetime
        # (max_lifetime less its 5 % jitter) ends.
        lifetime = 0.95 * config.conn_max_lifetime.total_seconds()
        self._held: HeldConnections[Any] = HeldConnections(
            _PoolAdapter(self),
            hold=min(config.max_idle_conns, config.max_open_conns),
            expires=lambda conn: getattr(conn, _OPENED_AT, 0.0) + lifetime,
        )
        executor = DbApiExecutor(
            _Lender(self, self._held),
            dialect=POSTGRES,
            driver_error=psycopg.Error,
            translate=self._translate,
            transaction_aborted=_transaction_aborted,
        )
        super().__init__(
            executor,
            _STATEMENTS,
            coalesce_increments=config.coalesce_increments,
            leaders=COALESCING_LEADERS,
        )
        _BACKENDS.add(self)
        self._probe()
        try:
            self._pool.open(wait=False)
            self.health_check(tables=False)  # migrations may not have run yet
        except BaseException:
            self.close()
            raise

    def _probe(self) -> None:
        """Connect once before opening the pool, so an unreachable server or a refused login
        fails at once with the server's reason (the pool would retry for pool_timeout and
        then only say that no connection was free): a ``TransientError`` when a retry may
        cure it (refused, unreachable, too many connections), else ``DatabaseError``."""
        try:
            probe = _stamped(psycopg.connect(self._url, **self._connect_kwargs))
            self._adopt.append(probe)  # the pool's first connection
            return
        except psycopg.Error as exc:
            error = self._failures.probe_error(exc)
        raise error

    def _translate(self, exc: Exception) -> DatabaseError:
        """``translate_error``; after a lost connection, also test the idle ones.

        A server restart or ``pg_terminate_backend`` kills every pooled connection, but the
        pool only learns it when each one fails a call. Testing the idle connections here
        (on the error path only: no round trip per checkout) lets the next call get a fresh
        connection instead of the next dead one.
        """
        if self._failures.connection_lost(exc):
            try:
                self._held.drain()  # parked connections back, so the check sees them
                self._pool.check()
            except Exception as check_error:
                _log.debug("the pool check failed: %s", type(check_error).__name__)
        if isinstance(exc, PoolTimeout):
            return self._failures.pool_timeout(
                self._pool.get_stats(), _CHECKOUT_TIMEOUT.get(), self._breaker.reason
            )
        return self._failures.translate(exc)

    def _reconnect(self) -> None:
        """One attempt of the breaker's reconnect loop, through the pool (no connection
        beyond ``max_open_conns``): drop dead idle connections, then borrow one and ask."""
        self._pool.check()
        with self._pool.connection(timeout=RECONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
        self._breaker.succeeded()

    def _after_fork(self) -> None:
        # In the child, from os.register_at_fork: no I/O here, and nothing of the parent's
        # pool is touched (its worker threads do not exist in the child).
        _INHERITED.append(self._pool)
        _INHERITED.extend(self._adopt)
        self._adopt = []
        self._pool_settings["kwargs"] = {
            **self._pool_settings["kwargs"],
            _ADOPT: self._adopt,
        }
        self._pool = ConnectionPool(self._url, **self._pool_settings)
        self._fork_lock = threading.Lock()
        self._reopen = True

    def _open_after_fork(self) -> None:
        with self._fork_lock:
            if self._reopen:
                _log.debug(
                    "in a forked process (pid %d): opening a new pool to %s",
                    os.getpid(),
                    describe_target(self._url),
                )
                self._pool.open(wait=False)
                self._reopen = False

    def close(self) -> None:
        self.drain()  # coalesced increments in flight end first
        self._reopen = False
        self._breaker.close()
        self._held.close()
        self._pool.close()
        while self._adopt:
            self._adopt.pop().close()

    def health_check(self, *, tables: bool = True) -> None:
        """As ``SqlBackend.health_check``, waiting for a connection no longer than
        ``connect_timeout`` (at once while the server is known to be down)."""
        bounded = _CHECKOUT_TIMEOUT.set(self._connect_timeout)
        try:
            super().health_check(tables=tables)
        except DatabaseError as exc:
            error = self._failures.unreachable(exc)
        else:
            return
        finally:
            _CHECKOUT_TIMEOUT.reset(bounded)
        raise error

    @contextmanager
    def migration_connection(self, *, exclusive: bool = True) -> Iterator[DbApiMigrationConnection]:
        """A connection of the pool, used by the runner alone; when ``exclusive``, holding
        goose's advisory lock for the whole run, taken and released on it (read-only
        calls never wait for another process's migration)."""
        with self.executor.connection() as conn, _untimed(conn):
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
                conn.execute("SET statement_timeout = 0")  # migrations run without one
        if error is not None:
            raise error
