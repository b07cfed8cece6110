"""Coalesced increments on PostgreSQL (``FullConfig(coalesce_increments=True)``): limits
exact under threads and processes, each caller its own count or its own refusal, a failed
batch failing each of its callers, the wait bounded, ``close()`` draining."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import attrs
import psycopg
import pytest

from llm_proxy_db import (
    DB,
    MAX_COUNT,
    DatabaseError,
    FullConfig,
    Project,
    ProjectInactiveError,
    Token,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    generate_token,
    new_from_full_config,
    utcnow,
)
from llm_proxy_db.sql import StoreLogic

ATTEMPTS = 5000
LIMIT = 1000


def _config(url: str, **changes: Any) -> FullConfig:
    settings: dict[str, Any] = dict(
        driver="postgres",
        database_url=url,
        coalesce_increments=True,
        max_open_conns=4,
        max_idle_conns=2,
    )
    settings.update(changes)
    return FullConfig(**settings)


@pytest.fixture
def db(postgres_url: str) -> Iterator[DB]:
    with new_from_full_config(_config(postgres_url)) as opened:
        yield opened


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of distinct tokens of each batch statement sent."""
    sizes: list[int] = []
    original = StoreLogic.increment_batch

    def spied(self: StoreLogic, wanted: dict[str, int]) -> Any:
        sizes.append(sum(wanted.values()))
        return original(self, wanted)

    monkeypatch.setattr(StoreLogic, "increment_batch", spied)
    return sizes


def _coalesced(db: DB) -> Any:
    """The backend's combiner of increments (private: this test looks inside)."""
    return getattr(db, "_backend")._coalesced  # noqa: B009


def _project(db: DB, name: str = "coalesce") -> Project:
    return db.create_project(Project(name=name, openai_api_key=f"sk-{name}-upstream"))


def _in_threads(threads: int, work: Callable[[int], None]) -> None:
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait(timeout=30)
            work(index)
        except BaseException as exc:  # reported below
            failures.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []


def _race(db: DB, token: str, threads: int, attempts: int) -> tuple[list[int], int, list[str]]:
    counts: list[int] = []
    refused = [0]
    other: list[str] = []
    per_thread = attempts // threads

    def work(index: int) -> None:
        for _ in range(per_thread + (index < attempts % threads)):
            try:
                counts.append(db.increment_token_usage(token).request_count)
            except TokenLimitReachedError:
                refused[0] += 1
            except DatabaseError as exc:
                other.append(f"{type(exc).__name__}: {exc}")

    _in_threads(threads, work)
    return counts, refused[0], other


@pytest.mark.parametrize("threads", [8, 32])
def test_threads_never_overrun_a_limit_and_each_gets_its_own_count(
    db: DB, batches: list[int], threads: int
) -> None:
    token = db.create_token(Token(project_id=_project(db).id, max_requests=LIMIT)).token

    counts, refused, other = _race(db, token, threads, ATTEMPTS)

    assert other == []
    assert len(counts) == LIMIT and refused == ATTEMPTS - LIMIT
    assert sorted(counts) == list(range(1, LIMIT + 1))  # each count handed out once
    assert db.get_token_by_id(token).request_count == LIMIT
    assert batches and max(batches) > 1  # calls were combined


def _process_worker(url: str, token: str, threads: int, attempts: int, results: Any) -> None:
    try:
        with new_from_full_config(_config(url, auto_migrate=False)) as db:
            results.put(_race(db, token, threads, attempts))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(([], 0, [f"{type(exc).__name__}: {exc}"]))


def test_two_processes_of_threads_never_overrun_a_limit(db: DB, postgres_url: str) -> None:
    token = db.create_token(Token(project_id=_project(db).id, max_requests=LIMIT)).token
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=_process_worker,
            args=(postgres_url, token, 16, ATTEMPTS // 2, results),
            daemon=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    counts = [count for part, _, _ in collected for count in part]
    assert [error for _, _, other in collected for error in other] == []
    assert sum(refused for _, refused, _ in collected) == ATTEMPTS - LIMIT
    assert sorted(counts) == list(range(1, LIMIT + 1))
    assert db.get_token_by_id(token).request_count == LIMIT


def test_mixed_tokens_in_one_batch_each_get_the_precise_refusal(db: DB, batches: list[int]) -> None:
    project = _project(db)
    closed = _project(db, "closed")
    past = utcnow() - timedelta(hours=1)

    def token(**fields: Any) -> str:
        return db.create_token(Token(project_id=project.id, **fields)).token

    expected: dict[str, type[Exception] | None] = {
        token(): None,
        token(max_requests=2): None,  # the first two of its callers only
        token(max_requests=1, request_count=1): TokenLimitReachedError,
        token(is_active=False): TokenInactiveError,
        token(expires_at=past, created_at=past - timedelta(days=1)): TokenExpiredError,
        token(request_count=MAX_COUNT): DatabaseError,  # would pass its maximum
        generate_token(): TokenNotFoundError,
        db.create_token(Token(project_id=closed.id)).token: ProjectInactiveError,
    }
    db.update_project(attrs.evolve(closed, is_active=False))
    tokens = list(expected)
    per_token = 4
    outcomes: dict[str, list[str]] = {t: [] for t in tokens}
    lock = threading.Lock()

    def work(index: int) -> None:
        item = tokens[index % len(tokens)]
        for _ in range(per_token):
            try:
                counted = db.increment_token_usage(item)
                outcome = f"ok {counted.request_count}"
            except DatabaseError as exc:
                outcome = type(exc).__name__
                if type(exc) is DatabaseError:
                    assert "would pass its maximum" in str(exc)
            with lock:
                outcomes[item].append(outcome)

    _in_threads(len(tokens) * 2, work)

    for item, error in expected.items():
        got = Counter(outcomes[item])
        if error is None and item == tokens[1]:  # limited to 2: two counts, then refusals
            assert got == Counter({"ok 1": 1, "ok 2": 1, "TokenLimitReachedError": 6})
        elif error is None:
            assert sorted(got) == [f"ok {n}" for n in range(1, 2 * per_token + 1)]
        else:
            assert got == Counter({error.__name__: 2 * per_token}), item
    assert db.get_token_by_id(tokens[0]).request_count == 2 * per_token
    assert max(batches) > 1


def test_authorize_coalesced_hands_each_caller_its_own_project(db: DB, batches: list[int]) -> None:
    projects = [_project(db, f"tenant-{n}") for n in range(4)]
    tokens = [db.create_token(Token(project_id=p.id)).token for p in projects for _ in range(2)]
    owner = {t.token: t.project_id for t in db.list_tokens()}
    by_id = {p.id: p for p in projects}
    counted: list[tuple[str, int]] = []

    def work(index: int) -> None:
        token = tokens[index % len(tokens)]
        for turn in range(25):
            if turn % 2:
                counted.append((token, db.increment_token_usage(token).request_count))
                continue
            authorization = db.authorize(token)
            assert authorization.token.token == token
            assert authorization.project == by_id[owner[token]]  # its upstream key included
            counted.append((token, authorization.token.request_count))

    _in_threads(32, work)

    for token in tokens:
        counts = sorted(count for item, count in counted if item == token)
        assert counts == list(range(1, len(counts) + 1))
        assert db.get_token_by_id(token).request_count == len(counts)
    assert max(batches) > 1


def _backend_pid_waiting(admin: psycopg.Connection[Any], prefix: str) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND pid <> pg_backend_pid()",
            (prefix + "%",),
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)
    pytest.fail(f"no statement {prefix!r} waited for the lock")


def test_a_failed_batch_fails_each_of_its_callers_and_counts_nothing(
    postgres_url: str, batches: list[int]
) -> None:
    config = _config(postgres_url, busy_timeout=timedelta(seconds=30))
    with new_from_full_config(config) as db:
        token = db.create_token(Token(project_id=_project(db).id)).token
        results: list[str] = []
        with (
            psycopg.connect(postgres_url, autocommit=True) as holder,
            psycopg.connect(postgres_url, autocommit=True) as admin,
        ):
            holder.execute("BEGIN")
            holder.execute("SELECT 1 FROM tokens WHERE token = %s FOR UPDATE", (token,))

            def call() -> None:
                try:
                    db.increment_token_usage(token)
                    results.append("ok")
                except DatabaseError as exc:
                    results.append(type(exc).__name__)
                    assert "may or may not have been counted" in str(exc)

            first = threading.Thread(target=call)
            first.start()  # the lone call: the plain statement, waiting for the lock
            plain = _backend_pid_waiting(admin, "UPDATE tokens")
            waiting = [threading.Thread(target=call) for _ in range(7)]
            for thread in waiting:
                thread.start()
            combiner = _coalesced(db)._combiner
            deadline = time.monotonic() + 20
            while len(combiner._pending) < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(combiner._pending) == 7
            admin.execute("SELECT pg_terminate_backend(%s)", (plain,))
            first.join(timeout=20)
            # The seven that waited go as one batch, which waits for the lock: kill it too.
            batch = _backend_pid_waiting(admin, "WITH wanted")
            admin.execute("SELECT pg_terminate_backend(%s)", (batch,))
            for thread in waiting:
                thread.join(timeout=20)
            holder.execute("ROLLBACK")

        assert results == ["TransientError"] * 8
        assert batches == [7]
        assert db.get_token_by_id(token).request_count == 0  # nothing counted
        assert db.increment_token_usage(token).request_count == 1  # and it goes on


def test_no_caller_waits_longer_than_one_round_trip_and_one_batch(
    db: DB, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = db.create_token(Token(project_id=_project(db).id)).token
    coalesced = _coalesced(db)
    round_trips: list[float] = []
    waits: list[float] = []
    combiner = coalesced._combiner
    for name in ("_run_one", "_run_batch"):
        original = getattr(combiner, name)

        def timed(item: Any, original: Any = original) -> Any:
            started = time.perf_counter()
            try:
                return original(item)
            finally:
                round_trips.append(time.perf_counter() - started)

        monkeypatch.setattr(combiner, name, timed)

    def work(index: int) -> None:
        for _ in range(40):
            started = time.perf_counter()
            db.increment_token_usage(token)
            waits.append(time.perf_counter() - started)

    _in_threads(32, work)

    longest = max(round_trips)
    print(f"\nlongest wait {max(waits) * 1000:.1f} ms, longest round trip {longest * 1000:.1f} ms")
    assert max(waits) <= 2 * longest + 0.05  # the one in flight, then its own, and slack
    assert db.get_token_by_id(token).request_count == 32 * 40


def test_calls_in_a_transaction_are_not_coalesced_and_close_drains(
    db: DB, batches: list[int]
) -> None:
    token = db.create_token(Token(project_id=_project(db).id)).token
    with db.transaction() as tx:
        assert tx.increment_token_usage(token).request_count == 1
        assert tx.authorize(token).token.request_count == 2
    assert batches == []

    done: list[str] = []

    def work(index: int) -> None:
        while True:
            try:
                db.increment_token_usage(token)
            except DatabaseError as exc:
                assert "closed" in str(exc)
                return
            done.append("ok")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    db.close()  # waits for the calls in flight; later ones are refused
    for worker in workers:
        worker.join(timeout=20)
    assert not any(worker.is_alive() for worker in workers)
    with new_from_full_config(_config(db.config.database_url or "")) as again:
        assert again.get_token_by_id(token).request_count == 2 + len(done)
