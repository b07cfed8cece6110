"""What only an event loop can show: the conformance tests run natively on ``AsyncDB``.

A blocking portal runs each call in a fresh task, so what depends on task identity is
tested here, with anyio's pytest plugin on asyncio: the transaction rule for tasks,
cancellation inside a block, many tasks racing for a limit, threads left after
``close()``, use from another loop, and the warning of an ``AsyncDB`` collected open.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import anyio.to_thread
import pytest

from .._aio import AsyncDB
from .._errors import (
    DatabaseError,
    NotFoundError,
    TokenLimitReachedError,
    TransientError,
)
from .._models import Project, Token
from ._base import ConformanceBase, unique
from ._calls import BACKEND_METHODS, Keys, arguments

__all__ = ["AsyncBackendFactory", "AsyncOnlyTests", "acall"]

_TASKS: Final = 200
_TASK_LIMIT: Final = 50
_CANCEL_ROUNDS: Final = 25
_CANCEL_TASKS_EACH: Final = 10
_CANCEL_AFTER_S: Final = 0.004
_AT_ONCE_S: Final = 1.0


class AsyncBackendFactory(Protocol):
    """What the ``async_backend_factory`` fixture returns.

    ``await factory()`` opens, on the running loop, a new, empty, migrated ``AsyncDB``
    that shares nothing with any other; ``await factory(reopen=db)`` opens the storage of
    ``db`` again (used by the ``persistent`` tests, after ``db`` was closed).
    """

    def __call__(self, *, reopen: AsyncDB | None = None) -> Awaitable[AsyncDB]: ...


async def acall(target: object, method: str, keys: Keys) -> Any:
    """``_calls.call`` awaiting: call ``target.method`` with sample arguments and await
    it; an async context manager (``transaction()``) is entered and left at once."""
    bound: Callable[..., Any] = getattr(target, method)
    result = bound(*arguments(method, keys))
    if isinstance(result, AbstractAsyncContextManager):
        async with result:
            pass
        return None
    return await result


class AsyncOnlyTests(ConformanceBase):
    """The async-only tests of ``AsyncStoreConformance`` (run natively on asyncio)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        """anyio's pytest plugin runs the async tests on asyncio."""
        return "asyncio"

    @pytest.fixture
    def async_backend_factory(self) -> AsyncBackendFactory:
        """Override this fixture in your subclass of ``AsyncStoreConformance``."""
        pytest.fail(
            f"{type(self).__name__} must override the `async_backend_factory` fixture: a "
            "callable where `await factory()` opens a new, empty, migrated, isolated "
            "AsyncDB on the running loop and `await factory(reopen=db)` opens the same "
            "storage as db again (see llm_proxy_db.testing.AsyncBackendFactory)",
            pytrace=False,
        )

    @pytest.fixture
    async def async_db(
        self, async_backend_factory: AsyncBackendFactory, anyio_backend: str
    ) -> AsyncIterator[AsyncDB]:
        """A new empty ``AsyncDB`` for one async test, closed afterwards."""
        database = await async_backend_factory()
        try:
            yield database
        finally:
            if not database.closed:
                await database.close()

    async def given_async_records(self, db: AsyncDB, *, max_requests: int = 100) -> Keys:
        project = await db.create_project(self.new_project())
        token = await db.create_token(self.new_token(project, max_requests=max_requests))
        event = await db.create_audit_event(self.new_event(project_id=project.id))
        return Keys(project.id, token.token, event.id)

    # -- the transaction rule, for tasks ----------------------------------------------

    @pytest.mark.anyio
    async def test_async_call_inside_its_own_transaction_is_refused(
        self, async_db: AsyncDB
    ) -> None:
        """Inside ``async with db.transaction() as tx:`` every call on ``db`` itself, in
        the task that opened the block and in a task started inside it, raises
        ``DatabaseError`` (not ``TransientError``) at once and changes nothing; the block
        goes on and commits."""
        db = async_db
        keys = await self.given_async_records(db, max_requests=5)
        before = (await db.list_projects(), await db.list_tokens(), await db.count_audit_events())
        fresh = self.new_project(name=unique("made-in-the-block"))
        wrong: list[str] = []

        async def refused(name: str, where: str) -> None:
            started = time.monotonic()
            try:
                await acall(db, name, Keys(keys.project_id, keys.token, unique("event")))
            except TransientError as exc:
                wrong.append(f"db.{name}() {where} raised a TransientError: {exc}")
            except DatabaseError as exc:
                if "transaction" not in str(exc):
                    wrong.append(f"db.{name}() {where}: the error does not say why: {exc}")
            else:
                wrong.append(f"db.{name}() {where} was not refused")
            elapsed = time.monotonic() - started
            if elapsed >= _AT_ONCE_S:
                wrong.append(f"db.{name}() {where} took {elapsed:.1f}s to be refused")

        async with db.transaction() as tx:
            await tx.create_project(fresh)
            for name in sorted(BACKEND_METHODS):
                await refused(name, "in the block's task")
                task = asyncio.create_task(refused(name, "in a task started in the block"))
                await asyncio.wait_for(task, timeout=30)
            assert await tx.get_project_by_id(fresh.id) == fresh  # the block is intact
        assert not wrong, "calls on the AsyncDB inside its own block:\n" + "\n".join(wrong)
        projects, tokens, events = before
        assert await db.list_projects() == sorted([*projects, fresh], key=lambda p: p.name)
        assert await db.list_tokens() == tokens, "a refused call inside the block changed a token"
        assert await db.count_audit_events() == events
        await db.health_check()  # the database is still open

    @pytest.mark.anyio
    async def test_task_started_before_a_transaction_is_not_refused(
        self, async_db: AsyncDB
    ) -> None:
        """A task started before the block is not inside it: its call during the block
        answers (it may wait for the block to end), and is never refused."""
        db = async_db
        project = await db.create_project(self.new_project())
        gate = asyncio.Event()

        async def read() -> Project:
            await gate.wait()
            return await db.get_project_by_id(project.id)

        early = asyncio.create_task(read())
        await asyncio.sleep(0)  # it starts, and waits at the gate
        async with db.transaction() as tx:
            await tx.create_project(self.new_project())
            gate.set()
            await asyncio.sleep(0.05)  # its call runs now, during the block
        assert await asyncio.wait_for(early, timeout=30) == project

    # -- cancellation -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_cancelled_task_inside_transaction_rolls_back(self, async_db: AsyncDB) -> None:
        db = async_db
        keys = await self.given_async_records(db, max_requests=10)
        before = await db.get_token_by_id(keys.token)
        doomed = self.new_project()
        inside = asyncio.Event()

        async def block() -> None:
            async with db.transaction() as tx:
                await tx.create_project(doomed)
                await tx.increment_token_usage(keys.token)
                await tx.create_audit_event(self.new_event(project_id=doomed.id))
                inside.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(block())
        await asyncio.wait_for(inside.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(NotFoundError):
            await db.get_project_by_id(doomed.id)
            pytest.fail("a project created in a cancelled transaction survived")
        assert await db.get_token_by_id(keys.token) == before, (
            "an increment made in a cancelled transaction survived"
        )
        assert await db.count_audit_events() == 1
        # The database goes on: a new block commits.
        async with db.transaction() as tx:
            assert (await tx.increment_token_usage(keys.token)).request_count == 1
        await db.health_check()

    @pytest.mark.anyio
    async def test_random_cancellations_leave_whole_blocks_and_exact_counts(
        self, async_db: AsyncDB
    ) -> None:
        """Tasks in transactions and plain increments, cancelled at random moments: each
        block is all or nothing, and acknowledged <= counted <= acknowledged + cancelled."""
        db = async_db
        rng = random.Random(12)
        shared = await db.create_token(self.new_token(await db.create_project(self.new_project())))
        outcomes: Counter[str] = Counter()
        blocks: list[tuple[Project, Token, list[str]]] = []  # with how each ended

        async def in_block(project: Project, token: Token) -> None:
            async with db.transaction() as tx:
                await tx.create_project(project)
                await asyncio.sleep(0)  # other work of the block: a moment to be cancelled
                await tx.create_token(token)
                await tx.increment_token_usage(token.token)
                await asyncio.sleep(0)
                await tx.increment_token_usage(shared.token)

        async def plain() -> None:
            await db.increment_token_usage(shared.token)

        async def run(body: Callable[[], Awaitable[None]], kind: str, key: list[str]) -> None:
            try:
                await body()
            except asyncio.CancelledError:
                key.append("cancelled")
                outcomes["cancelled"] += 1
                raise
            except Exception as exc:  # reported below
                key.append("error")
                outcomes[f"{type(exc).__name__}: {exc}"] += 1
                return
            key.append("ok")
            outcomes[f"ok-{kind}"] += 1

        async def cancel_later(task: asyncio.Task[None]) -> None:
            for _ in range(rng.randrange(12)):  # a few steps of the loop (memory is quick)
                await asyncio.sleep(0)
            if rng.random() < 0.5:  # or a moment (I/O takes longer)
                await asyncio.sleep(rng.uniform(0, _CANCEL_AFTER_S))
            task.cancel()

        for _ in range(_CANCEL_ROUNDS):
            tasks: list[asyncio.Task[None]] = []
            for index in range(_CANCEL_TASKS_EACH):
                state: list[str] = []
                if index % 2:
                    project = self.new_project()
                    token = self.new_token(project)
                    blocks.append((project, token, state))
                    body = functools.partial(in_block, project, token)
                    tasks.append(asyncio.create_task(run(body, "block", state)))
                else:
                    tasks.append(asyncio.create_task(run(plain, "plain", state)))
            cancellers = [asyncio.create_task(cancel_later(t)) for t in tasks if rng.random() < 0.6]
            await asyncio.wait([*tasks, *cancellers], timeout=60)
            assert all(task.done() for task in tasks), "a cancelled task never finished"

        unexpected = set(outcomes) - {"ok-block", "ok-plain", "cancelled"}
        assert not unexpected, f"calls failed: {sorted(unexpected)}"
        assert outcomes["cancelled"], f"no task was cancelled while running: {dict(outcomes)}"
        acknowledged = outcomes["ok-block"] + outcomes["ok-plain"]
        cancelled = outcomes["cancelled"]
        counted = (await db.get_token_by_id(shared.token)).request_count
        assert acknowledged <= counted <= acknowledged + cancelled, (
            f"request_count {counted}: acknowledged {acknowledged}, cancelled {cancelled}"
        )
        wrong: list[str] = []
        for project, token, state in blocks:
            try:
                stored = await db.get_token_by_id(token.token)
            except NotFoundError:
                stored = None
            try:
                await db.get_project_by_id(project.id)
                has_project = True
            except NotFoundError:
                has_project = False
            whole = has_project and stored is not None and stored.request_count == 1
            nothing = not has_project and stored is None
            if state == ["ok"] and not whole:
                wrong.append(f"an acknowledged block left part of its writes: {project.id}")
            elif not (whole or nothing):
                wrong.append(f"a cancelled block left part of its writes: {project.id}")
        assert not wrong, f"outcomes {dict(outcomes)}:\n" + "\n".join(wrong)
        await db.health_check()
        async with db.transaction() as tx:  # nothing is left holding a lock
            await tx.increment_token_usage(shared.token)

    # -- many tasks ---------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_increment_exact_limit_with_racing_tasks(self, async_db: AsyncDB) -> None:
        db = async_db
        project = await db.create_project(self.new_project())
        token = await db.create_token(self.new_token(project, max_requests=_TASK_LIMIT))

        async def attempt() -> str:
            try:
                await db.increment_token_usage(token.token)
            except TokenLimitReachedError:
                return "limit"
            except Exception as exc:  # reported below
                return type(exc).__name__
            return "ok"

        outcomes = Counter(await asyncio.gather(*(attempt() for _ in range(_TASKS))))
        assert dict(outcomes) == {"ok": _TASK_LIMIT, "limit": _TASKS - _TASK_LIMIT}, (
            f"{_TASKS} tasks on a token with max_requests={_TASK_LIMIT}: {dict(outcomes)}"
        )
        assert (await db.get_token_by_id(token.token)).request_count == _TASK_LIMIT

    # -- threads, loops, garbage ----------------------------------------------------------

    def test_close_leaves_no_thread_running(
        self, async_backend_factory: AsyncBackendFactory
    ) -> None:
        """After ``close()`` (and the loop's shutdown of its default executor) no thread
        the database started is still running."""

        async def use(work: bool) -> None:
            db = await async_backend_factory()
            if work:
                keys = await self.given_async_records(db)
                async with db.transaction() as tx:
                    await tx.increment_token_usage(keys.token)
                await asyncio.gather(*(db.get_token_by_id(keys.token) for _ in range(8)))
                await db.health_check()
            await db.close()

        asyncio.run(use(work=False))  # what a first open starts once (session fixtures)
        before = set(threading.enumerate())
        asyncio.run(use(work=True))
        left = [t for t in threading.enumerate() if t not in before]
        for thread in left:
            thread.join(timeout=5)
        running = [t.name for t in left if t.is_alive()]
        assert not running, f"threads still running after AsyncDB.close(): {running}"

    @pytest.mark.anyio
    async def test_use_from_another_loop_is_refused(self, async_db: AsyncDB) -> None:
        """Every call on an ``AsyncDB`` from a loop other than its own raises
        ``DatabaseError`` at once (instead of hanging), and changes nothing."""
        keys = await self.given_async_records(async_db)

        def elsewhere() -> list[str]:
            wrong: list[str] = []
            for name in sorted(BACKEND_METHODS):
                started = time.monotonic()
                try:
                    asyncio.run(acall(async_db, name, keys))
                except DatabaseError:
                    pass
                except Exception as exc:  # reported below
                    wrong.append(f"{name}() raised {type(exc).__name__}: {exc}")
                else:
                    wrong.append(f"{name}() answered on another loop")
                elapsed = time.monotonic() - started
                if elapsed >= _AT_ONCE_S:
                    wrong.append(f"{name}() took {elapsed:.1f}s on another loop")
            return wrong

        wrong = await anyio.to_thread.run_sync(elsewhere)
        assert not wrong, "calls from another event loop:\n" + "\n".join(wrong)
        assert not async_db.closed
        await async_db.health_check()
        assert (await async_db.get_token_by_id(keys.token)).request_count == 0

    @pytest.mark.anyio
    async def test_garbage_collected_open_db_warns(
        self, async_backend_factory: AsyncBackendFactory
    ) -> None:
        db = await async_backend_factory()
        backend = db._backend  # to release its connections after the warning
        with pytest.warns(ResourceWarning):
            del db
            gc.collect()
        await backend.close()
