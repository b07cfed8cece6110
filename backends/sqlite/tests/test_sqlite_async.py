"""The native asyncio SQLite backend: a writer thread and reader threads, one hop a call."""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import (
    AuditEvent,
    AuditEventFilter,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    TokenLimitReachedError,
    TransientError,
    aio,
)
from llm_proxy_db.aio import AsyncDB
from llm_proxy_db.sql import Step
from llm_proxy_db_sqlite._async_backend import AsyncSQLiteBackend, open_async

_THREAD_PREFIX = "llm-proxy-db-sqlite-"


def run_with_db(
    path: Path | str, body: Callable[[AsyncDB], Awaitable[Any]], **overrides: Any
) -> Any:
    """``asyncio.run`` of ``body(db)`` on an ``AsyncDB`` opened on ``path``, closed after."""

    async def main() -> Any:
        db = await aio.new_from_full_config(
            FullConfig(driver="sqlite", path=str(path), **overrides)
        )
        async with db:
            return await body(db)

    return asyncio.run(main())


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(_THREAD_PREFIX)]


async def project_and_token(db: AsyncDB, **token: Any) -> tuple[Project, Token]:
    project = await db.create_project(Project(name="acme", openai_api_key="sk-upstream"))
    return project, await db.create_token(Token(project_id=project.id, **token))


def test_async_db_on_sqlite_is_native_and_serves_the_store(db_path: Path) -> None:
    async def body(db: AsyncDB) -> None:
        assert db.backend_spec.native_async
        assert isinstance(db._backend, AsyncSQLiteBackend)
        project, token = await project_and_token(db, max_requests=2)
        assert (await db.increment_token_usage(token.token)).request_count == 1
        assert (await db.get_token_by_id(token.token)).request_count == 1
        assert [t.token for t in await db.list_tokens(project.id)] == [token.token]
        async with db.transaction() as tx:
            await tx.create_audit_event(AuditEvent(action="a", actor="x", outcome="success"))
            assert (await tx.increment_token_usage(token.token)).request_count == 2
        with pytest.raises(TokenLimitReachedError):
            await db.increment_token_usage(token.token)
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.reset_token_usage(token.token)
                raise RuntimeError("rolled back")
        assert (await db.get_token_by_id(token.token)).request_count == 2
        assert await db.count_audit_events(AuditEventFilter(action="a")) == 1
        await db.health_check()
        assert our_threads()

    run_with_db(db_path, body)


def test_memory_database_is_one_connection_for_everything() -> None:
    async def body(db: AsyncDB) -> None:
        assert [t.name for t in our_threads()] == [_THREAD_PREFIX + "writer"]
        _, token = await project_and_token(db)
        async with db.transaction() as tx:
            await tx.increment_token_usage(token.token)
            # Another task, as if started outside the block (the rule refuses one from inside).
            reading = asyncio.create_task(
                db.get_token_by_id(token.token), context=contextvars.Context()
            )
            await asyncio.sleep(0.01)
            assert not reading.done()  # waits for the block: never sees it half done
        assert (await reading).request_count == 1
        await db.health_check()

    run_with_db(":memory:", body)


def test_exactly_max_requests_of_200_concurrent_increments_succeed(db_path: Path) -> None:
    async def body(db: AsyncDB) -> list[Any]:
        _, token = await project_and_token(db, max_requests=50)
        results = await asyncio.gather(
            *(db.increment_token_usage(token.token) for _ in range(200)), return_exceptions=True
        )
        assert (await db.get_token_by_id(token.token)).request_count == 50
        return results

    results = run_with_db(db_path, body)
    assert sum(isinstance(r, Token) for r in results) == 50
    assert sum(isinstance(r, TokenLimitReachedError) for r in results) == 150


def test_a_thousand_random_cancellations_leave_the_store_consistent(db_path: Path) -> None:
    rng = random.Random(12)

    async def body(db: AsyncDB) -> None:
        _, token = await project_and_token(db)
        acked_plain = cancelled_plain = 0
        acked_blocks: set[str] = set()
        cancelled_blocks: set[str] = set()

        async def increment() -> None:
            await db.increment_token_usage(token.token)

        async def block(event_id: str) -> None:
            async with db.transaction() as tx:
                await tx.create_audit_event(
                    AuditEvent(id=event_id, action="block", actor="t", outcome="success")
                )
                await tx.increment_token_usage(token.token)

        # Rounds of 50 tasks, each cancelled at a random moment, until 1,000 were really
        # cancelled (a task may finish before its cancel arrives); 400 rounds at most.
        rounds = 0
        while cancelled_plain + len(cancelled_blocks) < 1000:
            assert rounds < 400, f"only {cancelled_plain + len(cancelled_blocks)} cancelled"
            rounds += 1
            jobs: list[tuple[asyncio.Task[None], str | None]] = []
            for _ in range(50):
                if rng.random() < 0.5:
                    jobs.append((asyncio.ensure_future(increment()), None))
                else:
                    new_id = str(uuid.uuid4())
                    jobs.append((asyncio.ensure_future(block(new_id)), new_id))
            loop = asyncio.get_running_loop()
            for task, _ in jobs:
                loop.call_later(rng.uniform(0, 0.006), task.cancel)
            await asyncio.wait([task for task, _ in jobs])
            for task, event_id in jobs:
                if task.cancelled():
                    if event_id is None:
                        cancelled_plain += 1
                    else:
                        cancelled_blocks.add(event_id)
                else:
                    task.result()  # no other error
                    if event_id is None:
                        acked_plain += 1
                    else:
                        acked_blocks.add(event_id)
        stored = {e.id for e in await db.list_audit_events(AuditEventFilter(action="block"))}
        assert acked_blocks <= stored <= acked_blocks | cancelled_blocks
        counted = (await db.get_token_by_id(token.token)).request_count
        # Each stored block counted one; what is left are the plain increments.
        counted_plain = counted - len(stored)
        assert acked_plain <= counted_plain <= acked_plain + cancelled_plain
        # Still working: a block, an increment, the health check.
        await block(str(uuid.uuid4()))
        assert (await db.increment_token_usage(token.token)).request_count == counted + 2
        await db.health_check()

    started = time.monotonic()
    run_with_db(db_path, body)
    assert time.monotonic() - started < 20


def test_the_loop_keeps_running_while_sqlite_waits_for_a_lock(db_path: Path) -> None:
    async def body(db: AsyncDB) -> None:
        _, token = await project_and_token(db)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
            ticking = asyncio.ensure_future(ticker())
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, other.execute, "COMMIT")
            started = time.monotonic()
            await db.increment_token_usage(token.token)  # waits in the writer thread
            waited = time.monotonic() - started
            other.execute("BEGIN IMMEDIATE")  # now past busy_timeout: a TransientError
            with pytest.raises(TransientError, match="busy_timeout"):
                await db.increment_token_usage(token.token)
            other.execute("COMMIT")
            stop.set()
            await ticking
        finally:
            other.close()
        assert waited >= 0.25
        assert len(gaps) > 100
        assert max(gaps) < 0.1, max(gaps)

    run_with_db(db_path, body, busy_timeout=timedelta(seconds=1))


def test_close_joins_every_thread_and_is_idempotent(db_path: Path, open_db: OpenDB) -> None:
    open_db().close()  # migrated: open_async, the backend alone, does not migrate
    before = set(threading.enumerate())

    async def main() -> None:
        backend = await open_async(FullConfig(driver="sqlite", path=str(db_path)))
        assert len(our_threads()) >= 2  # the writer and at least one reader
        await backend.health_check()
        await backend.close()
        assert not our_threads()
        await backend.close()
        with pytest.raises(DatabaseError, match="closed"):
            await backend.list_projects()

        db = await aio.new_from_full_config(FullConfig(driver="sqlite", path=str(db_path)))
        await db.list_projects()
        await db.close()
        await db.close()
        assert not our_threads()

    asyncio.run(main())
    assert set(threading.enumerate()) <= before


def test_sync_and_async_databases_on_one_file_see_each_others_writes(
    db_path: Path, open_db: OpenDB
) -> None:
    sync = open_db()
    project = sync.create_project(Project(name="shared", openai_api_key="sk-upstream"))
    token = sync.create_token(Token(project_id=project.id))

    async def body(db: AsyncDB) -> None:
        assert (await db.get_token_by_id(token.token)).request_count == 0
        sync.increment_token_usage(token.token)
        assert (await db.get_token_by_id(token.token)).request_count == 1
        await db.increment_token_usage(token.token)
        assert sync.get_token_by_id(token.token).request_count == 2
        async with db.transaction() as tx:
            await tx.revoke_token(token.token)
        assert not sync.get_token_by_id(token.token).is_active

    run_with_db(db_path, body)


def test_statement_timeout_interrupts_in_the_thread(db_path: Path) -> None:
    async def body(db: AsyncDB) -> None:
        await project_and_token(db)
        backend = db._backend
        assert isinstance(backend, AsyncSQLiteBackend)
        slow: Step[Any] = Step(
            "SELECT count(*) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
            "SELECT i + 1 FROM n) SELECT i FROM n LIMIT 100000000)"
        )
        with pytest.raises(TransientError, match="statement_timeout"):
            await backend._router.run(slow)
        assert len(await db.list_projects()) == 1

    run_with_db(db_path, body, statement_timeout=timedelta(milliseconds=100))


async def _in_forked_child(db: AsyncDB, token: str) -> int:
    """The child's checks, on a loop of its own: 0 when every one holds."""
    backend = db._backend
    assert isinstance(backend, AsyncSQLiteBackend)
    try:
        await db.get_token_by_id(token)
        return 1
    except DatabaseError as exc:  # the AsyncDB belongs to the parent's loop
        if "event loop" not in str(exc):
            return 2
    try:
        await backend.get_token_by_id(token)
        return 3
    except DatabaseError as exc:  # the backend's threads stayed in the parent
        if "os.fork()" not in str(exc):
            return 4
    await backend.close()  # forgets the parent's connections, never closes them
    return 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_forked_child_is_refused_and_the_parent_goes_on(db_path: Path) -> None:
    async def body(db: AsyncDB) -> None:
        _, token = await project_and_token(db)
        await db.increment_token_usage(token.token)
        pid = os.fork()
        if pid == 0:  # the child: none of the backend's threads
            code = 9
            try:
                code = asyncio.run(_in_forked_child(db, token.token))
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (await db.increment_token_usage(token.token)).request_count == 2
        await db.health_check()

    run_with_db(db_path, body)
