"""Coalesced increments: the counted requests of concurrent threads in one statement.

:class:`Combiner` is the machinery, independent of any database: a caller arriving while
fewer than ``leaders`` calls or batches are in flight runs its own call at once (a lone
caller pays what a plain call costs); otherwise it waits. When a call or batch ends, its
leader hands every waiting request, as one batch, to the first of their callers, who
leads that batch: a waiting caller waits for one round trip, then its batch. Each caller
gets an *outcome* of its own, run in its own thread: its value, its error, or a follow-up
(a refusal's explanation). :class:`CoalescedIncrements` applies it to
``increment_token_usage`` and ``authorize`` on a SQL dialect with
``Statements.increment_batch``. :class:`AsyncCombiner` and
:class:`AsyncCoalescedIncrements` are their twins for the tasks of one event loop,
sharing how a batch is merged per token and handed out (:func:`_merged`,
:func:`_handed_out`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .._errors import DatabaseError, TransientError
from .._models import Authorization, Token
from ._execute import AsyncExecutor, Executor
from ._logic import StoreLogic
from ._operation import Operation
from ._statements import TOKEN_COLUMNS

__all__ = ["AsyncCoalescedIncrements", "AsyncCombiner", "CoalescedIncrements", "Combiner"]

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

Outcome = Callable[[], Any]
"""What a caller of a batch runs in its own thread: returns its value or raises its error."""
AsyncOutcome = Callable[[], Awaitable[Any]]
"""The twin of :data:`Outcome` for a task: awaited in the caller's own task."""


def _raising(error: BaseException) -> Outcome:
    def outcome() -> Any:
        raise copy.copy(error)  # one copy per caller: never one traceback shared by threads

    return outcome


def _returning(value: Any) -> Outcome:
    return lambda: value


class _Waiter(Generic[I]):
    __slots__ = ("batch", "item", "outcome", "ready")

    def __init__(self, item: I) -> None:
        self.item = item
        self.ready = threading.Lock()
        self.ready.acquire()  # released by the hand-off: an outcome, or a batch to lead
        self.batch: list[_Waiter[I]] | None = None
        self.outcome: Outcome | None = None


class Combiner(Generic[I, R]):
    """Runs ``run_one(item)`` for a lone caller and ``run_batch(items)`` (one outcome per
    item, in order) for callers that waited; at most ``leaders`` of them at once.

    A ``DatabaseError`` of ``run_batch`` fails each caller of the batch with it. After
    :meth:`close` a call raises ``DatabaseError``.
    """

    def __init__(
        self,
        run_one: Callable[[I], R],
        run_batch: Callable[[list[I]], list[Outcome]],
        *,
        leaders: int = 1,
    ) -> None:
        if leaders < 1:
            raise ValueError(f"leaders must be >= 1, got {leaders}")
        self._run_one = run_one
        self._run_batch = run_batch
        self._leaders = leaders
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: list[_Waiter[I]] = []
        self._leading = 0
        self._calls = 0
        self._closed = False

    def __call__(self, item: I) -> R:
        with self._lock:
            if self._closed:
                raise DatabaseError("the database is closed")
            self._calls += 1
            waiter: _Waiter[I] | None = None
            if self._leading < self._leaders:
                self._leading += 1
            else:
                waiter = _Waiter(item)
                self._pending.append(waiter)
        try:
            if waiter is None:  # nothing to wait for: a plain call
                try:
                    return self._run_one(item)
                finally:
                    self._hand_off()
            waiter.ready.acquire()
            if waiter.batch is not None:
                self._lead(waiter.batch)
            assert waiter.outcome is not None
            return waiter.outcome()  # type: ignore[no-any-return]
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._calls -= 1
            if not self._calls and self._closed:
                self._idle.notify_all()

    def close(self) -> None:
        """Refuse new calls and wait until every call in flight has returned."""
        with self._lock:
            self._closed = True
            while self._calls:
                self._idle.wait()

    def _hand_off(self) -> None:
        """After a call or batch: what waits becomes the next batch, led by its first."""
        with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                self._leading -= 1
                return
        batch[0].batch = batch
        batch[0].ready.release()

    def _lead(self, batch: list[_Waiter[I]]) -> None:
        interrupted: BaseException | None = None
        try:
            outcomes = self._run_batch([waiter.item for waiter in batch])
        except DatabaseError as exc:
            outcomes = [_raising(exc)] * len(batch)
        except BaseException as exc:  # the leader interrupted: the others learn it
            interrupted = exc
            lost = TransientError(
                "the batch of counted requests was interrupted (the request may or may "
                "not have been counted)"
            )
            outcomes = [_raising(lost)] * len(batch)
        finally:
            self._hand_off()
        for waiter, outcome in zip(batch, outcomes, strict=True):
            waiter.outcome = outcome
            if waiter is not batch[0]:
                waiter.ready.release()
        if interrupted is not None:
            raise interrupted


class _AsyncWaiter(Generic[I]):
    __slots__ = ("item", "outcome")

    def __init__(self, item: I, outcome: asyncio.Future[AsyncOutcome]) -> None:
        self.item = item
        self.outcome = outcome  # set by the batch; cancelled with its caller


class AsyncCombiner(Generic[I, R]):
    """The twin of :class:`Combiner` for the tasks of one event loop: ``await
    run_one(item)`` for a lone caller, ``await run_batch(items)`` for callers that
    waited; at most ``leaders`` of them at once.

    The first waiter's batch runs in a task of its own (the callers' futures wait for
    it), so a cancelled caller never interrupts the batch of the others: it gets
    ``CancelledError`` and its own request may or may not have been counted. A caller
    cancelled before its batch started is left out of it.
    """

    def __init__(
        self,
        run_one: Callable[[I], Awaitable[R]],
        run_batch: Callable[[list[I]], Awaitable[list[AsyncOutcome]]],
        *,
        leaders: int = 1,
    ) -> None:
        if leaders < 1:
            raise ValueError(f"leaders must be >= 1, got {leaders}")
        self._run_one = run_one
        self._run_batch = run_batch
        self._leaders = leaders
        self._pending: list[_AsyncWaiter[I]] = []
        self._batches: set[asyncio.Task[None]] = set()  # referenced until they end
        self._leading = 0
        self._calls = 0
        self._idle: asyncio.Future[None] | None = None
        self._closed = False

    async def __call__(self, item: I) -> R:
        if self._closed:
            raise DatabaseError("the database is closed")
        self._calls += 1
        try:
            if self._leading < self._leaders:  # nothing to wait for: a plain call
                self._leading += 1
                try:
                    return await self._run_one(item)
                finally:
                    self._hand_off()
            waiter = _AsyncWaiter(item, asyncio.get_running_loop().create_future())
            self._pending.append(waiter)
            try:
                outcome = await waiter.outcome
            except asyncio.CancelledError:
                if waiter in self._pending:  # not sent: left out of the next batch
                    self._pending.remove(waiter)
                raise
            return await outcome()  # type: ignore[no-any-return]
        finally:
            self._calls -= 1
            if not self._calls and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    async def close(self) -> None:
        """Refuse new calls and wait until every call in flight has returned."""
        self._closed = True
        if self._calls:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)
        while self._batches:  # a batch whose callers were all cancelled
            await asyncio.wait(set(self._batches))

    def _hand_off(self) -> None:
        """After a call or batch: what waits becomes the next batch, run in its own task."""
        batch = [waiter for waiter in self._pending if not waiter.outcome.done()]
        self._pending = []
        if not batch:
            self._leading -= 1
            return
        task = asyncio.get_running_loop().create_task(self._lead(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _lead(self, batch: list[_AsyncWaiter[I]]) -> None:
        interrupted: BaseException | None = None
        try:
            outcomes = await self._run_batch([waiter.item for waiter in batch])
        except DatabaseError as exc:
            outcomes = [_async_raising(exc)] * len(batch)
        except BaseException as exc:  # the batch interrupted: each caller learns it
            interrupted = exc
            lost = TransientError(
                "the batch of counted requests was interrupted (the request may or may "
                "not have been counted)"
            )
            outcomes = [_async_raising(lost)] * len(batch)
            if not isinstance(exc, asyncio.CancelledError):  # a fault: its first caller sees it
                outcomes[0] = _async_raising(exc)
        finally:
            self._hand_off()
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if not waiter.outcome.done():  # a cancelled caller no longer waits
                waiter.outcome.set_result(outcome)
        if isinstance(interrupted, asyncio.CancelledError):
            raise interrupted


class CoalescedIncrements:
    """``increment_token_usage`` and ``authorize`` of concurrent threads, combined into
    one ``Statements.increment_batch`` per round trip (a lone call is the plain one).

    Each caller gets exactly its own result: the ``request_count`` its request set, as
    if the calls ran one after another, or the refusal a plain call would have given (a
    request the batch did not count is explained by the plain refusal flow).
    """

    def __init__(self, executor: Executor, logic: StoreLogic, *, leaders: int = 1) -> None:
        if not logic.dialect.coalesced_increments:
            raise ValueError(f"the {logic.dialect.name} dialect has no batch increment")
        self._executor = executor
        self._logic = logic
        self._combiner: Combiner[tuple[str, bool], Any] = Combiner(
            self._one, self._batch, leaders=leaders
        )

    def increment_token_usage(self, token: str) -> Token:
        """As ``Stores.increment_token_usage``."""
        return self._combiner((token, False))  # type: ignore[no-any-return]

    def authorize(self, token: str) -> Authorization:
        """As ``Stores.authorize``."""
        return self._combiner((token, True))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Refuse new calls and wait for those in flight (``DB.close()`` drains them)."""
        self._combiner.close()

    def _one(self, item: tuple[str, bool]) -> Any:
        return self._executor.run(_plain(self._logic, item))

    def _batch(self, items: list[tuple[str, bool]]) -> list[Outcome]:
        if len(items) == 1:  # a batch of one costs what a plain call costs
            try:
                return [_returning(self._one(items[0]))]
            except DatabaseError as exc:
                return [_raising(exc)]
        run = self._executor.run
        granted = run(self._logic.increment_batch(_merged(items)))
        return [
            _returning(value) if refusal is None else _explained(run, refusal)
            for value, refusal in _handed_out(self._logic, items, granted)
        ]


class AsyncCoalescedIncrements:
    """The twin of :class:`CoalescedIncrements` for the tasks of one event loop, over an
    :class:`AsyncExecutor` and an :class:`AsyncCombiner` (same results, same errors)."""

    def __init__(self, executor: AsyncExecutor, logic: StoreLogic, *, leaders: int = 1) -> None:
        if not logic.dialect.coalesced_increments:
            raise ValueError(f"the {logic.dialect.name} dialect has no batch increment")
        self._executor = executor
        self._logic = logic
        self._combiner: AsyncCombiner[tuple[str, bool], Any] = AsyncCombiner(
            self._one, self._batch, leaders=leaders
        )

    async def increment_token_usage(self, token: str) -> Token:
        """As ``AsyncStores.increment_token_usage``."""
        return await self._combiner((token, False))  # type: ignore[no-any-return]

    async def authorize(self, token: str) -> Authorization:
        """As ``AsyncStores.authorize``."""
        return await self._combiner((token, True))  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Refuse new calls and wait for those in flight (``AsyncDB.close()`` drains them)."""
        await self._combiner.close()

    async def _one(self, item: tuple[str, bool]) -> Any:
        return await self._executor.run(_plain(self._logic, item))

    async def _batch(self, items: list[tuple[str, bool]]) -> list[AsyncOutcome]:
        if len(items) == 1:  # a batch of one costs what a plain call costs
            try:
                return [_async_returning(await self._one(items[0]))]
            except DatabaseError as exc:
                return [_async_raising(exc)]
        run = self._executor.run
        granted = await run(self._logic.increment_batch(_merged(items)))
        return [
            _async_returning(value) if refusal is None else _async_explained(run, refusal)
            for value, refusal in _handed_out(self._logic, items, granted)
        ]


_REQUEST_COUNT = TOKEN_COLUMNS.split(", ").index("request_count")

Refusal = Callable[[], Operation[Any]]
"""The plain refusal flow of one uncounted request, built when its caller runs it."""


def _plain(logic: StoreLogic, item: tuple[str, bool]) -> Operation[Any]:
    token, authorize = item
    return logic.authorize(token) if authorize else logic.increment_token_usage(token)


def _merged(items: list[tuple[str, bool]]) -> dict[str, int]:
    """How many requests of each token the batch counts (``increment_batch``'s ``wanted``)."""
    wanted: dict[str, int] = {}
    for token, _ in items:
        wanted[token] = wanted.get(token, 0) + 1
    return wanted


def _handed_out(
    logic: StoreLogic, items: list[tuple[str, bool]], granted: dict[str, tuple[int, Any]]
) -> list[tuple[Any, Refusal | None]]:
    """Each item's share of the batch, in order: ``(value, None)`` for a counted request
    (the count its turn in arrival order set), ``(None, refusal)`` for one left uncounted."""
    served: dict[str, int] = {}
    shares: list[tuple[Any, Refusal | None]] = []
    for token, authorize in items:
        position = served.get(token, 0)
        served[token] = position + 1
        count, row = granted.get(token, (0, None))
        if position < count:
            final = row[1 + _REQUEST_COUNT]
            value_count = final - count + 1 + position
            read = logic.granted_authorization if authorize else logic.granted_token
            shares.append((read(row, value_count), None))
        else:
            refused = logic.refused_authorize if authorize else logic.refused_increment
            shares.append((None, functools.partial(refused, token)))
    return shares


def _explained(run: Callable[[Any], Any], refusal: Refusal) -> Outcome:
    return lambda: run(refusal())


def _async_explained(run: Callable[[Any], Awaitable[Any]], refusal: Refusal) -> AsyncOutcome:
    return lambda: run(refusal())


def _async_returning(value: Any) -> AsyncOutcome:
    async def outcome() -> Any:
        return value

    return outcome


def _async_raising(error: BaseException) -> AsyncOutcome:
    async def outcome() -> Any:
        raise copy.copy(error)  # one copy per caller: never one traceback shared by tasks

    return outcome
