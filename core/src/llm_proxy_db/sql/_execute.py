"""Executors: the only code that runs store operations on a driver's connections.

An executor takes an :data:`~._operation.Operation` from the store logic and carries it
out: a :class:`~._operation.Step` is one statement; a :class:`~._operation.Flow` runs its
steps on one connection (in one transaction when ``atomic``); a decoder's follow-up
operation runs on the same connection. Driver exceptions are translated by the backend's
``translate`` at one place (:meth:`DbApiExecutor._statement`), then mapped by the step's
``on_violation``, and raised without the driver's exception attached.

:class:`DbApiExecutor` blocks; :class:`AsyncDbApiExecutor` awaits. Both drive the same
operations, so the store logic exists once. A backend whose driver does not have
``connection.execute(sql, params) -> cursor`` overrides :meth:`statement` (and
:meth:`statement_last_id`, for dialects whose increment reads ``lastrowid``, and
:meth:`statement_many`, for dialects whose batch inserts are one ``executemany``).

Inside a transaction every operation runs between ``SAVEPOINT`` and ``RELEASE SAVEPOINT``
and, when it raises, is undone by ``ROLLBACK TO SAVEPOINT``: a store call that fails in a
block changes nothing and the block goes on with everything else intact (statement-level
atomicity, the same on every SQL database; without it PostgreSQL aborts the whole
transaction at the first failed statement and turns the final COMMIT into a rollback).
Only the transaction path pays for them; a call outside a block runs as before. A call's
savepoint is released lazily, with the next call's ``SAVEPOINT`` (in one round trip where
the dialect's ``multi_statement`` allows: one extra round trip per call on PostgreSQL),
and the last one by ``COMMIT``. Before ``COMMIT``, the executor asks the backend's
``transaction_aborted`` hook whether the server still holds the transaction, and raises
``TransientError`` instead of returning when it does not (a lost connection, a failed
statement left unrepaired).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from typing import Any, Generic, Protocol, TypeVar, cast

from .._errors import DatabaseError, TransientError
from ._dialect import Dialect
from ._holding import Connections
from ._integrity import IntegrityViolation, Translate
from ._operation import OPERATION_TYPES, Flow, Operation, Step, Steps

__all__ = [
    "AsyncDbApiExecutor",
    "AsyncExecutor",
    "DbApiExecutor",
    "Executor",
]

T = TypeVar("T")
C = TypeVar("C")


class Executor(Protocol):
    """Runs store operations, blocking."""

    def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation``; its value, or the library error it raised."""
        ...


class AsyncExecutor(Protocol):
    """Runs store operations on an event loop."""

    async def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation``; its value, or the library error it raised."""
        ...


_COMMIT: Step[None] = Step("COMMIT", rows=False)
_SAVEPOINT: Step[None] = Step("SAVEPOINT llm_proxy_db_call", rows=False)
_RELEASE: Step[None] = Step("RELEASE SAVEPOINT llm_proxy_db_call", rows=False)
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT llm_proxy_db_call"
_NEXT_SAVEPOINT: Step[None] = Step(f"{_RELEASE.sql}; {_SAVEPOINT.sql}", rows=False)

TransactionAborted = Callable[[Any], str | None]
"""``transaction_aborted(conn)``: why the transaction open on ``conn`` can no longer commit
(``"the connection was lost"``), or ``None`` while it can. Asked before ``COMMIT``."""


def _aborted_error(reason: str) -> TransientError:
    return TransientError(
        f"the transaction was aborted ({reason}): nothing of it was stored; run the block again"
    )


def _in_doubt(error: TransientError, note: str) -> TransientError:
    """``error`` of a step whose write may have happened: its message says so."""
    return TransientError(f"{error} ({note})")


def _violation(error: DatabaseError, step: Step[Any]) -> DatabaseError:
    if step.on_violation is not None and isinstance(error, IntegrityViolation):
        return step.on_violation(error, step.subject)
    return error


class _CheckoutConnections(Generic[C]):
    """A storage-API-2 ``checkout()`` (a callable returning a context manager that lends
    a connection) as :class:`~._holding.Connections`."""

    def __init__(self, checkout: Callable[[], AbstractContextManager[C]]) -> None:
        self._checkout = checkout
        self._lent: dict[int, AbstractContextManager[C]] = {}

    def acquire(self) -> C:
        manager = self._checkout()
        conn = manager.__enter__()
        self._lent[id(conn)] = manager
        return conn

    def release(self, conn: C) -> None:
        self._lent.pop(id(conn)).__exit__(None, None, None)

    give_back = release


class DbApiExecutor(Generic[C]):
    """A blocking executor over DB-API connections in autocommit mode (sqlite3 with
    ``isolation_level=None``, psycopg with ``autocommit=True``), lent by ``connections``:
    a pool, or :class:`~._holding.HeldConnections` in front of one (``acquire()`` and
    ``release(conn)``; driver errors of either are translated).

    One connection serves one operation: a single statement commits on its own; an atomic
    flow runs between ``dialect.begin_write`` and ``COMMIT``. :meth:`transaction` lends one
    connection to a block of operations, each under a savepoint.

    ``transaction_aborted`` (optional) tells, before ``COMMIT``, whether the server
    aborted the transaction (psycopg: ``conn.info.transaction_status``; sqlite3:
    ``not conn.in_transaction``); the commit then raises ``TransientError``.
    """

    def __init__(
        self,
        connections: Connections[C] | Callable[[], AbstractContextManager[C]],
        *,
        dialect: Dialect,
        driver_error: type[Exception],
        translate: Translate,
        transaction_aborted: TransactionAborted | None = None,
    ) -> None:
        lender: Connections[C] = (
            connections  # type: ignore[assignment]
            if hasattr(connections, "acquire")
            else _CheckoutConnections(connections)  # storage API 2: checkout()
        )
        self._acquire = lender.acquire
        self._release = lender.release
        self._give_back = lender.give_back
        self._plain = type(self).statement is DbApiExecutor.statement
        """``statement`` is not overridden: :meth:`run` calls ``conn.execute`` itself."""
        self._begin: Step[None] = Step(dialect.begin_write, rows=False)
        self._driver_error = driver_error
        self._translate = translate
        self._transaction_aborted = transaction_aborted
        # Between two calls of a transaction: release the last savepoint, take the next.
        self._next_savepoint: tuple[Step[None], ...] = (
            (_NEXT_SAVEPOINT,) if dialect.multi_statement else (_RELEASE, _SAVEPOINT)
        )

    def statement(self, conn: C, sql: str, params: Any, rows: bool) -> Any:
        """Run one statement on ``conn``: every row (``rows``) or the row count.

        Driver exceptions propagate as they are; the executor translates them.
        """
        cursor = conn.execute(sql, params)  # type: ignore[attr-defined]
        return cursor.fetchall() if rows else cursor.rowcount

    def statement_last_id(self, conn: C, sql: str, params: Any) -> tuple[int, int]:
        """Run one statement on ``conn`` for a ``last_id`` step: ``(rowcount, lastrowid)``."""
        cursor = conn.execute(sql, params)  # type: ignore[attr-defined]
        return cursor.rowcount, cursor.lastrowid

    def statement_many(self, conn: C, sql: str, params: Any) -> int:
        """Run one statement on ``conn`` for each parameter tuple of a ``many`` step (one
        ``executemany``): the summed row count."""
        cursor = conn.executemany(sql, params)  # type: ignore[attr-defined]
        return int(cursor.rowcount)

    # -- running -------------------------------------------------------------------------

    def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation`` on a connection of its own."""
        # What _lend() does, written out: the hot path pays no generator-based context.
        try:
            conn = self._acquire()
        except self._driver_error as exc:  # lending the connection failed
            error = self._translate(exc)
        else:
            try:
                if operation.__class__ is not Step:
                    value = self._perform(conn, operation, False)
                else:  # the hot path: _perform and _statement written out for one step
                    step = operation
                    failed: DatabaseError | None = None
                    result: Any
                    try:
                        if step.last_id:
                            result = self.statement_last_id(conn, step.sql, step.params)
                        elif step.many:
                            result = self.statement_many(conn, step.sql, step.params)
                        elif self._plain:
                            cursor = conn.execute(step.sql, step.params)  # type: ignore[attr-defined]
                            result = cursor.fetchall() if step.rows else cursor.rowcount
                        else:
                            result = self.statement(conn, step.sql, step.params, step.rows)
                    except self._driver_error as exc:
                        failed = self._step_error(exc, step)
                    if failed is not None:
                        raise failed  # outside the except block: no driver exception as context
                    value = step.decode(result, step.subject)
                    if value.__class__ in OPERATION_TYPES:
                        value = self._perform(conn, cast("Operation[Any]", value), False)
            except BaseException:
                self._give_back(conn)  # in whatever state the failure left it
                raise
            self._release(conn)
            return value  # type: ignore[no-any-return]
        raise error  # outside the except block: no driver exception as context

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        """One connection for the block, between ``begin_write`` and ``COMMIT``; rolled
        back if the block raises. ``COMMIT`` of a transaction the server aborted raises
        ``TransientError``."""
        with self._lend(kept_clean=True) as conn:
            self._statement(conn, self._begin)
            try:
                yield _BoundExecutor(self, conn)
            except BaseException:
                self._rollback(conn)
                raise
            self._commit(conn)

    @contextmanager
    def connection(self) -> Iterator[C]:
        """A connection for work outside the store logic (migrations, probes), with
        lending errors translated."""
        with self._lend() as conn:
            yield conn

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _lend(self, *, kept_clean: bool = False) -> Iterator[C]:
        """A connection for a block. ``kept_clean``: the block leaves it as lent when it
        ends normally (the executor's own transactions), so it may be held on; otherwise
        it goes back to the pool's checks."""
        try:
            conn = self._acquire()
        except self._driver_error as exc:
            error = self._translate(exc)
        else:
            try:
                yield conn
            except BaseException:
                self._give_back(conn)  # in whatever state the failure left it
                raise
            if kept_clean:
                self._release(conn)
            else:
                self._give_back(conn)
            return
        raise error  # outside the except block: no driver exception as context

    def _statement(self, conn: C, step: Step[Any]) -> Any:
        try:
            if step.last_id:
                return self.statement_last_id(conn, step.sql, step.params)
            if step.many:
                return self.statement_many(conn, step.sql, step.params)
            return self.statement(conn, step.sql, step.params, step.rows)
        except self._driver_error as exc:
            error = self._step_error(exc, step)
        raise error

    def _step_error(self, exc: Exception, step: Step[Any]) -> DatabaseError:
        """The library error for a driver exception of ``step``."""
        error = _violation(self._translate(exc), step)
        if step.in_doubt is not None and isinstance(error, TransientError):
            error = _in_doubt(error, step.in_doubt)
        return error

    def _rollback(self, conn: C) -> None:
        with suppress(Exception):  # the block's own error is the one to report
            self.statement(conn, "ROLLBACK", (), False)

    def _commit(self, conn: C) -> None:
        reason = self._transaction_aborted(conn) if self._transaction_aborted else None
        if reason is not None:
            self._rollback(conn)
            raise _aborted_error(reason)
        self._statement(conn, _COMMIT)

    def _in_savepoint(self, conn: C, operation: Operation[Any], bound: _Bound) -> Any:
        # One operation of a transaction: undone alone if it raises. The savepoint of the
        # previous call (if it succeeded) is released here, or by COMMIT.
        for step in self._next_savepoint if bound.held else (_SAVEPOINT,):
            self._statement(conn, step)
        bound.held = True
        try:
            return self._perform(conn, operation, True)
        except BaseException:
            bound.held = False
            with suppress(Exception):  # the operation's own error is the one to report
                self.statement(conn, _ROLLBACK_TO, (), False)
                self.statement(conn, _RELEASE.sql, (), False)
            raise

    def _perform(self, conn: C, operation: Operation[Any], in_transaction: bool) -> Any:
        value: Any
        while True:
            if operation.__class__ is Step:
                step = operation
                value = step.decode(self._statement(conn, step), step.subject)
            else:
                value = self._flow(conn, cast("Flow[Any]", operation), in_transaction)
            if value.__class__ not in OPERATION_TYPES:
                return value
            operation = cast("Operation[Any]", value)

    def _flow(self, conn: C, flow: Flow[Any], in_transaction: bool) -> Any:
        if in_transaction or not flow.atomic:
            return self._drive(conn, flow.steps(), in_transaction)
        self._statement(conn, self._begin)
        try:
            value = self._drive(conn, flow.steps(), True)
        except BaseException:
            self._rollback(conn)
            raise
        self._statement(conn, _COMMIT)
        return value

    def _drive(self, conn: C, steps: Steps[Any], in_transaction: bool) -> Any:
        sent: Any = None
        error: DatabaseError | None = None
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            try:
                sent, error = self._perform(conn, step, in_transaction), None
            except DatabaseError as exc:
                sent, error = None, exc


class _Bound:
    """What a transaction's executor knows of its savepoint."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False
        """The last call's savepoint is still open (released with the next one's)."""


class _BoundExecutor(_Bound, Generic[C]):
    """The executor of one transaction: every operation on its connection."""

    __slots__ = ("_conn", "_parent")

    def __init__(self, parent: DbApiExecutor[C], conn: C) -> None:
        super().__init__()
        self._parent = parent
        self._conn = conn

    def run(self, operation: Operation[T]) -> T:
        return self._parent._in_savepoint(self._conn, operation, self)  # type: ignore[no-any-return]


class AsyncDbApiExecutor(Generic[C]):
    """The awaiting twin of :class:`DbApiExecutor`: ``checkout()`` is an async context
    manager yielding a connection whose ``await conn.execute(sql, params)`` returns a
    cursor with ``await cursor.fetchall()`` and ``rowcount`` (psycopg's
    ``AsyncConnection``), or override :meth:`statement`."""

    def __init__(
        self,
        checkout: Callable[[], AbstractAsyncContextManager[C]],
        *,
        dialect: Dialect,
        driver_error: type[Exception],
        translate: Translate,
        transaction_aborted: TransactionAborted | None = None,
    ) -> None:
        self._checkout = checkout
        self._begin: Step[None] = Step(dialect.begin_write, rows=False)
        self._driver_error = driver_error
        self._translate = translate
        self._transaction_aborted = transaction_aborted
        # Between two calls of a transaction: release the last savepoint, take the next.
        self._next_savepoint: tuple[Step[None], ...] = (
            (_NEXT_SAVEPOINT,) if dialect.multi_statement else (_RELEASE, _SAVEPOINT)
        )

    async def statement(self, conn: C, sql: str, params: Any, rows: bool) -> Any:
        """Run one statement on ``conn``: every row (``rows``) or the row count."""
        cursor = await conn.execute(sql, params)  # type: ignore[attr-defined]
        return await cursor.fetchall() if rows else cursor.rowcount

    async def statement_last_id(self, conn: C, sql: str, params: Any) -> tuple[int, int]:
        """Run one statement on ``conn`` for a ``last_id`` step: ``(rowcount, lastrowid)``."""
        cursor = await conn.execute(sql, params)  # type: ignore[attr-defined]
        return cursor.rowcount, cursor.lastrowid

    async def statement_many(self, conn: C, sql: str, params: Any) -> int:
        """Run one statement on ``conn`` for each parameter tuple of a ``many`` step (one
        ``await conn.executemany(sql, params)``): the summed row count."""
        cursor = await conn.executemany(sql, params)  # type: ignore[attr-defined]
        return int(cursor.rowcount)

    async def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation`` on a connection of its own."""
        try:
            async with self._checkout() as conn:
                return await self._perform(conn, operation, False)  # type: ignore[no-any-return]
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncExecutor]:
        """One connection for the block, between ``begin_write`` and ``COMMIT``, each
        operation under a savepoint; ``COMMIT`` of an aborted transaction raises."""
        async with self._lend() as conn:
            await self._statement(conn, self._begin)
            try:
                yield _AsyncBoundExecutor(self, conn)
            except BaseException:
                await self._rollback(conn)
                raise
            await self._commit(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[C]:
        """A connection for work outside the store logic, with lending errors translated."""
        async with self._lend() as conn:
            yield conn

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[C]:
        error: DatabaseError | None = None
        try:
            async with self._checkout() as conn:
                yield conn
        except self._driver_error as exc:
            error = self._translate(exc)
        if error is not None:
            raise error

    async def _statement(self, conn: C, step: Step[Any]) -> Any:
        try:
            if step.last_id:
                return await self.statement_last_id(conn, step.sql, step.params)
            if step.many:
                return await self.statement_many(conn, step.sql, step.params)
            return await self.statement(conn, step.sql, step.params, step.rows)
        except self._driver_error as exc:
            error = _violation(self._translate(exc), step)
        if step.in_doubt is not None and isinstance(error, TransientError):
            error = _in_doubt(error, step.in_doubt)
        raise error

    async def _rollback(self, conn: C) -> None:
        with suppress(Exception):
            await self.statement(conn, "ROLLBACK", (), False)

    async def _commit(self, conn: C) -> None:
        reason = self._transaction_aborted(conn) if self._transaction_aborted else None
        if reason is not None:
            await self._rollback(conn)
            raise _aborted_error(reason)
        await self._statement(conn, _COMMIT)

    async def _in_savepoint(self, conn: C, operation: Operation[Any], bound: _Bound) -> Any:
        for step in self._next_savepoint if bound.held else (_SAVEPOINT,):
            await self._statement(conn, step)
        bound.held = True
        try:
            return await self._perform(conn, operation, True)
        except BaseException:
            bound.held = False
            with suppress(Exception):
                await self.statement(conn, _ROLLBACK_TO, (), False)
                await self.statement(conn, _RELEASE.sql, (), False)
            raise

    async def _perform(self, conn: C, operation: Operation[Any], in_transaction: bool) -> Any:
        value: Any
        while True:
            if operation.__class__ is Step:
                step = operation
                value = step.decode(await self._statement(conn, step), step.subject)
            else:
                value = await self._flow(conn, cast("Flow[Any]", operation), in_transaction)
            if value.__class__ not in OPERATION_TYPES:
                return value
            operation = cast("Operation[Any]", value)

    async def _flow(self, conn: C, flow: Flow[Any], in_transaction: bool) -> Any:
        if in_transaction or not flow.atomic:
            return await self._drive(conn, flow.steps(), in_transaction)
        await self._statement(conn, self._begin)
        try:
            value = await self._drive(conn, flow.steps(), True)
        except BaseException:
            await self._rollback(conn)
            raise
        await self._statement(conn, _COMMIT)
        return value

    async def _drive(self, conn: C, steps: Steps[Any], in_transaction: bool) -> Any:
        sent: Any = None
        error: DatabaseError | None = None
        while True:
            try:
                step = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            try:
                sent, error = await self._perform(conn, step, in_transaction), None
            except DatabaseError as exc:
                sent, error = None, exc


class _AsyncBoundExecutor(_Bound, Generic[C]):
    __slots__ = ("_conn", "_parent")

    def __init__(self, parent: AsyncDbApiExecutor[C], conn: C) -> None:
        super().__init__()
        self._parent = parent
        self._conn = conn

    async def run(self, operation: Operation[T]) -> T:
        return await self._parent._in_savepoint(self._conn, operation, self)  # type: ignore[no-any-return]
