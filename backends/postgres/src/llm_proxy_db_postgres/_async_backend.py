"""The PostgreSQL backend on an event loop: the shared SQL store logic, awaited, on a
``psycopg_pool.AsyncConnectionPool`` of ``psycopg.AsyncConnection``.

Connections, pool sizing, the fail-fast probe and the error mapping are the blocking
backend's (:mod:`._backend`), called from both. What differs is cancellation: a task
cancelled while its statement runs has psycopg ask the server to cancel it and wait for
the statement to end (at most 5 s; a second cancellation meanwhile closes the
connection), so a connection goes back to the pool only once its statement finished;
psycopg_pool rolls back one returned in a transaction and discards one returned
mid-statement or broken. Every return to the pool is shielded from a further
cancellation, so none is ever lost from the pool's count.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from llm_proxy_db import DatabaseError, FullConfig
from llm_proxy_db.sql import AsyncDbApiExecutor, AsyncSqlBackend

from ._backend import (
    _ADOPT,
    _CHECKOUT_TIMEOUT,
    _STATEMENTS,
    COALESCING_LEADERS,
    Failures,
    _conninfo,
    _transaction_aborted,
    connect_kwargs,
    pool_sizing,
)
from ._dialect import POSTGRES

__all__ = ["AsyncPostgresBackend"]

_log = logging.getLogger(__name__)


class _AsyncPoolConnection(psycopg.AsyncConnection[Any]):
    """The pool's connections: the first one is the probe's, when it is still open."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        adopt: list[psycopg.AsyncConnection[Any]] = kwargs.pop(_ADOPT, None) or []
        while adopt:
            conn = adopt.pop()
            if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                return conn
            await conn.close()
        return await super().connect(conninfo, **kwargs)


class _Checkout:
    """One connection of the pool for one operation or block: ``async with`` it."""

    __slots__ = ("_backend", "_conn")

    def __init__(self, backend: AsyncPostgresBackend) -> None:
        self._backend = backend

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        conn: psycopg.AsyncConnection[Any] = await self._backend._pool.getconn(
            _CHECKOUT_TIMEOUT.get()
        )
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._backend._give_back(self._conn)


class AsyncPostgresBackend(AsyncSqlBackend):
    """An ``AsyncBackend`` on a PostgreSQL database (or one schema of it), belonging to
    the loop that opened it: construct it (no I/O), then ``await backend.open()``."""

    def __init__(self, config: FullConfig) -> None:
        self._url = _conninfo(config)
        self._failures = Failures(self._url, config)
        self._connect_timeout = config.connect_timeout.total_seconds()
        self._connect_kwargs = connect_kwargs(self._url, config)
        self._adopt: list[psycopg.AsyncConnection[Any]] = []
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._url,
            connection_class=_AsyncPoolConnection,
            kwargs={**self._connect_kwargs, _ADOPT: self._adopt},
            **pool_sizing(config, name="llm-proxy-db-async"),
        )
        self._check: asyncio.Task[None] | None = None
        self._closed = False
        executor: AsyncDbApiExecutor[psycopg.AsyncConnection[Any]] = AsyncDbApiExecutor(
            lambda: _Checkout(self),
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

    async def open(self) -> None:
        """Probe the server (an unreachable one or a refused login fails at once, with the
        server's reason), then open the pool with the probe's connection as its first."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs)
        except psycopg.Error as exc:
            error = self._failures.probe_error(exc)
        else:
            self._adopt.append(probe)
            try:
                await self._pool.open(wait=False)
                await self.health_check(tables=False)  # migrations may not have run yet
            except BaseException:
                await self.close()
                raise
            return
        raise error

    async def close(self) -> None:
        """Close the pool and every connection (no task of the backend's is left);
        idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.drain()  # coalesced increments in flight end first
        if self._check is not None:
            await asyncio.wait([self._check], timeout=self._connect_timeout)
            self._check.cancel()
        await self._pool.close()
        while self._adopt:
            await self._adopt.pop().close()

    async def health_check(self, *, tables: bool = True) -> None:
        """As ``AsyncSqlBackend.health_check``, waiting for a connection no longer than
        ``connect_timeout``."""
        bounded = _CHECKOUT_TIMEOUT.set(self._connect_timeout)
        try:
            await super().health_check(tables=tables)
        except DatabaseError as exc:
            error = self._failures.unreachable(exc)
        else:
            return
        finally:
            _CHECKOUT_TIMEOUT.reset(bounded)
        raise error

    # -- internals ---------------------------------------------------------------------

    def _translate(self, exc: Exception) -> DatabaseError:
        if isinstance(exc, PoolTimeout):
            return self._failures.pool_timeout(self._pool.get_stats(), _CHECKOUT_TIMEOUT.get())
        self._failures.connection_lost(exc)  # logged; the pool is checked on the way back
        return self._failures.translate(exc)

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Return ``conn`` to the pool, shielded from a cancellation (its return would be
        cut short and the pool would count it for ever); after a lost connection, test
        the pool's idle ones, so that the next call gets a live one."""
        lost = conn.closed
        returning = asyncio.ensure_future(self._pool.putconn(conn))
        try:
            await asyncio.shield(returning)
        except asyncio.CancelledError:
            await asyncio.wait([returning])
            raise
        if lost and not self._closed:
            await self._check_idle()

    async def _check_idle(self) -> None:
        """One ``pool.check()`` at a time, shared by the calls that lost a connection;
        waited for no longer than ``connect_timeout``."""
        check = self._check
        if check is None or check.done():
            check = self._check = asyncio.ensure_future(self._run_check())
        await asyncio.wait([check], timeout=self._connect_timeout)

    async def _run_check(self) -> None:
        try:
            await self._pool.check()
        except Exception as exc:
            _log.debug("the pool check failed: %s", type(exc).__name__)
