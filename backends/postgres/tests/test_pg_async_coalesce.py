"""Coalesced increments on the native asyncio PostgreSQL backend
(``FullConfig(coalesce_increments=True)``): limits exact under concurrent tasks and across
processes, each caller its own count, refusal or project, a failed batch failing each of
its callers, the wait bounded, random cancellations never losing or double-counting
another caller's result, calls in a transaction left alone, ``close()`` draining."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import attrs
import pytest
from _coalescing import (
    ATTEMPTS,
    BATCH,
    LIMIT,
    assert_exactly_the_limit,
    assert_the_batch_failed_each_caller,
    assert_wait_bounded,
    combiner_of,
    new_project,
    open_async,
    outcome_recorded,
    race_in_processes,
    race_tasks,
    row_locked,
    spy_batches,
    tasks_racing,
    wait_until,
)

from llm_proxy_db import (
    MAX_COUNT,
    DatabaseError,
    Project,
    ProjectInactiveError,
    Token,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    aio,
    generate_token,
    utcnow,
)

T = TypeVar("T")


def _run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())  # type: ignore[arg-type]


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of requests of each batch statement sent."""
    return spy_batches(monkeypatch)


async def _project(db: aio.AsyncDB, name: str = "coalesce") -> Project:
    return await db.create_project(new_project(name))


async def _token(db: aio.AsyncDB, **fields: Any) -> str:
    project = await _project(db)
    return (await db.create_token(Token(project_id=project.id, **fields))).token


@pytest.mark.parametrize("tasks", [64, 200])
def test_tasks_never_overrun_a_limit_and_each_gets_its_own_count(
    postgres_url: str, batches: list[int], tasks: int
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            token = await _token(db, max_requests=LIMIT)

            race = await race_tasks(db, token, tasks, ATTEMPTS)

            assert_exactly_the_limit(race, (await db.get_token_by_id(token)).request_count)
            assert batches and max(batches) > 1  # calls were combined
        finally:
            await db.close()

    _run(test)


def test_two_processes_of_tasks_never_overrun_a_limit(postgres_url: str) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            token = await _token(db, max_requests=LIMIT)

            race = await asyncio.to_thread(
                race_in_processes, tasks_racing, postgres_url, token, callers=100
            )

            assert_exactly_the_limit(race, (await db.get_token_by_id(token)).request_count)
        finally:
            await db.close()

    _run(test)


def test_mixed_tokens_in_one_batch_each_get_the_precise_refusal(
    postgres_url: str, batches: list[int]
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            project = await _project(db)
            closed = await _project(db, "closed")
            past = utcnow() - timedelta(hours=1)

            async def token(project: Project = project, **fields: Any) -> str:
                return (await db.create_token(Token(project_id=project.id, **fields))).token

            expected: dict[str, type[Exception] | None] = {
                await token(): None,
                await token(max_requests=2): None,  # the first two of its callers only
                await token(max_requests=1, request_count=1): TokenLimitReachedError,
                await token(is_active=False): TokenInactiveError,
                await token(expires_at=past, created_at=past - timedelta(days=1)): (
                    TokenExpiredError
                ),
                await token(request_count=MAX_COUNT): DatabaseError,  # would pass its maximum
                generate_token(): TokenNotFoundError,
                await token(closed): ProjectInactiveError,
            }
            await db.update_project(attrs.evolve(closed, is_active=False))
            tokens = list(expected)
            per_task = 4
            outcomes: dict[str, list[str]] = {t: [] for t in tokens}

            async def work(index: int) -> None:
                item = tokens[index % len(tokens)]
                for _ in range(per_task):
                    try:
                        if index % 2:
                            counted = await db.increment_token_usage(item)
                        else:
                            counted = (await db.authorize(item)).token
                        outcome = f"ok {counted.request_count}"
                    except DatabaseError as exc:
                        outcome = type(exc).__name__
                        if type(exc) is DatabaseError:
                            assert "would pass its maximum" in str(exc)
                    outcomes[item].append(outcome)

            await asyncio.gather(*(work(i) for i in range(len(tokens) * 4)))

            for item, error in expected.items():
                got = Counter(outcomes[item])
                if error is None and item == tokens[1]:  # limited to 2: two counts, refusals
                    assert got == Counter({"ok 1": 1, "ok 2": 1, "TokenLimitReachedError": 14})
                elif error is None:
                    assert sorted(got) == sorted(f"ok {n}" for n in range(1, 4 * per_task + 1))
                else:
                    assert got == Counter({error.__name__: 4 * per_task}), item
            assert (await db.get_token_by_id(tokens[0])).request_count == 4 * per_task
            assert max(batches) > 1
        finally:
            await db.close()

    _run(test)


def test_authorize_coalesced_hands_each_caller_its_own_project(
    postgres_url: str, batches: list[int]
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            projects = [await _project(db, f"tenant-{n}") for n in range(4)]
            tokens = [
                (await db.create_token(Token(project_id=p.id))).token
                for p in projects
                for _ in range(2)
            ]
            owner = {t.token: t.project_id for t in await db.list_tokens()}
            by_id = {p.id: p for p in projects}
            counted: list[tuple[str, int]] = []

            async def work(index: int) -> None:
                token = tokens[index % len(tokens)]
                for turn in range(20):
                    if turn % 2:
                        usage = await db.increment_token_usage(token)
                        counted.append((token, usage.request_count))
                        continue
                    authorization = await db.authorize(token)
                    assert authorization.token.token == token
                    assert authorization.project == by_id[owner[token]]  # upstream key too
                    counted.append((token, authorization.token.request_count))

            await asyncio.gather(*(work(i) for i in range(64)))

            for token in tokens:
                counts = sorted(count for item, count in counted if item == token)
                assert counts == list(range(1, len(counts) + 1))
                assert (await db.get_token_by_id(token)).request_count == len(counts)
            assert max(batches) > 1
        finally:
            await db.close()

    _run(test)


def test_a_failed_batch_fails_each_of_its_callers_and_counts_nothing(
    postgres_url: str, batches: list[int]
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url, busy_timeout=timedelta(seconds=30))
        try:
            token = await _token(db)
            outcomes: list[str] = []

            async def call() -> None:
                with outcome_recorded(outcomes):
                    await db.increment_token_usage(token)

            with row_locked(postgres_url, token) as row:
                first = asyncio.ensure_future(call())  # the lone call: the plain statement
                plain = await asyncio.to_thread(row.waiting, "UPDATE tokens")
                waiting = [asyncio.ensure_future(call()) for _ in range(BATCH)]
                combiner = combiner_of(db)
                await asyncio.to_thread(
                    wait_until, lambda: len(combiner._pending) == BATCH, f"{BATCH} waiting"
                )
                row.terminate(plain)
                await asyncio.wait_for(first, timeout=20)
                # Those that waited go as one batch, which waits for the lock: kill it too.
                row.terminate(await asyncio.to_thread(row.waiting, "WITH wanted"))
                await asyncio.wait_for(asyncio.gather(*waiting), timeout=20)

            assert_the_batch_failed_each_caller(outcomes, batches)
            assert (await db.get_token_by_id(token)).request_count == 0  # nothing counted
            assert (await db.increment_token_usage(token)).request_count == 1  # it goes on
        finally:
            await db.close()

    _run(test)


def test_no_caller_waits_longer_than_one_round_trip_and_one_batch(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            token = await _token(db)
            round_trips: list[float] = []
            waits: list[float] = []
            combiner = combiner_of(db)
            for name in ("_run_one", "_run_batch"):
                original = getattr(combiner, name)

                async def timed(item: Any, original: Any = original) -> Any:
                    started = time.perf_counter()
                    try:
                        return await original(item)
                    finally:
                        round_trips.append(time.perf_counter() - started)

                monkeypatch.setattr(combiner, name, timed)

            async def work() -> None:
                for _ in range(40):
                    started = time.perf_counter()
                    await db.increment_token_usage(token)
                    waits.append(time.perf_counter() - started)

            await asyncio.gather(*(work() for _ in range(32)))

            assert_wait_bounded(waits, round_trips)
            assert (await db.get_token_by_id(token)).request_count == 32 * 40
        finally:
            await db.close()

    _run(test)


def test_random_cancellations_never_lose_or_double_count_the_others(
    postgres_url: str, batches: list[int]
) -> None:
    rng = random.Random(14)

    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            token = await _token(db)
            acknowledged: list[int] = []
            cancelled = 0
            for _ in range(6):
                calls = [asyncio.ensure_future(db.increment_token_usage(token)) for _ in range(150)]
                for _ in range(40):  # cancellations at random points of the rounds
                    await asyncio.sleep(rng.random() * 0.004)
                    rng.choice(calls).cancel()
                await asyncio.wait(calls)
                for call in calls:
                    if call.cancelled():
                        cancelled += 1
                    else:
                        acknowledged.append(call.result().request_count)
            counted = (await db.get_token_by_id(token)).request_count
            assert len(set(acknowledged)) == len(acknowledged)  # no count handed out twice
            assert max(acknowledged) <= counted
            assert len(acknowledged) <= counted <= len(acknowledged) + cancelled
            assert cancelled > 0 and max(batches) > 1
            combiner = combiner_of(db)
            assert combiner._pending == [] and combiner._calls == 0
            assert (await db.increment_token_usage(token)).request_count == counted + 1
        finally:
            await db.close()

    _run(test)


def test_a_lone_call_is_the_plain_one_and_transactions_are_not_coalesced(
    postgres_url: str, batches: list[int]
) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        try:
            token = await _token(db)
            for expected in range(1, 6):  # one after another: never a batch
                assert (await db.increment_token_usage(token)).request_count == expected
            assert (await db.authorize(token)).token.request_count == 6
            async with db.transaction() as tx:
                assert (await tx.increment_token_usage(token)).request_count == 7
                assert (await tx.authorize(token)).token.request_count == 8
            assert batches == []
        finally:
            await db.close()

    _run(test)


def test_close_drains_the_calls_in_flight(postgres_url: str, batches: list[int]) -> None:
    async def test() -> None:
        db = await open_async(postgres_url)
        token = await _token(db)
        done: list[int] = []
        refused: list[str] = []

        async def work() -> None:
            while True:
                try:
                    done.append((await db.increment_token_usage(token)).request_count)
                except DatabaseError as exc:
                    refused.append(str(exc))
                    return

        workers = [asyncio.ensure_future(work()) for _ in range(32)]
        await asyncio.sleep(0.3)
        await db.close()  # waits for the calls in flight; later ones are refused
        await asyncio.wait_for(asyncio.gather(*workers), timeout=20)
        assert len(refused) == 32 and all("closed" in reason for reason in refused)
        assert max(batches) > 1

        again = await open_async(postgres_url)
        try:
            assert (await again.get_token_by_id(token)).request_count == len(done)
            assert sorted(done) == list(range(1, len(done) + 1))
        finally:
            await again.close()

    _run(test)
