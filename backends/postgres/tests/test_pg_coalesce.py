"""Coalesced increments on PostgreSQL (``FullConfig(coalesce_increments=True)``): limits
exact under threads and processes, each caller its own count or its own refusal, a failed
batch failing each of its callers, the wait bounded, ``close()`` draining."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

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
    config,
    in_threads,
    new_project,
    outcome_recorded,
    race_in_processes,
    race_threads,
    row_locked,
    spy_batches,
    threads_racing,
    wait_until,
)

from llm_proxy_db import (
    DB,
    MAX_COUNT,
    DatabaseError,
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


@pytest.fixture
def db(postgres_url: str) -> Iterator[DB]:
    with new_from_full_config(config(postgres_url)) as opened:
        yield opened


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of requests of each batch statement sent."""
    return spy_batches(monkeypatch)


def _project(db: DB, name: str = "coalesce") -> Project:
    return db.create_project(new_project(name))


@pytest.mark.parametrize("threads", [8, 32])
def test_threads_never_overrun_a_limit_and_each_gets_its_own_count(
    db: DB, batches: list[int], threads: int
) -> None:
    token = db.create_token(Token(project_id=_project(db).id, max_requests=LIMIT)).token

    race = race_threads(db, token, threads, ATTEMPTS)

    assert_exactly_the_limit(race, db.get_token_by_id(token).request_count)
    assert batches and max(batches) > 1  # calls were combined


def test_two_processes_of_threads_never_overrun_a_limit(db: DB, postgres_url: str) -> None:
    token = db.create_token(Token(project_id=_project(db).id, max_requests=LIMIT)).token

    race = race_in_processes(threads_racing, postgres_url, token, callers=16)

    assert_exactly_the_limit(race, db.get_token_by_id(token).request_count)


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

    in_threads(len(tokens) * 2, work)

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

    in_threads(32, work)

    for token in tokens:
        counts = sorted(count for item, count in counted if item == token)
        assert counts == list(range(1, len(counts) + 1))
        assert db.get_token_by_id(token).request_count == len(counts)
    assert max(batches) > 1


def test_a_failed_batch_fails_each_of_its_callers_and_counts_nothing(
    postgres_url: str, batches: list[int]
) -> None:
    with new_from_full_config(config(postgres_url, busy_timeout=timedelta(seconds=30))) as db:
        token = db.create_token(Token(project_id=_project(db).id)).token
        outcomes: list[str] = []

        def call() -> None:
            with outcome_recorded(outcomes):
                db.increment_token_usage(token)

        with row_locked(postgres_url, token) as row:
            first = threading.Thread(target=call)
            first.start()  # the lone call: the plain statement, waiting for the lock
            plain = row.waiting("UPDATE tokens")
            waiting = [threading.Thread(target=call) for _ in range(BATCH)]
            for thread in waiting:
                thread.start()
            combiner = combiner_of(db)
            wait_until(lambda: len(combiner._pending) == BATCH, f"{BATCH} callers waiting")
            row.terminate(plain)
            first.join(timeout=20)
            # Those that waited go as one batch, which waits for the lock: kill it too.
            row.terminate(row.waiting("WITH wanted"))
            for thread in waiting:
                thread.join(timeout=20)

        assert_the_batch_failed_each_caller(outcomes, batches)
        assert db.get_token_by_id(token).request_count == 0  # nothing counted
        assert db.increment_token_usage(token).request_count == 1  # and it goes on


def test_no_caller_waits_longer_than_one_round_trip_and_one_batch(
    db: DB, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = db.create_token(Token(project_id=_project(db).id)).token
    round_trips: list[float] = []
    waits: list[float] = []
    combiner = combiner_of(db)
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

    in_threads(32, work)

    assert_wait_bounded(waits, round_trips)
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
    with new_from_full_config(config(db.config.database_url or "")) as again:
        assert again.get_token_by_id(token).request_count == 2 + len(done)
