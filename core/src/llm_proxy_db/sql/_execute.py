"""Executors: the only code that runs store operations on a driver's connections.

An executor takes an :data:`~._operation.Operation` from the store logic and carries it
out: a :class:`~._operation.Step` is one statement; a :class:`~._operation.Flow` runs its
steps on one connection (in one transaction when ``atomic``); a decoder's follow-up
operation runs on the same connection. Driver exceptions are translated by the backend's
``translate`` at one place (:meth:`DbApiExecutor._statement`), then mapped by the step's
``on_violation``, and raised without the driver's exception attached.

:class:`DbApiExecutor` blocks; :class:`AsyncDbApiExecutor` awaits. Both drive the same
operations, so the store logic exists once. A backend whose driver does not have
``connection.execute(sql, params) -> cursor`` overrides :meth:`statement`.
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

from .._errors import DatabaseError
from ._dialect import Dialect
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


def _violation(error: DatabaseError, step: Step[Any]) -> DatabaseError:
    if step.on_violation is not None and isinstance(error, IntegrityViolation):
        return step.on_violation(error, step.subject)
    return error


class DbApiExecutor(Generic[C]):
    """A blocking executor over connections lent by ``checkout()`` (a context manager
    yielding a DB-API connection in autocommit mode: sqlite3 with ``isolation_level=None``,
    psycopg with ``autocommit=True``).

    One connection serves one operation: a single statement commits on its own; an atomic
    flow runs between ``dialect.begin_write`` and ``COMMIT``. :meth:`transaction` lends one
    connection to a block of operations.
    """

    def __init__(
        self,
        checkout: Callable[[], AbstractContextManager[C]],
        *,
        dialect: Dialect,
        driver_error: type[Exception],
        translate: Translate,
    ) -> None:
        self._checkout = checkout
        self._begin: Step[None] = Step(dialect.begin_write, rows=False)
        self._driver_error = driver_error
        self._translate = translate

    def statement(self, conn: C, sql: str, params: Any, rows: bool) -> Any:
        """Run one statement on ``conn``: every row (``rows``) or the row count.

        Driver exceptions propagate as they are; the executor translates them.
        """
        cursor = conn.execute(sql, params)  # type: ignore[attr-defined]
        return cursor.fetchall() if rows else cursor.rowcount

    # -- running -------------------------------------------------------------------------

    def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation`` on a connection of its own."""
        # What _lend() does, written out: the hot path pays no generator-based context.
        try:
            with self._checkout() as conn:
                return self._perform(conn, operation, False)  # type: ignore[no-any-return]
        except self._driver_error as exc:  # lending or returning the connection failed
            error = self._translate(exc)
        raise error

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        """One connection for the block, between ``begin_write`` and ``COMMIT``; rolled
        back if the block raises."""
        with self._lend() as conn:
            self._statement(conn, self._begin)
            try:
                yield _BoundExecutor(self, conn)
            except BaseException:
                self._rollback(conn)
                raise
            self._statement(conn, _COMMIT)

    @contextmanager
    def connection(self) -> Iterator[C]:
        """A connection for work outside the store logic (migrations, probes), with
        lending errors translated."""
        with self._lend() as conn:
            yield conn

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _lend(self) -> Iterator[C]:
        error: DatabaseError | None = None
        try:
            with self._checkout() as conn:
                yield conn
        except self._driver_error as exc:
            error = self._translate(exc)
        if error is not None:
            raise error  # outside the except block: no driver exception as context

    def _statement(self, conn: C, step: Step[Any]) -> Any:
        try:
            return self.statement(conn, step.sql, step.params, step.rows)
        except self._driver_error as exc:
            error = _violation(self._translate(exc), step)
        raise error

    def _rollback(self, conn: C) -> None:
        with suppress(Exception):  # the block's own error is the one to report
            self.statement(conn, "ROLLBACK", (), False)

    def _perform(self, conn: C, operation: Operation[Any], in_transaction: bool) -> Any:
        value: Any
        while True:
            if operation.__class__ is Step:
                step = operation
                value = step.decode(self._statement(conn, step), step.subject)
            else:
                value = self._flow(conn, cast(Flow[Any], operation), in_transaction)
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


class _BoundExecutor(Generic[C]):
    """The executor of one transaction: every operation on its connection."""

    __slots__ = ("_conn", "_parent")

    def __init__(self, parent: DbApiExecutor[C], conn: C) -> None:
        self._parent = parent
        self._conn = conn

    def run(self, operation: Operation[T]) -> T:
        return self._parent._perform(self._conn, operation, True)  # type: ignore[no-any-return]


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
    ) -> None:
        self._checkout = checkout
        self._begin: Step[None] = Step(dialect.begin_write, rows=False)
        self._driver_error = driver_error
        self._translate = translate

    async def statement(self, conn: C, sql: str, params: Any, rows: bool) -> Any:
        """Run one statement on ``conn``: every row (``rows``) or the row count."""
        cursor = await conn.execute(sql, params)  # type: ignore[attr-defined]
        return await cursor.fetchall() if rows else cursor.rowcount

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
        """One connection for the block, between ``begin_write`` and ``COMMIT``."""
        async with self._lend() as conn:
            await self._statement(conn, self._begin)
            try:
                yield _AsyncBoundExecutor(self, conn)
            except BaseException:
                await self._rollback(conn)
                raise
            await self._statement(conn, _COMMIT)

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
            return await self.statement(conn, step.sql, step.params, step.rows)
        except self._driver_error as exc:
            error = _violation(self._translate(exc), step)
        raise error

    async def _rollback(self, conn: C) -> None:
        with suppress(Exception):
            await self.statement(conn, "ROLLBACK", (), False)

    async def _perform(self, conn: C, operation: Operation[Any], in_transaction: bool) -> Any:
        value: Any
        while True:
            if operation.__class__ is Step:
                step = operation
                value = step.decode(await self._statement(conn, step), step.subject)
            else:
                value = await self._flow(conn, cast(Flow[Any], operation), in_transaction)
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


class _AsyncBoundExecutor(Generic[C]):
    __slots__ = ("_conn", "_parent")

    def __init__(self, parent: AsyncDbApiExecutor[C], conn: C) -> None:
        self._parent = parent
        self._conn = conn

    async def run(self, operation: Operation[T]) -> T:
        return await self._parent._perform(self._conn, operation, True)  # type: ignore[no-any-return]
