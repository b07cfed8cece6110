"""``AuditWriter`` and ``AsyncAuditWriter``: audit events stored in batches off the hot path,
with back-pressure instead of loss, retries, and a durable spool that survives SIGKILL."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_proxy_db import (
    DB,
    AuditEvent,
    AuditWriter,
    DatabaseError,
    FullConfig,
    TransientError,
    aio,
    new_from_full_config,
)
from llm_proxy_db.aio import AsyncAuditWriter, AsyncDB

pytest.importorskip("llm_proxy_db_sqlite")
pytest.importorskip("llm_proxy_db_memory")

DRIVERS = ["memory", "sqlite"]
SECRET = "sk-" + "S" * 43


def event(**changes: Any) -> AuditEvent:
    return AuditEvent(action="request", actor="proxy", outcome="success", **changes)


def config(driver: str, tmp_path: Path, name: str = "audit.db") -> FullConfig:
    return FullConfig(driver=driver, path=str(tmp_path / name))


class Gate:
    """Stands between a facade and its stores: records each ``create_audit_events`` batch
    (by ids), can hold it (``opened`` cleared) or fail it (``fail``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []
        self.opened = threading.Event()
        self.opened.set()
        self.fail: Callable[[list[AuditEvent]], None] | None = None
        self.calls = 0

    def before(self, events: list[AuditEvent]) -> None:
        self.calls += 1
        if self.fail is not None:
            self.fail(events)
        self.batches.append([e.id for e in events])

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        assert self.opened.wait(30)
        self.before(events)
        return int(self.inner.create_audit_events(events))

    def stored(self) -> list[str]:
        return [i for batch in self.batches for i in batch]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class AsyncGate(Gate):
    async def create_audit_events(self, events: list[AuditEvent]) -> int:  # type: ignore[override]
        while not self.opened.is_set():
            await asyncio.sleep(0.005)
        self.before(events)
        return int(await self.inner.create_audit_events(events))


def gated(db: DB | AsyncDB, gate: type[Gate] = Gate) -> Gate:
    wrapper = gate(db._stores)
    db._stores = wrapper  # the facade's store calls go through it
    return wrapper


@pytest.fixture(params=DRIVERS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    opened = new_from_full_config(config(request.param, tmp_path))
    try:
        yield opened
    finally:
        if "closed" not in repr(opened):
            opened.close()


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


# -- the blocking writer ------------------------------------------------------------------


def test_batches_of_at_most_max_batch(db: DB) -> None:
    gate = gated(db)
    writer = db.audit_writer(max_batch=10, max_delay=30)
    assert isinstance(writer, AuditWriter)
    events = [event() for _ in range(25)]
    started = time.monotonic()
    for e in events:
        writer.submit(e)
    assert time.monotonic() - started < 1.0  # submit returns at once
    wait_for(lambda: writer.written == 20)  # full batches go without waiting max_delay
    assert writer.pending == 5
    age = writer.oldest_pending_age
    assert age is not None and age >= 0
    writer.flush()
    assert [len(b) for b in gate.batches] == [10, 10, 5]
    assert gate.stored() == [e.id for e in events]
    assert (writer.pending, writer.written, writer.rejected, writer.failed_batches) == (0, 25, 0, 0)
    assert writer.oldest_pending_age is None
    assert db.count_audit_events() == 25
    writer.close()


def test_stored_within_max_delay_without_flush(db: DB) -> None:
    writer = db.audit_writer(max_delay=0.05)
    started = time.monotonic()
    writer.submit(event())
    wait_for(lambda: writer.written == 1)
    assert time.monotonic() - started < 1.0
    assert db.count_audit_events() == 1
    writer.close()


def test_close_flushes_and_is_idempotent(db: DB) -> None:
    writer = db.audit_writer(max_delay=60)
    ids = [event().id for _ in range(3)]
    for i in ids:
        writer.submit(event(id=i))
    writer.close()
    writer.close()
    assert writer.closed and writer.pending == 0 and writer.written == 3
    assert sorted(e.id for e in db.list_audit_events()) == sorted(ids)
    with pytest.raises(DatabaseError, match="closed"):
        writer.submit(event())
    with pytest.raises(TypeError, match="AuditEvent"):
        writer.submit("not an event")  # type: ignore[arg-type]


def test_db_close_flushes_every_open_writer(tmp_path: Path) -> None:
    db = new_from_full_config(config("sqlite", tmp_path))
    writers = [db.audit_writer(max_delay=60) for _ in range(2)]
    for writer in writers:
        for _ in range(4):
            writer.submit(event())
    db.close()
    assert all(w.closed and w.written == 4 for w in writers)
    with new_from_full_config(config("sqlite", tmp_path)) as again:
        assert again.count_audit_events() == 8


def test_refused_inside_the_transaction_and_when_closed(db: DB) -> None:
    with db.transaction() as tx:
        with pytest.raises(DatabaseError, match=r"audit_writer\(\)"):
            db.audit_writer()
        assert tx.count_audit_events() == 0
    db.close()
    with pytest.raises(DatabaseError, match="closed"):
        db.audit_writer()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"max_batch": 0}, ValueError),
        ({"max_pending": 0}, ValueError),
        ({"max_delay": -1}, ValueError),
        ({"max_delay": float("nan")}, ValueError),
        ({"max_batch": 1.5}, TypeError),
    ],
)
def test_settings_are_checked(db: DB, settings: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        db.audit_writer(**settings)


def test_back_pressure_blocks_then_raises_and_loses_nothing(db: DB) -> None:
    gate = gated(db)
    gate.opened.clear()  # the database hangs
    writer = db.audit_writer(max_batch=2, max_delay=0, max_pending=5)
    accepted = [event() for _ in range(5)]
    for e in accepted:
        writer.submit(e, timeout=0)  # room: at once
    started = time.monotonic()
    with pytest.raises(TransientError, match="backlog is full"):
        writer.submit(event(), timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert writer.pending == 5
    age = writer.oldest_pending_age
    assert age is not None and age >= 0.2
    late = event()
    blocked = threading.Thread(target=writer.submit, args=(late,))  # no timeout: waits
    blocked.start()
    time.sleep(0.05)
    assert blocked.is_alive()
    gate.opened.set()  # the database is back
    blocked.join(5)
    assert not blocked.is_alive()
    writer.close()
    assert gate.stored() == [e.id for e in [*accepted, late]]
    assert db.count_audit_events() == 6


def test_close_with_a_timeout_gives_up_loudly(db: DB) -> None:
    gate = gated(db)
    gate.opened.clear()
    writer = db.audit_writer(max_delay=0)
    writer.submit(event())
    with pytest.raises(TransientError, match="1 events lost"):
        writer.close(timeout=0.1)
    gate.opened.set()
    writer.close()  # idempotent


def test_transient_failure_is_retried_in_order(db: DB) -> None:
    gate = gated(db)
    failures = iter(range(3))

    def fail_after_storing(events: list[AuditEvent]) -> None:
        if next(failures, None) is not None:
            gate.inner.create_audit_events(events)  # stored, then the commit "is lost"
            raise TransientError("connection lost")

    gate.fail = fail_after_storing
    writer = db.audit_writer(max_batch=4, max_delay=0.01)
    events = [event() for _ in range(10)]
    for e in events:
        writer.submit(e)
    writer.flush()
    assert writer.failed_batches == 3 and writer.rejected == 0 and writer.written == 10
    assert gate.stored() == [e.id for e in events]  # in order
    assert sorted(e.id for e in db.list_audit_events()) == sorted(e.id for e in events)
    writer.close()


def test_permanent_failure_goes_event_by_event(db: DB, caplog: pytest.LogCaptureFixture) -> None:
    gate = gated(db)
    poison = event(metadata={"key": SECRET})

    def refuse_poison(events: list[AuditEvent]) -> None:
        if any(e.id == poison.id for e in events):
            raise ValueError(f"cannot store {SECRET}")  # a message that must not be logged

    gate.fail = refuse_poison
    writer = db.audit_writer(max_batch=10, max_delay=0)
    events = [event(), event(), poison, event(), event()]
    with caplog.at_level(logging.ERROR, logger="llm_proxy_db._audit_writer"):
        for e in events:
            writer.submit(e)
        writer.flush()
    assert (writer.written, writer.rejected, writer.pending) == (4, 1, 0)
    assert writer.failed_batches >= 1
    good = [e.id for e in events if e is not poison]
    assert sorted(e.id for e in db.list_audit_events()) == sorted(good)
    messages = [r.getMessage() for r in caplog.records]
    assert any(poison.id in m and "rejected" in m for m in messages), messages
    assert not any(SECRET in m for m in messages)
    writer.submit(event())  # the writer goes on
    writer.close()
    assert writer.written == 5


def test_spool_keeps_what_the_database_did_not_take(db: DB, tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    gate = gated(db)
    gate.opened.clear()
    writer = db.audit_writer(max_delay=0, spool_path=spool)
    with pytest.raises(DatabaseError, match="already used"):
        db.audit_writer(spool_path=spool)
    events = [event() for _ in range(5)]
    for e in events:
        writer.submit(e)
    with pytest.raises(TransientError, match="kept in the spool"):
        writer.close(timeout=0.1)
    gate.opened.set()
    replaying = db.audit_writer(spool_path=spool)
    assert replaying.pending >= 4  # one batch may have got through meanwhile
    replaying.close()
    assert sorted(e.id for e in db.list_audit_events()) == sorted(e.id for e in events)
    with sqlite3.connect(spool) as conn:
        assert conn.execute("SELECT count(*) FROM spooled_audit_events").fetchone() == (0,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- the async twin -----------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_async_writer(driver: str, tmp_path: Path) -> None:
    async def main() -> None:
        db = await aio.new_from_full_config(config(driver, tmp_path))
        gate = gated(db, AsyncGate)
        writer = await db.audit_writer(max_batch=10, max_delay=30)
        assert isinstance(writer, AsyncAuditWriter)
        events = [event() for _ in range(25)]
        for e in events:
            await writer.submit(e)
        for _ in range(500):
            if writer.written == 20:
                break
            await asyncio.sleep(0.01)
        assert writer.written == 20 and writer.pending == 5
        ages = [writer.oldest_pending_age]
        await writer.flush()
        assert [len(b) for b in gate.batches] == [10, 10, 5]
        assert gate.stored() == [e.id for e in events]
        ages.append(writer.oldest_pending_age)
        assert ages[0] is not None and ages[0] >= 0 and ages[1] is None

        async with db.transaction():
            with pytest.raises(DatabaseError, match=r"audit_writer\(\)"):
                await db.audit_writer()

        # back-pressure, then recovery
        gate.opened.clear()
        small = await db.audit_writer(max_batch=2, max_delay=0, max_pending=3)
        for _ in range(3):
            await small.submit(event(), timeout=0)
        with pytest.raises(TransientError, match="backlog is full"):
            await small.submit(event(), timeout=0.1)
        gate.opened.set()
        await small.submit(event())  # room again once the database answers
        await small.flush()
        assert small.written == 4

        # transient retried, then a permanent refusal event by event
        failures = iter(range(2))
        poison = event()

        def fail(events: list[AuditEvent]) -> None:
            if next(failures, None) is not None:
                raise TransientError("connection lost")
            if any(e.id == poison.id for e in events):
                raise ValueError(SECRET)

        gate.fail = fail
        rest = [event(), poison, event()]
        for e in rest:
            await small.submit(e)
        await small.flush()
        assert (small.written, small.rejected) == (6, 1)
        assert small.failed_batches >= 3
        gate.fail = None

        # AsyncDB.close stores what the open writers hold, then closes
        for _ in range(3):
            await writer.submit(event())
        await db.close()
        assert writer.closed and small.closed and writer.written == 28
        with pytest.raises(DatabaseError, match="closed"):
            await writer.submit(event())

    asyncio.run(main())


def test_async_spool_and_lifespan(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    cfg = config("sqlite", tmp_path)
    ids: list[str] = []

    async def crash() -> None:  # a writer whose database hangs: events stay in the spool
        db = await aio.new_from_full_config(cfg)
        gate = gated(db, AsyncGate)
        gate.opened.clear()
        writer = await db.audit_writer(max_delay=0, spool_path=spool)
        for _ in range(5):
            e = event()
            ids.append(e.id)
            await writer.submit(e)
        with pytest.raises(TransientError, match="kept in the spool"):
            await writer.close(timeout=0.1)
        gate.opened.set()
        await db.close()

    async def replay() -> None:
        async with aio.lifespan(cfg) as state:
            db = state["db"]
            writer = await db.audit_writer(max_delay=60, spool_path=spool)
            late = event()
            ids.append(late.id)
            await writer.submit(late)
        # the lifespan's exit stored everything
        async with aio.lifespan(cfg) as state:
            stored = await state["db"].list_audit_events()
            assert sorted(e.id for e in stored) == sorted(ids)

    asyncio.run(crash())
    asyncio.run(replay())


# -- SIGKILL ------------------------------------------------------------------------------

CHILD = r"""
import sys, threading
from llm_proxy_db import AuditEvent, FullConfig, new_from_full_config

db = new_from_full_config(FullConfig(driver="sqlite", path=sys.argv[1]))
writer = db.audit_writer(max_batch=50, max_delay=0.005, spool_path=sys.argv[2])
lock = threading.Lock()

def load() -> None:
    while True:
        event = AuditEvent(action="request", actor="proxy", outcome="success")
        writer.submit(event)
        with lock:  # acknowledged: line-buffered to the parent's pipe
            sys.stdout.write(event.id + "\n")
            sys.stdout.flush()

for _ in range(4):
    threading.Thread(target=load, daemon=True).start()
threading.Event().wait()
"""

KILLS = 20


def test_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    database, spool = tmp_path / "audit.db", tmp_path / "spool.db"
    new_from_full_config(FullConfig(driver="sqlite", path=str(database))).close()  # migrated
    acknowledged: list[str] = []
    rng = random.Random(14)
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(database), str(spool)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or ()))  # noqa: B023
        reader.start()
        wait_until = time.monotonic() + 30
        while not lines and child.poll() is None and time.monotonic() < wait_until:
            time.sleep(0.005)  # the child is up and acknowledging
        time.sleep(rng.uniform(0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join()
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
        acknowledged += [line.strip() for line in lines if line.endswith("\n")]
    assert len(acknowledged) > KILLS * 10, "the children did not run under load"
    db = new_from_full_config(FullConfig(driver="sqlite", path=str(database)))
    replaying = db.audit_writer(spool_path=spool)
    replaying.close()
    db.close()
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT id, count(*) FROM audit_events GROUP BY id").fetchall()
    stored = dict(rows)
    missing = [i for i in acknowledged if i not in stored]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events lost"
    assert all(count == 1 for count in stored.values())
    assert len(set(acknowledged)) == len(acknowledged)
    print(f"{KILLS} kills, {len(acknowledged)} acknowledged, {len(stored)} stored")


def test_async_audit_writer_takes_the_same_parameters() -> None:
    sync = inspect.signature(DB.audit_writer, eval_str=True)
    async_ = inspect.signature(AsyncDB.audit_writer, eval_str=True)
    assert inspect.iscoroutinefunction(AsyncDB.audit_writer)
    assert list(sync.parameters.values()) == list(async_.parameters.values())
    assert (sync.return_annotation, async_.return_annotation) == (AuditWriter, AsyncAuditWriter)
