"""The SQL stores: every store method, as the store logic's operation run by an executor.

Nothing here decides anything: each method is generated (:mod:`.._delegation`) as
``executor.run(logic.<method>(...))``, blocking in :class:`SqlStores`, awaiting in
:class:`AsyncSqlStores`. :class:`SqlBackend` adds what a blocking SQL ``Backend`` needs
besides its connections: transactions and the health check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from .._delegation import AsyncForwardedStores, ForwardedStores, forwarding
from .._protocols import Stores
from ._coalesce import AsyncCoalescedIncrements, CoalescedIncrements
from ._execute import AsyncDbApiExecutor, AsyncExecutor, DbApiExecutor, Executor
from ._logic import StoreLogic
from ._operation import Flow, Step, Steps
from ._statements import Statements

__all__ = ["AsyncSqlBackend", "AsyncSqlStores", "SqlBackend", "SqlStores"]

_CALL = "self._executor.run(self._logic.{name}({args}))"

TABLES = ("projects", "tokens", "audit_events")
"""The tables the stores read and write (goose's version table aside)."""


def _read_each_table() -> Steps[None]:
    # One bounded read per table: a missing table or an unreadable first page (a corrupted
    # SQLite file) fails here. Every column, so that the table itself is read (``SELECT 1``
    # may be answered from a covering index: SQLite does so), one row at most.
    for table in TABLES:
        yield Step(f"SELECT * FROM {table} LIMIT 1")


def _count_each_table() -> Steps[None]:
    for table in TABLES:
        yield Step(f"SELECT count(*) FROM {table}")


_HEALTH_CHECK: Flow[None] = Flow(_read_each_table)
_COUNT_ROWS: Flow[None] = Flow(_count_each_table)

Coalesced = TypeVar("Coalesced", CoalescedIncrements, AsyncCoalescedIncrements)


def _coalescing(
    backend: SqlStores | AsyncSqlStores, wanted: bool, combiner: Callable[[StoreLogic], Coalesced]
) -> Coalesced | None:
    """With ``wanted`` (``FullConfig.coalesce_increments``) on a dialect that has the batch
    statement, the combiner ``combiner(logic)`` makes, through which ``backend``'s two
    counting calls go from now on (a transaction's never do); else None."""
    logic = backend._logic
    if not (wanted and logic.dialect.coalesced_increments):
        return None
    coalesced = combiner(logic)
    for name in ("increment_token_usage", "authorize"):
        setattr(backend, name, getattr(coalesced, name))
    return coalesced


@forwarding(_CALL, protocol=Stores)
class SqlStores(ForwardedStores):
    """``Stores`` over a blocking :class:`Executor` and the :class:`StoreLogic`."""

    def __init__(self, executor: Executor, logic: StoreLogic) -> None:
        self._executor = executor
        self._logic = logic


@forwarding(_CALL, protocol=Stores, awaiting=True)
class AsyncSqlStores(AsyncForwardedStores):
    """The awaiting twin of :class:`SqlStores`: every method of ``Stores`` as a coroutine
    (same name, parameters and errors) over an :class:`AsyncExecutor` and the same
    :class:`StoreLogic`."""

    def __init__(self, executor: AsyncExecutor, logic: StoreLogic) -> None:
        self._executor = executor
        self._logic = logic


class SqlBackend(SqlStores):
    """A blocking SQL ``Backend`` but for ``close()``: the stores, ``transaction()`` and
    ``health_check()`` over a :class:`DbApiExecutor`.

    A backend subclasses it, builds its executor and statements, and adds ``close()`` and
    (for migrations) ``migration_connection()``.
    """

    def __init__(
        self,
        executor: DbApiExecutor[Any],
        statements: Statements,
        *,
        coalesce_increments: bool = False,
        leaders: int = 1,
    ) -> None:
        super().__init__(executor, StoreLogic(statements))
        self.executor = executor
        """The executor: :meth:`DbApiExecutor.connection` lends a connection."""
        self._coalesced = _coalescing(
            self,
            coalesce_increments,
            lambda logic: CoalescedIncrements(executor, logic, leaders=leaders),
        )

    def drain(self) -> None:
        """Refuse new coalesced calls and wait for those in flight (a backend's
        ``close()`` calls it before closing its connections)."""
        if self._coalesced is not None:
            self._coalesced.close()

    def health_check(self, *, tables: bool = True) -> None:
        """Raise ``DatabaseError`` unless the database answers a bounded read of each table
        (``SELECT * FROM <table> LIMIT 1``: a missing table or a corrupted first page
        fails it; a full check is :meth:`check_integrity`). ``tables=False`` asks only
        that the server answers (``SELECT 1``: a backend's own open, before migrations)."""
        self._executor.run(_HEALTH_CHECK if tables else Step("SELECT 1"))

    def check_integrity(self) -> None:
        """The deep check of ``llm-proxy-db health --deep``: raise ``DatabaseError`` unless
        every row of each table can be read (``SELECT count(*)`` per table, which reads
        each table or one of its indexes in full). A backend overrides it with its
        database's own check (SQLite: ``PRAGMA quick_check``)."""
        self._executor.run(_COUNT_ROWS)

    @contextmanager
    def transaction(self) -> Iterator[SqlStores]:
        """The store methods on one connection, in one transaction."""
        with self.executor.transaction() as bound:
            yield SqlStores(bound, self._logic)


class AsyncSqlBackend(AsyncSqlStores):
    """The awaiting twin of :class:`SqlBackend`: an ``AsyncBackend`` but for ``close()``,
    over an :class:`AsyncDbApiExecutor`."""

    def __init__(
        self,
        executor: AsyncDbApiExecutor[Any],
        statements: Statements,
        *,
        coalesce_increments: bool = False,
        leaders: int = 1,
    ) -> None:
        super().__init__(executor, StoreLogic(statements))
        self.executor = executor
        """The executor: :meth:`AsyncDbApiExecutor.connection` lends a connection."""
        self._coalesced = _coalescing(
            self,
            coalesce_increments,
            lambda logic: AsyncCoalescedIncrements(executor, logic, leaders=leaders),
        )

    async def drain(self) -> None:
        """As :meth:`SqlBackend.drain`, awaited."""
        if self._coalesced is not None:
            await self._coalesced.close()

    async def health_check(self, *, tables: bool = True) -> None:
        """As :meth:`SqlBackend.health_check`, awaited."""
        await self._executor.run(_HEALTH_CHECK if tables else Step("SELECT 1"))

    async def check_integrity(self) -> None:
        """As :meth:`SqlBackend.check_integrity`, awaited."""
        await self._executor.run(_COUNT_ROWS)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSqlStores]:
        """The store methods on one connection, in one transaction."""
        async with self.executor.transaction() as bound:
            yield AsyncSqlStores(bound, self._logic)
