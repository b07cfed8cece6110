"""The native asyncio PostgreSQL backend: opened by ``aio``, the request limit under
concurrent tasks, random cancellations, killed connections, in-flight statements cancelled
once and twice, and ``close()`` leaving no thread behind."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import pytest
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from llm_proxy_db import (
    AuditEvent,
    AuditEventNotFoundError,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    TokenLimitReachedError,
    TransientError,
    aio,
)
from llm_proxy_db._offload import OffloadBackend
from llm_proxy_db.sql import Step
from llm_proxy_db_postgres._async_backend import AsyncPostgresBackend

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer

T = TypeVar("T")


@pytest.fixture
def tagged_url(postgres_url: str) -> str:
    """``postgres_url`` with an application_name only this test's connections carry."""
    return conninfo.make_conninfo(postgres_url, application_name=f"pga_{secrets.token_hex(6)}")


def _run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())  # type: ignore[arg-type]


async def _open(url: str, *, max_open: int = 4, pool_timeout: float = 5.0) -> aio.AsyncDB:
    return await aio.new_from_full_config(
        FullConfig(
            driver="postgres",
            database_url=url,
            max_open_conns=max_open,
            max_idle_conns=max_open,
            pool_timeout=timedelta(seconds=pool_timeout),
            connect_timeout=timedelta(seconds=2),
        )
    )


def _backend(db: aio.AsyncDB) -> AsyncPostgresBackend:
    backend = db._backend
    assert isinstance(backend, AsyncPostgresBackend)
    return backend


def _pool(db: aio.AsyncDB) -> AsyncConnectionPool[Any]:
    return _backend(db)._pool


async def _token(db: aio.AsyncDB, *, max_requests: int | None = None) -> str:
    project = await db.create_project(
        Project(name=f"p-{secrets.token_hex(4)}", openai_api_key="sk")
    )
    token = await db.create_token(Token(project_id=project.id, max_requests=max_requests))
    return token.token


async def _all_returned(db: aio.AsyncDB, timeout: float = 5.0) -> dict[str, int]:
    """The pool's stats once every connection it counts is back in it."""
    pool = _pool(db)
    deadline = time.monotonic() + timeout
    while True:
        stats = pool.get_stats()
        if stats.get("pool_size", 0) == stats.get("pool_available", 0):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"connections not returned to the pool: {stats}")
        await asyncio.sleep(0.02)


async def _burst(db: aio.AsyncDB, max_open: int, seconds: float = 0.3) -> float:
    """``max_open`` concurrent statements of ``seconds`` each: all succeed, side by side
    (a connection lost from the pool's count would make one wait for another)."""
    backend = _backend(db)
    started = time.monotonic()
    await asyncio.gather(
        *(backend.executor.run(Step(f"SELECT pg_sleep({seconds})")) for _ in range(max_open))
    )
    elapsed = time.monotonic() - started
    assert elapsed < 2 * seconds + 0.5, f"{max_open} statements took {elapsed:.2f} s"
    return elapsed


async def _server_connections(admin_url: str, url: str) -> list[tuple[int, str]]:
    name = conninfo.conninfo_to_dict(url)["application_name"]
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (name,)
        )
        return [(int(pid), str(state)) for pid, state in await cursor.fetchall()]


# -- opening ------------------------------------------------------------------------------


def test_aio_opens_the_native_backend_and_does_the_basic_calls(postgres_url: str) -> None:
    async def test() -> None:
        db = await _open(postgres_url)
        async with db:
            assert db.backend_spec.native_async
            assert not isinstance(db._backend, OffloadBackend)
            _backend(db)
            await db.health_check()
            value = await _token(db, max_requests=3)
            assert (await db.increment_token_usage(value)).request_count == 1
            assert (await db.get_token_by_id(value)).request_count == 1
            async with db.transaction() as tx:
                await tx.increment_token_usage(value)
                await tx.create_audit_event(AuditEvent(action="a", actor="t", outcome="success"))
            assert (await db.get_token_by_id(value)).request_count == 2
            kept = AuditEvent(action="b", actor="t", outcome="failure")
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    await tx.create_audit_event(kept)
                    await tx.increment_token_usage(value)
                    raise RuntimeError("roll back")
            with pytest.raises(AuditEventNotFoundError):
                await db.get_audit_event_by_id(kept.id)
            assert (await db.get_token_by_id(value)).request_count == 2
            assert await db.count_audit_events() == 1
            assert len(await db.list_tokens()) == 1
        assert db.closed

    _run(test)


def test_an_unreachable_server_fails_fast_with_the_probes_error() -> None:
    async def test() -> None:
        backend = AsyncPostgresBackend(
            FullConfig(driver="postgres", database_url="postgresql://127.0.0.1:1/test")
        )
        started = time.monotonic()
        with pytest.raises(
            TransientError, match=re.escape("cannot reach PostgreSQL at 127.0.0.1:1/test")
        ):
            await backend.open()
        assert time.monotonic() - started < 3
        await backend.close()

    _run(test)


# -- concurrency and cancellation ---------------------------------------------------------


def test_200_tasks_on_a_limit_of_50_exactly_50_succeed(postgres_url: str) -> None:
    async def test() -> tuple[int, int]:
        async with await _open(postgres_url, max_open=10) as db:
            value = await _token(db, max_requests=50)

            async def spend() -> bool:
                try:
                    await db.increment_token_usage(value)
                except TokenLimitReachedError:
                    return False
                return True

            results = await asyncio.gather(*(spend() for _ in range(200)))
            assert (await db.get_token_by_id(value)).request_count == 50
            return results.count(True), results.count(False)

    assert _run(test) == (50, 150)


CANCELLATIONS = 1000
"""Tasks really cancelled (the issue's 1,000 random cancellations)."""
MAX_TASKS = 20_000
BATCH = 50
MAX_OPEN = 8


def test_random_cancellations_lose_no_connection_and_no_rolled_back_write(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(12)
    figures: dict[str, int] = dict.fromkeys(
        ("inc_ack", "inc_cancelled", "tx_ack", "tx_cancelled", "tx_cancelled_at_commit"), 0
    )

    async def test() -> None:
        async with await _open(postgres_url, max_open=MAX_OPEN) as db:
            counted_token = await _token(db)
            tx_token = await _token(db)
            absent: list[str] = []  # blocks cancelled before their end: must leave nothing
            present: list[str] = []  # committed blocks
            in_doubt: list[str] = []  # cancelled at COMMIT: either way, but atomically

            async def increment() -> None:
                await db.increment_token_usage(counted_token)

            async def block(event_id: str, reached: list[bool]) -> None:
                async with db.transaction() as tx:
                    await tx.create_audit_event(
                        AuditEvent(id=event_id, action="cancel", actor="t", outcome="success")
                    )
                    await tx.increment_token_usage(tx_token)
                    reached.append(True)  # only the COMMIT is left

            # Batches until CANCELLATIONS tasks were really cancelled (a task may finish
            # before its cancel arrives), at most MAX_TASKS tasks in all.
            start = 0
            while figures["inc_cancelled"] + figures["tx_cancelled"] < CANCELLATIONS:
                assert start < MAX_TASKS, f"only {figures} after {start} tasks"
                tasks: list[tuple[asyncio.Task[None], str | None, list[bool]]] = []
                for i in range(start, start + BATCH):
                    if i % 2:
                        tasks.append((asyncio.ensure_future(increment()), None, []))
                    else:
                        new_id, marker = f"ev-{i}-{secrets.token_hex(4)}", list[bool]()
                        tasks.append((asyncio.ensure_future(block(new_id, marker)), new_id, marker))
                for task, _, _ in tasks:
                    delay = rng.uniform(0, 0.08)
                    asyncio.get_running_loop().call_later(delay, task.cancel)
                start += BATCH
                await asyncio.wait([task for task, _, _ in tasks])
                for task, event_id, reached in tasks:
                    kind = "inc" if event_id is None else "tx"
                    if task.cancelled():
                        figures[f"{kind}_cancelled"] += 1
                        if event_id is not None:
                            (in_doubt if reached else absent).append(event_id)
                            figures["tx_cancelled_at_commit"] += bool(reached)
                    else:
                        task.result()  # no other error
                        figures[f"{kind}_ack"] += 1
                        if event_id is not None:
                            present.append(event_id)
            await asyncio.sleep(0.05)  # the last cancellations' cleanup

            stats = await _all_returned(db)
            assert stats["pool_size"] <= MAX_OPEN
            await _burst(db, MAX_OPEN)
            await _all_returned(db)

            counted = (await db.get_token_by_id(counted_token)).request_count
            assert figures["inc_ack"] <= counted <= figures["inc_ack"] + figures["inc_cancelled"]
            for event_id in absent:
                with pytest.raises(AuditEventNotFoundError):
                    await db.get_audit_event_by_id(event_id)
            for event_id in present:
                await db.get_audit_event_by_id(event_id)
            committed_in_doubt = 0
            for event_id in in_doubt:
                try:
                    await db.get_audit_event_by_id(event_id)
                    committed_in_doubt += 1
                except AuditEventNotFoundError:
                    pass
            # Atomic: every stored event has its increment, and no increment without one.
            tx_counted = (await db.get_token_by_id(tx_token)).request_count
            assert tx_counted == len(present) + committed_in_doubt
            figures["counted"] = counted
            figures["tx_counted"] = tx_counted
            figures["tx_committed_in_doubt"] = committed_in_doubt
            pool_stats = _pool(db).get_stats()
            figures["pool_connections_opened"] = pool_stats.get("connections_num", 0)
            figures["pool_returns_bad"] = pool_stats.get("returns_bad", 0)

    started = time.monotonic()
    _run(test)
    with capsys.disabled():
        print(f"\ncancellations: {figures} in {time.monotonic() - started:.1f} s")
    assert figures["inc_cancelled"] + figures["tx_cancelled"] >= CANCELLATIONS


def test_a_cancelled_long_statement_ends_at_once_and_its_connection_comes_back(
    tagged_url: str, postgres_server: PostgresServer
) -> None:
    async def test() -> None:
        async with await _open(tagged_url, max_open=2) as db:
            backend = _backend(db)

            async def sleeper() -> None:
                async with backend.executor.transaction() as bound:
                    await bound.run(Step("SELECT pg_sleep(30)"))

            task = asyncio.ensure_future(sleeper())
            await asyncio.sleep(0.3)
            started = time.monotonic()
            task.cancel()
            await asyncio.wait([task], timeout=6)
            assert task.cancelled()
            assert time.monotonic() - started < 1.0
            stats = await _all_returned(db)
            assert stats["pool_size"] >= 1
            server = await _server_connections(postgres_server.admin_url, tagged_url)
            assert all(state == "idle" for _, state in server), server
            await _burst(db, 2)

    _run(test)


def test_a_statement_cancelled_twice_discards_its_connection_without_hanging(
    tagged_url: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="psycopg")

    async def test() -> None:
        async with await _open(tagged_url, max_open=2) as db:
            backend = _backend(db)

            async def sleeper() -> None:
                async with backend.executor.transaction() as bound:
                    await bound.run(Step("SELECT pg_sleep(30)"))

            task = asyncio.ensure_future(sleeper())
            await asyncio.sleep(0.3)
            started = time.monotonic()
            task.cancel()
            await asyncio.sleep(0)  # psycopg is now cancelling on the server: interrupt it
            task.cancel()
            await asyncio.wait([task], timeout=6)
            assert task.cancelled()
            assert time.monotonic() - started < 1.0
            assert "query cancellation interrupted" in caplog.text  # closed, not reused
            await _all_returned(db)
            await _burst(db, 2)
            value = await _token(db)
            assert (await db.increment_token_usage(value)).request_count == 1

    _run(test)


# -- killed connections -------------------------------------------------------------------


def test_killed_connections_fail_calls_with_database_error_and_the_store_recovers(
    tagged_url: str, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    figures: dict[str, Any] = {"ok": 0, "failed": 0, "killed": 0, "kills": 0}
    errors: list[BaseException] = []
    slowest = [0.0]

    async def test() -> None:
        async with await _open(tagged_url, max_open=4, pool_timeout=3) as db:
            value = await _token(db)
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        await asyncio.wait_for(db.increment_token_usage(value), 10)
                        figures["ok"] += 1
                    except DatabaseError:
                        figures["failed"] += 1
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    slowest[0] = max(slowest[0], time.monotonic() - started)

            async def killer() -> None:
                async with await psycopg.AsyncConnection.connect(
                    postgres_server.admin_url, autocommit=True
                ) as admin:
                    name = conninfo.conninfo_to_dict(tagged_url)["application_name"]
                    for _ in range(3):
                        await asyncio.sleep(0.5)
                        cursor = await admin.execute(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = %s",
                            (name,),
                        )
                        row = await cursor.fetchone()
                        figures["killed"] += int(row[0]) if row else 0
                        figures["kills"] += 1
                    await asyncio.sleep(0.5)
                stop.set()

            await asyncio.gather(killer(), *(worker() for _ in range(12)))
            assert not errors, errors
            for _ in range(20):  # recovered: every call succeeds again
                await db.increment_token_usage(value)
            await db.health_check()
            await _all_returned(db)

    started = time.monotonic()
    _run(test)
    with capsys.disabled():
        print(
            f"\nkills: {figures}, slowest call {slowest[0]:.2f} s, "
            f"in {time.monotonic() - started:.1f} s"
        )
    assert figures["killed"] >= 3 and figures["failed"] >= 1 and figures["ok"] > 0
    assert slowest[0] < 5.0


# -- closing ------------------------------------------------------------------------------


def test_close_leaves_no_thread_running(postgres_url: str) -> None:
    before = set(threading.enumerate())

    async def test() -> None:
        db = await _open(postgres_url)
        value = await _token(db)
        await asyncio.gather(*(db.increment_token_usage(value) for _ in range(20)))
        backend = _backend(db)
        await db.close()
        await db.close()  # idempotent, and so is the backend's own
        await backend.close()
        with pytest.raises(DatabaseError):
            await db.health_check()

    _run(test)
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, [thread.name for thread in left]
