"""Helpers of the coalescing tests, sync (``test_pg_coalesce``) and asyncio
(``test_pg_async_coalesce``): the configuration, the spy on batch statements, races of
threads or tasks and their exact-limit check, a locked token row whose waiting statements
can be killed, the wait bound, and the bodies of spawned processes.

The process bodies live here (not in a test module) so a ``spawn`` child imports only this
small module and the package, never pytest's collection of a test file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import psycopg

from llm_proxy_db import (
    DB,
    DatabaseError,
    FullConfig,
    Project,
    TokenLimitReachedError,
    aio,
    new_from_full_config,
)
from llm_proxy_db.sql import StoreLogic
from llm_proxy_db_postgres._async_backend import AsyncPostgresBackend
from tests.fixtures.processes import run_processes

if TYPE_CHECKING:
    import pytest

ATTEMPTS = 5000
LIMIT = 1000
PROCESSES = 2
BATCH = 7
"""How many callers wait behind the lone (plain) call in the failed-batch tests."""
_PATIENCE_S = 20.0
_JOIN_S = 120.0
T = TypeVar("T")


def config(url: str, **changes: Any) -> FullConfig:
    """Coalesced increments on ``url``, a small pool, then ``changes``."""
    settings: dict[str, Any] = dict(
        driver="postgres",
        database_url=url,
        coalesce_increments=True,
        max_open_conns=4,
        max_idle_conns=2,
    )
    settings.update(changes)
    return FullConfig(**settings)


async def open_async(url: str, **changes: Any) -> aio.AsyncDB:
    """An ``AsyncDB`` of :func:`config`, checked to be the native backend's combiner."""
    db = await aio.new_from_full_config(config(url, **changes))
    assert isinstance(db._backend, AsyncPostgresBackend)
    assert db._backend._coalesced is not None  # the combiner is wired
    return db


def combiner_of(db: DB | aio.AsyncDB) -> Any:
    """The backend's ``Combiner`` or ``AsyncCombiner`` (private: the tests look inside)."""
    return getattr(db, "_backend")._coalesced._combiner  # noqa: B009


def spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of requests of each batch statement sent from now on (for a fixture)."""
    sizes: list[int] = []
    original = StoreLogic.increment_batch

    def spied(self: StoreLogic, wanted: dict[str, int]) -> Any:
        sizes.append(sum(wanted.values()))
        return original(self, wanted)

    monkeypatch.setattr(StoreLogic, "increment_batch", spied)
    return sizes


def new_project(name: str) -> Project:
    """A project to create, with an upstream key of its own."""
    return Project(name=name, openai_api_key=f"sk-{name}-upstream")


def wait_until(found: Callable[[], T], what: str) -> T:
    """Poll ``found`` until it returns something true (at most 20 s); that."""
    deadline = time.monotonic() + _PATIENCE_S
    while not (result := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {_PATIENCE_S:.0f} s")
        time.sleep(0.01)
    return result


# -- races on one token limited to LIMIT, and their check --------------------------------


@attrs.define
class Race:
    """What the callers of a race got: their counts, how many were refused, other errors."""

    counts: list[int] = attrs.Factory(list)
    refused: int = 0
    errors: list[str] = attrs.Factory(list)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Count a refusal of the block or record any other ``DatabaseError`` it raises."""
        try:
            yield
        except TokenLimitReachedError:
            self.refused += 1
        except DatabaseError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    @classmethod
    def of_all(cls, races: Iterable[Race]) -> Race:
        """The races of several processes as one."""
        whole = cls()
        for race in races:
            whole.counts += race.counts
            whole.refused += race.refused
            whole.errors += race.errors
        return whole


def assert_exactly_the_limit(race: Race, stored: int) -> None:
    """LIMIT callers counted, each a count 1..LIMIT of its own, the others refused; the
    token's stored ``request_count`` is LIMIT."""
    assert race.errors == [], race.errors[:5]
    outcomes = (len(race.counts), race.refused)
    assert outcomes == (LIMIT, ATTEMPTS - LIMIT), f"(counted, refused) = {outcomes}"
    repeated = sorted(count for count, times in Counter(race.counts).items() if times > 1)
    assert sorted(race.counts) == list(range(1, LIMIT + 1)), (
        f"counts handed out more than once: {repeated[:10]}; "
        f"lowest {min(race.counts, default=None)}, highest {max(race.counts, default=None)}"
    )
    assert stored == LIMIT, f"stored request_count {stored}, not {LIMIT}"


def _share(index: int, callers: int, attempts: int) -> int:
    """Caller ``index``'s part of ``attempts`` spread over ``callers``."""
    return attempts // callers + (index < attempts % callers)


def in_threads(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work(index)`` in ``threads`` threads started together; fail on any error."""
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
        worker.join(timeout=_JOIN_S)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []


def race_threads(db: DB, token: str, threads: int, attempts: int) -> Race:
    """``attempts`` increments of ``token`` spread over ``threads`` threads."""
    race = Race()

    def work(index: int) -> None:
        for _ in range(_share(index, threads, attempts)):
            with race.attempt():
                race.counts.append(db.increment_token_usage(token).request_count)

    in_threads(threads, work)
    return race


async def race_tasks(db: aio.AsyncDB, token: str, tasks: int, attempts: int) -> Race:
    """``attempts`` increments of ``token`` spread over ``tasks`` tasks of this loop."""
    race = Race()

    async def work(index: int) -> None:
        for _ in range(_share(index, tasks, attempts)):
            with race.attempt():
                race.counts.append((await db.increment_token_usage(token)).request_count)

    await asyncio.gather(*(work(i) for i in range(tasks)))
    return race


# -- the bodies of spawned processes, and their scaffold ---------------------------------

Worker = Callable[[str, str, int, int, Any, Any], None]
"""``worker(url, token, callers, attempts, barrier, results)``: puts one ``Race``."""


def _report(results: Any, race: Callable[[], Race]) -> None:
    try:
        outcome = race()
    except BaseException as exc:  # reported to the parent, which fails the test
        outcome = Race(errors=[f"in process: {type(exc).__name__}: {exc}"])
    results.put(outcome)


def threads_racing(
    url: str, token: str, threads: int, attempts: int, barrier: Any, results: Any
) -> None:
    """A process's own ``DB``; once every process is ready, :func:`race_threads`."""

    def race() -> Race:
        with new_from_full_config(config(url, auto_migrate=False)) as db:
            barrier.wait(timeout=30)
            return race_threads(db, token, threads, attempts)

    _report(results, race)


def tasks_racing(
    url: str, token: str, tasks: int, attempts: int, barrier: Any, results: Any
) -> None:
    """A process's own event loop and ``AsyncDB``; once every process is ready,
    :func:`race_tasks`."""

    async def race() -> Race:
        db = await open_async(url, auto_migrate=False)
        try:
            await asyncio.to_thread(barrier.wait, 30)
            return await race_tasks(db, token, tasks, attempts)
        finally:
            await db.close()

    _report(results, lambda: asyncio.run(race()))


def race_in_processes(worker: Worker, url: str, token: str, callers: int) -> Race:
    """ATTEMPTS increments of ``token`` by PROCESSES spawned processes of ``worker``, each
    with ``callers`` threads or tasks, started together; their races as one."""
    args = (url, token, callers, ATTEMPTS // PROCESSES)
    collected: list[Race] = run_processes(worker, [args] * PROCESSES, within_s=_JOIN_S)
    print(f"\ncounted per process: {[len(race.counts) for race in collected]}")
    return Race.of_all(collected)


# -- a batch killed while it waits for a row lock ----------------------------------------


class LockedRow:
    """A token's row locked by a transaction of its own (increments of it wait), and an
    admin connection that finds and kills the statements waiting for the lock."""

    def __init__(self, admin: psycopg.Connection[Any]) -> None:
        self._admin = admin

    def waiting(self, prefix: str) -> int:
        """The server pid of the statement starting with ``prefix`` that waits for a lock."""

        def found() -> int:
            row = self._admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                (prefix + "%",),
            ).fetchone()
            return 0 if row is None else int(row[0])

        return wait_until(found, f"a statement {prefix!r} waiting for the lock")

    def terminate(self, pid: int) -> None:
        """Kill the server process ``pid`` (its client sees the connection lost)."""
        self._admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@contextmanager
def row_locked(url: str, token: str) -> Iterator[LockedRow]:
    """``token``'s row locked until the block ends (then rolled back)."""
    with (
        psycopg.connect(url, autocommit=True) as holder,
        psycopg.connect(url, autocommit=True) as admin,
    ):
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM tokens WHERE token = %s FOR UPDATE", (token,))
        try:
            yield LockedRow(admin)
        finally:
            holder.execute("ROLLBACK")


@contextmanager
def outcome_recorded(outcomes: list[str]) -> Iterator[None]:
    """Append ``"ok"`` or the name of the ``DatabaseError`` the block raised, with its
    message unless that says the request may or may not have been counted (in a thread
    too, where an assertion would be lost, the outcome shows it)."""
    try:
        yield
    except DatabaseError as exc:
        explained = "may or may not have been counted" in str(exc)
        outcomes.append(type(exc).__name__ if explained else f"{type(exc).__name__}: {exc}")
    else:
        outcomes.append("ok")


def assert_the_batch_failed_each_caller(outcomes: list[str], batches: list[int]) -> None:
    """The lone call and the BATCH callers that waited behind it each got a
    ``TransientError``, the BATCH in one batch statement."""
    assert outcomes == ["TransientError"] * (1 + BATCH), outcomes
    assert batches == [BATCH], batches


# -- the wait bound -----------------------------------------------------------------------


def assert_wait_bounded(waits: list[float], round_trips: list[float]) -> None:
    """No caller waited longer than the round trip in flight, then its own batch (with
    50 ms of slack for a loaded machine)."""
    longest = max(round_trips)
    print(f"\nlongest wait {max(waits) * 1000:.1f} ms, longest round trip {longest * 1000:.1f} ms")
    assert max(waits) <= 2 * longest + 0.05, (max(waits), longest)
