"""The benchmark: llm-proxy-db against the bare drivers (and SQLAlchemy Core), in one run.

    python benchmarks/run.py [--quick] [--postgres URL | --no-postgres]
        [--mysql URL | --no-mysql] [--json PATH]

It builds the data (10,000 tokens in 100 projects; 100k, then 1M audit events, mostly in one
project), then times each operation through the ``DB`` facade, through the raw driver doing
exactly the library's work (its SQL text, pragmas or session options, timestamp encoding,
rows decoded to the same Python values) and, when installed, through SQLAlchemy Core.
Variants run in interleaved rounds (the order rotates each round) in one process, so a noisy
machine slows all of them alike; each round gives a ratio ours / other, and the table shows
the median and the min-max of those ratios. Then thread scaling (1, 4, 8, 16 threads), and
on PostgreSQL 4 processes x 8 threads on one database whose request counts must add up
exactly to the acknowledged increments; and ``coalesce_increments`` at 32 threads (a token
per thread, one shared token) against the same settings without, and against pgbench running
the library's UPDATE at 32 clients, in its simple and its prepared query mode (skipped when
pgbench is not installed), then its p50 latency at 1 thread. Then the asyncio API, on one
event loop per backend and the same database: ``AsyncDB`` token calls against a raw psycopg
``AsyncConnectionPool`` of the same size (1 task, 64 tasks) and against raw aiosqlite, when
installed (1 task), and increments at 8 tasks against the ``DB`` at 8 threads. On MySQL
(MariaDB), when the ``mysql`` backend is installed: the token calls against raw PyMySQL
running the same statements on a held connection, at 1 thread and at 8 (one connection per
thread).

The run starts by checking that every variant returns equal values, and exits 1 when a check
fails; missed targets only print (CI runs ``--quick`` to keep this working and asserts no
timing). ``--quick`` (1,000 tokens, 10k/100k events, few rounds) takes well under a minute.
Figures go to stdout and, every one of them, to a JSON file."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs

from llm_proxy_db import (
    DB,
    MAX_COUNT,
    AuditEvent,
    AuditEventFilter,
    FullConfig,
    Project,
    Token,
    TransientError,
    aio,
    mask_token,
    new_from_full_config,
)
from llm_proxy_db.aio import AsyncDB
from llm_proxy_db.sql import (
    Dialect,
    Statements,
    Step,
    StoreLogic,
    encode_naive_utc,
    encode_text_timestamp,
)
from llm_proxy_db_sqlite._dialect import SQLITE

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/test"
PAGE = 100
DEEP_PAGE = 1000


@dataclass(frozen=True)
class Sizes:
    """How much data and how many rounds."""

    tokens: int
    projects: int
    events: tuple[int, int]
    rounds: int
    block: int
    """Calls per variant per round for the token calls (listing: a tenth)."""
    threads: tuple[int, ...]
    thread_rounds: int
    thread_calls: int
    """Increments per thread per round."""
    processes: int
    process_threads: int
    process_seconds: float


FULL = Sizes(10_000, 100, (100_000, 1_000_000), 15, 2000, (1, 4, 8, 16), 7, 1000, 4, 8, 5.0)
QUICK = Sizes(1_000, 10, (10_000, 100_000), 3, 200, (1, 4), 2, 300, 2, 4, 1.5)


class CheckFailed(Exception):
    """An equality or exact-count check failed: the figures would compare unlike work."""


def check(what: str, got: object, expected: object) -> None:
    """Raise ``CheckFailed`` unless ``got == expected``."""
    if got == expected:
        return
    if isinstance(got, list) and isinstance(expected, list):
        if len(got) != len(expected):
            raise CheckFailed(f"{what}: {len(got)} items != {len(expected)}")
        index = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        got, expected = got[index], expected[index]
        what = f"{what}, item {index}"
    raise CheckFailed(f"{what}: {got!r:.2000} != {expected!r:.2000}")


def values(record: Any) -> tuple[Any, ...]:
    """A model's field values in field order (what a raw row decodes to)."""
    return tuple(getattr(record, f.name) for f in attrs.fields(type(record)))


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a backend's table."""

    operation: str
    ours: str
    other: str
    ours_us: float
    other_us: float
    ratio: float
    low: float
    high: float
    target: str
    met: bool | None
    unit: str = "us/op"
    note: str = ""


@dataclass
class Report:
    """Everything measured for one backend."""

    backend: str
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def interleave(
    variants: dict[str, Callable[[Any], object]],
    args: Callable[[str], Sequence[Any]],
    rounds: int,
) -> dict[str, list[float]]:
    """Microseconds per call of each variant in each round (after one warm-up block).

    Each round runs one block of each variant, calling it once per item of ``args(name)``
    (built before the clock starts), in an order that rotates from round to round.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(-1, rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            fn, items = variants[name], args(name)
            start = time.perf_counter()
            for item in items:
                fn(item)
            elapsed = time.perf_counter() - start
            if number >= 0:
                times[name].append(elapsed / len(items) * 1e6)
    return times


def ratio_row(
    operation: str,
    times: dict[str, list[float]],
    ours: str,
    other: str,
    target: float | None,
    *,
    higher_is_better: bool = False,
    unit: str = "us/op",
    note: str = "",
) -> Row:
    """The row comparing ``ours`` with ``other``: per-round ratios ours / other."""
    ratios = [a / b for a, b in zip(times[ours], times[other], strict=True)]
    median = statistics.median(ratios)
    if target is None:
        text, met = "-", None
    elif higher_is_better:
        text, met = f">= {target:g}", median >= target
    else:
        text, met = f"<= {target:g}", median <= target
    return Row(
        operation,
        ours,
        other,
        statistics.median(times[ours]),
        statistics.median(times[other]),
        median,
        min(ratios),
        max(ratios),
        text,
        met,
        unit,
        note,
    )


def threaded(
    count: int,
    calls: int,
    worker: Callable[[int], Callable[[], object]],
    finish: Callable[[], object] | None = None,
) -> float:
    """Operations per second of ``count`` threads each making ``calls`` calls of
    ``worker(i)`` (made before the clock starts), ``finish()`` (when given) included in
    the time once every thread is done."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        fn = worker(index)
        barrier.wait()
        try:
            for _ in range(calls):
                fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if finish is not None and not errors:
        finish()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return count * calls / elapsed


def thread_rounds(
    variants: dict[str, Callable[[int], Callable[[], object]]],
    count: int,
    sizes: Sizes,
    finish: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Ops/s of each variant at ``count`` threads, per interleaved round (one warm-up);
    ``finish[name]()``, when given, ends each of that variant's timed blocks."""
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    ends = finish or {}
    for number in range(-1, sizes.thread_rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            rate = threaded(count, sizes.thread_calls, variants[name], ends.get(name))
            if number >= 0:
                rates[name].append(rate)
    return rates


# -- asyncio ---------------------------------------------------------------------------------

AsyncCall = Callable[[Any], Awaitable[object]]
"""One awaited call of a variant: ``await fn(item)``."""

AsyncTokenCall = Callable[[str], Awaitable[tuple[Any, ...]]]
"""A raw async get or increment: a token's values."""

ASYNC_TASKS = {"postgres": 64, "sqlite": 8}
"""Concurrent tasks of the many-task rows (issue 12's bars)."""


async def ainterleave(
    variants: dict[str, AsyncCall],
    args: Callable[[str], Sequence[Any]],
    rounds: int,
) -> dict[str, list[float]]:
    """``interleave`` for coroutines: one task awaiting each call in turn."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(-1, rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            fn, items = variants[name], args(name)
            start = time.perf_counter()
            for item in items:
                await fn(item)
            elapsed = time.perf_counter() - start
            if number >= 0:
                times[name].append(elapsed / len(items) * 1e6)
    return times


async def tasks_rate(
    count: int, calls: int, worker: Callable[[int], Callable[[], Awaitable[object]]]
) -> float:
    """Operations per second of ``count`` tasks on the running loop, each awaiting
    ``calls`` calls of ``worker(i)`` (made before the clock starts)."""
    fns = [worker(index) for index in range(count)]

    async def run(fn: Callable[[], Awaitable[object]]) -> None:
        for _ in range(calls):
            await fn()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for fn in fns:
            group.create_task(run(fn))
    return count * calls / (time.perf_counter() - start)


async def rate_rounds(
    variants: dict[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, list[float]]:
    """Ops/s of each variant (a coroutine measuring one run), per interleaved round
    (one warm-up)."""
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(-1, rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            rate = await variants[name]()
            if number >= 0:
                rates[name].append(rate)
    return rates


def async_raw_token_calls(
    dialect: Dialect,
    execute: Callable[[str, Any], Awaitable[list[Any]]],
    decode_time: Callable[[Any], datetime],
) -> tuple[
    Callable[[str], Awaitable[tuple[Any, ...]]], Callable[[str], Awaitable[tuple[Any, ...]]]
]:
    """The raw async driver's get and increment over ``await execute(sql, params)``: the
    library's SQL text, timestamp encoding and row decoding, as ``raw_variants``."""
    st = Statements(dialect)
    get_sql, increment_sql = st.get_token, st.increment_usage
    encode = dialect.encode_time

    async def get(token: str) -> tuple[Any, ...]:
        return decoded_token((await execute(get_sql, (token,)))[0], decode_time)

    async def increment(token: str) -> tuple[Any, ...]:
        stamp = encode(datetime.now(UTC))
        rows = await execute(increment_sql, (stamp, token, stamp))
        return decoded_token(rows[0], decode_time)

    return get, increment


async def check_async_equal(
    adb: AsyncDB,
    db: DB,
    raw: tuple[AsyncTokenCall, AsyncTokenCall] | None,
    token: str,
) -> None:
    """The AsyncDB returns what the sync DB and the raw async driver return."""
    ours = values(await adb.get_token_by_id(token))
    check("AsyncDB get_token_by_id vs DB", ours, values(db.get_token_by_id(token)))
    counted = values(await adb.increment_token_usage(token))
    check("AsyncDB increment read back by DB", values(db.get_token_by_id(token)), counted)
    if raw is None:
        return
    raw_get, raw_increment = raw
    check("raw async get_token_by_id", await raw_get(token), counted)
    again = await raw_increment(token)
    check("raw async increment_token_usage", again, values(await adb.get_token_by_id(token)))
    check("raw async increment counted one more", again[5], counted[5] + 1)


def skipped_row(operation: str, note: str) -> Row:
    """A line that says why a row was not measured."""
    return Row(operation, "-", "-", 0, 0, 0, 0, 0, "-", None, note=note)


async def async_token_rows(
    adb: AsyncDB,
    raw: tuple[AsyncTokenCall, AsyncTokenCall],
    tokens: Sequence[str],
    sizes: Sizes,
    target: float,
    count: int | None,
) -> list[Row]:
    """get_token_by_id and increment_token_usage through the AsyncDB vs the raw async
    driver: latency at 1 task; ops/s at ``count`` tasks, each on its own token (when
    ``count`` is given)."""
    calls = sizes.block
    picked = [tokens[i * len(tokens) // calls] for i in range(calls)]
    raw_get, raw_increment = raw
    pairs: list[tuple[str, AsyncCall, AsyncCall]] = [
        ("get_token_by_id", adb.get_token_by_id, raw_get),
        ("increment_token_usage", adb.increment_token_usage, raw_increment),
    ]
    rows = []
    for operation, ours, other in pairs:
        times = await ainterleave({"aio": ours, "raw": other}, lambda name: picked, sizes.rounds)
        rows.append(ratio_row(f"aio {operation} (1 task)", times, "aio", "raw", target))
    if count is None:
        return rows
    per_task = max(sizes.thread_calls * 8 // count, 20)
    for operation, ours, other in pairs:

        def run(fn: AsyncCall) -> Callable[[], Awaitable[float]]:
            def worker(index: int) -> Callable[[], Awaitable[object]]:
                token = tokens[index]
                return lambda: fn(token)

            return lambda: tasks_rate(count, per_task, worker)

        rates = await rate_rounds({"aio": run(ours), "raw": run(other)}, sizes.thread_rounds)
        rows.append(
            ratio_row(
                f"aio {operation} x {count} tasks",
                rates,
                "aio",
                "raw",
                round(1 / target, 2),
                higher_is_better=True,
                unit="ops/s",
            )
        )
    return rows


# -- data -------------------------------------------------------------------------------------

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def event_values(index: int, project_ids: Sequence[str]) -> tuple[Any, ...]:
    """Audit event ``index`` as the model's field values (not encoded): timestamps a
    millisecond apart, one in ten tied with the one before; nine in ten in the first
    project."""
    stamp = BASE_TIME + timedelta(milliseconds=index - (index % 10 == 9))
    project = project_ids[0] if index % 10 else project_ids[index // 10 % len(project_ids)]
    metadata = {"model": "gpt-4o", "tokens": index % 1000} if index % 4 == 0 else None
    return (
        "proxy.request",
        "proxy",
        "success",
        str(uuid.uuid4()),
        stamp,
        project,
        f"req-{index}",
        None,
        "10.0.0.1",
        "POST",
        "/v1/chat/completions",
        "bench/1.0",
        None,
        None,
        metadata,
    )


def metadata_json(metadata: dict[str, Any] | None) -> str | None:
    """Metadata as the library stores it."""
    if metadata is None:
        return None
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)


def encoded_event(dialect: Dialect, item: tuple[Any, ...]) -> list[Any]:
    """Event values as insert parameters (the library's encoding)."""
    params = list(item)
    params[4] = dialect.encode_time(params[4])
    params[14] = metadata_json(params[14])
    return params


def seed_rows(dialect: Dialect, sizes: Sizes) -> tuple[list[Any], list[Any], list[str]]:
    """Project and token insert parameters, and the project ids."""
    codec = Statements(dialect).codec
    projects = [
        Project(name=f"project-{i:03}", openai_api_key=f"sk-upstream-{i}")
        for i in range(sizes.projects)
    ]
    tokens = [Token(project_id=projects[i % len(projects)].id) for i in range(sizes.tokens)]
    return (
        [codec.project_params(p) for p in projects],
        [codec.token_params(t) for t in tokens],
        [p.id for p in projects],
    )


def new_events(
    dialect: Dialect, start: int, count: int, project_ids: Sequence[str]
) -> Iterator[list[Any]]:
    for index in range(start, start + count):
        yield encoded_event(dialect, event_values(index, project_ids))


def fresh_events(count: int, project_id: str) -> list[AuditEvent]:
    """New audit events for ``create_audit_event`` (built before the clock starts)."""
    return [
        AuditEvent(
            action="proxy.request",
            actor="proxy",
            outcome="success",
            project_id=project_id,
            request_id=f"req-new-{i}",
            client_ip="10.0.0.2",
            method="POST",
            path="/v1/chat/completions",
            metadata={"model": "gpt-4o", "tokens": i},
        )
        for i in range(count)
    ]


# -- what every backend section shares ---------------------------------------------------------


@dataclass
class Variants:
    """One backend's callables: ours, the raw driver's, SQLAlchemy's (or None)."""

    dialect: Dialect
    db: DB
    raw_get: Callable[[str], tuple[Any, ...]]
    raw_increment: Callable[[str], tuple[Any, ...]]
    raw_list: Callable[[AuditEventFilter], list[tuple[Any, ...]]]
    raw_insert: Callable[[tuple[Any, ...]], object]
    sa: SaVariants | None


@dataclass
class SaVariants:
    """SQLAlchemy Core doing the same calls."""

    get: Callable[[str], tuple[Any, ...]]
    increment: Callable[[str], tuple[Any, ...]]
    list: Callable[[AuditEventFilter], list[tuple[Any, ...]]]
    insert: Callable[[dict[str, Any]], object]


def library_list_step(dialect: Dialect, flt: AuditEventFilter) -> tuple[str, list[Any]]:
    """The statement and parameters the store logic runs for ``flt``."""
    step = StoreLogic(Statements(dialect)).list_audit_events(flt)
    if not isinstance(step, Step):
        raise CheckFailed(f"list_audit_events is not one statement: {step!r}")
    return step.sql, list(step.params)


def check_equal(v: Variants, tokens: Sequence[str], flt: AuditEventFilter) -> None:
    """Every variant returns the same values as ours: rows, types, time zones."""
    db = v.db
    token = tokens[0]
    ours = values(db.get_token_by_id(token))
    check("raw get_token_by_id", v.raw_get(token), ours)
    counted = values(db.increment_token_usage(token))
    check("increment read back raw", v.raw_get(token), counted)
    raw = v.raw_increment(token)
    check("raw increment_token_usage", raw, values(db.get_token_by_id(token)))
    check("raw increment counted one more", raw[5], counted[5] + 1)
    events = [values(e) for e in db.list_audit_events(flt)]
    check("listed events", len(events), flt.limit)
    check("raw list_audit_events", v.raw_list(flt), events)
    created = db.create_audit_event(fresh_events(1, flt.project_id or "")[0])
    check("created event read back", values(db.get_audit_event_by_id(created.id)), values(created))
    other = fresh_events(1, flt.project_id or "")[0]
    v.raw_insert(values(other))
    check("raw-inserted event read back", db.get_audit_event_by_id(other.id), other)
    if v.sa is not None:
        check("SQLAlchemy get_token_by_id", v.sa.get(token), values(db.get_token_by_id(token)))
        sa_counted = v.sa.increment(token)
        check("SQLAlchemy increment", sa_counted, values(db.get_token_by_id(token)))
        now_listed = [values(e) for e in db.list_audit_events(flt)]
        check("SQLAlchemy list_audit_events", v.sa.list(flt), now_listed)
        third = fresh_events(1, flt.project_id or "")[0]
        v.sa.insert(attrs.asdict(third))
        check("SQLAlchemy-inserted event read back", db.get_audit_event_by_id(third.id), third)


def token_rows(
    v: Variants, tokens: Sequence[str], sizes: Sizes, targets: dict[str, float]
) -> list[Row]:
    """get_token_by_id and increment_token_usage: ours, raw, SQLAlchemy."""
    rows: list[Row] = []
    db = v.db
    calls = sizes.block
    picked = [tokens[i * len(tokens) // calls] for i in range(calls)]
    calls_of: list[tuple[str, Callable[[str], object], Callable[[str], object], Any]] = [
        ("get_token_by_id", db.get_token_by_id, v.raw_get, v.sa.get if v.sa else None),
        (
            "increment_token_usage",
            db.increment_token_usage,
            v.raw_increment,
            v.sa.increment if v.sa else None,
        ),
    ]
    for operation, ours, raw, sa in calls_of:
        variants: dict[str, Callable[[Any], object]] = {"ours": ours, "raw": raw}
        if sa is not None:
            variants["sqlalchemy"] = sa
        times = interleave(variants, lambda name: picked, sizes.rounds)
        rows.append(ratio_row(operation, times, "ours", "raw", targets[operation]))
        if sa is not None:
            sa_target = targets.get(f"{operation} vs sqlalchemy")
            rows.append(
                ratio_row(
                    operation,
                    times,
                    "ours",
                    "sqlalchemy",
                    sa_target,
                    note="" if sa_target is None else "SQLAlchemy >= 2.5x slower",
                )
            )
    rows += authorize_rows(db, picked, sizes)
    return rows


def list_rows(
    v: Variants, project_id: str, size: int, in_project: int, sizes: Sizes, target: float
) -> tuple[list[Row], float]:
    """Listing one page (ours, raw, SQLAlchemy) and deep pages, at ``size`` events."""
    db = v.db
    flt = AuditEventFilter(project_id=project_id, limit=PAGE)
    calls = max(sizes.block // 10, 10)
    variants: dict[str, Callable[[Any], object]] = {"ours": db.list_audit_events, "raw": v.raw_list}
    if v.sa is not None:
        variants["sqlalchemy"] = v.sa.list
    times = interleave(variants, lambda name: [flt] * calls, sizes.rounds)
    label = f"list_audit_events @ {size:,}"
    rows = [ratio_row(label, times, "ours", "raw", target)]
    if v.sa is not None:
        rows.append(
            ratio_row(label, times, "ours", "sqlalchemy", 1.0, note="faster than SQLAlchemy")
        )
    rows.extend(deep_page_rows(v, project_id, size, in_project, sizes))
    return rows, statistics.median(times["ours"])


def deep_page_rows(
    v: Variants, project_id: str, size: int, in_project: int, sizes: Sizes
) -> list[Row]:
    """Page 1,000 (or the deepest full page) by ``before_id`` and by offset vs page 1."""
    db = v.db
    page = min(DEEP_PAGE, in_project // PAGE)
    if page < 2:
        return []
    first = AuditEventFilter(project_id=project_id, limit=PAGE)
    offset = AuditEventFilter(project_id=project_id, limit=PAGE, offset=(page - 1) * PAGE)
    label = f"page {page:,} @ {size:,}"
    variants: dict[str, Callable[[Any], object]] = {
        "page 1": db.list_audit_events,
        "offset": db.list_audit_events,
    }
    filters: dict[str, AuditEventFilter] = {"page 1": first, "offset": offset}
    note = ""
    if "before_id" in attrs.fields_dict(AuditEventFilter):
        previous = AuditEventFilter(project_id=project_id, limit=1, offset=(page - 1) * PAGE - 1)
        last_id = db.list_audit_events(previous)[0].id
        keyset = AuditEventFilter(project_id=project_id, limit=PAGE, before_id=last_id)  # type: ignore[call-arg, unused-ignore]
        if db.list_audit_events(keyset) == db.list_audit_events(offset):
            variants["before_id"] = db.list_audit_events
            filters["before_id"] = keyset
        else:
            note = "before_id: the page differs from the offset page (not honoured yet?); skipped"
    else:
        note = "before_id: AuditEventFilter has no such field yet; skipped"
    calls = max(sizes.block // 100, 5)
    times = interleave(variants, lambda name: [filters[name]] * calls, sizes.rounds)
    rows = []
    if "before_id" in times:
        rows.append(ratio_row(f"{label} (before_id)", times, "before_id", "page 1", 1.2))
    rows.append(ratio_row(f"{label} (offset)", times, "offset", "page 1", None, note=note))
    return rows


def create_row(v: Variants, project_id: str, sizes: Sizes, target: float) -> list[Row]:
    """create_audit_event: ours, raw, SQLAlchemy, each inserting fresh events."""
    calls = max(sizes.block // 2, 10)

    def args(name: str) -> list[Any]:
        events = fresh_events(calls, project_id)
        if name == "ours":
            return events
        if name == "raw":
            return [values(e) for e in events]
        return [attrs.asdict(e) for e in events]

    variants: dict[str, Callable[[Any], object]] = {
        "ours": v.db.create_audit_event,
        "raw": v.raw_insert,
    }
    if v.sa is not None:
        variants["sqlalchemy"] = v.sa.insert
    times = interleave(variants, args, sizes.rounds)
    rows = [ratio_row("create_audit_event", times, "ours", "raw", target)]
    if v.sa is not None:
        rows.append(ratio_row("create_audit_event", times, "ours", "sqlalchemy", None))
    return rows


def decoded_token(row: Sequence[Any], time: Callable[[Any], datetime]) -> tuple[Any, ...]:
    """A token row as the model's values."""
    project_id, token, expires, active, deactivated, count, limit, created, used, hits = row
    return (
        project_id,
        token,
        None if expires is None else time(expires),
        bool(active),
        None if deactivated is None else time(deactivated),
        count,
        limit,
        time(created),
        None if used is None else time(used),
        hits or 0,
    )


def decoded_event(row: Sequence[Any], time: Callable[[Any], datetime]) -> tuple[Any, ...]:
    """An audit event row as the model's values."""
    values = list(row)
    values[4] = time(values[4])
    values[14] = None if values[14] is None else json.loads(values[14])
    return tuple(values)


def aware(value: datetime) -> datetime:
    """A naive UTC ``TIMESTAMP`` value made aware."""
    return value.replace(tzinfo=UTC)


def raw_variants(
    dialect: Dialect,
    execute: Callable[[str, Any], list[Any]],
    write: Callable[[str, Any], int],
    decode_time: Callable[[Any], datetime],
) -> tuple[
    Callable[[str], tuple[Any, ...]],
    Callable[[str], tuple[Any, ...]],
    Callable[[AuditEventFilter], list[tuple[Any, ...]]],
    Callable[[tuple[Any, ...]], object],
]:
    """The raw driver's get, increment, list and insert over ``execute(sql, params)``."""
    st = Statements(dialect)
    get_sql, increment_sql, insert_sql = st.get_token, st.increment_usage, st.insert_audit
    encode = dialect.encode_time
    lists: dict[AuditEventFilter, tuple[str, list[Any]]] = {}

    def get(token: str) -> tuple[Any, ...]:
        return decoded_token(execute(get_sql, (token,))[0], decode_time)

    def increment(token: str) -> tuple[Any, ...]:
        stamp = encode(datetime.now(UTC))
        return decoded_token(execute(increment_sql, (stamp, token, stamp))[0], decode_time)

    def list_events(flt: AuditEventFilter) -> list[tuple[Any, ...]]:
        statement = lists.get(flt)
        if statement is None:  # the text is built once: raw code would hold it as a constant
            statement = lists[flt] = library_list_step(dialect, flt)
        return [decoded_event(row, decode_time) for row in execute(*statement)]

    def insert(item: tuple[Any, ...]) -> object:
        return write(insert_sql, encoded_event(dialect, item))

    return get, increment, list_events, insert


# -- the proxy's request path: authorize, the audit writer, batch inserts (issue 14) -----------

PROXY_THREADS = 8
"""Client threads of the proxy-path row (issue 14's bar)."""

BATCH = 1000
"""Events per ``create_audit_events`` call of the batch rows."""

PROXY_ACTION = "bench.proxy"
"""The action of the proxy rows' audit events (counted at the end)."""


def authorize_rows(db: DB, picked: Sequence[str], sizes: Sizes) -> list[Row]:
    """authorize against increment_token_usage, and against the two calls it replaces
    (increment_token_usage, then get_project_by_id), at 1 thread."""
    token = picked[0]
    authorized = db.authorize(token)
    counted = values(authorized.token)
    check("authorize's token read back", values(db.get_token_by_id(token)), counted)
    project = db.get_project_by_id(authorized.token.project_id)
    check("authorize's project", values(authorized.project), values(project))

    def two_calls(value: str) -> object:
        return db.get_project_by_id(db.increment_token_usage(value).project_id)

    variants: dict[str, Callable[[Any], object]] = {
        "authorize": db.authorize,
        "increment": db.increment_token_usage,
        "incr+project": two_calls,
    }
    times = interleave(variants, lambda name: picked, sizes.rounds)
    return [
        ratio_row("authorize", times, "authorize", "increment", None),
        ratio_row(
            "authorize",
            times,
            "authorize",
            "incr+project",
            None,
            note="vs increment_token_usage + get_project_by_id",
        ),
    ]


def proxy_event(token: str, project_id: str, index: int) -> AuditEvent:
    """The audit event a proxy writes for one request (as examples/fastapi-proxy does)."""
    masked = mask_token(token)
    return AuditEvent(
        action=PROXY_ACTION,
        actor=masked,
        outcome="success",
        project_id=project_id,
        request_id=f"req-proxy-{index}",
        client_ip="203.0.113.7",
        method="POST",
        path="/v1/chat/completions",
        user_agent="bench/1.0",
        metadata={"status": 200},
        token_id=masked,
    )


def proxy_path_row(db: DB, tokens: Sequence[str], sizes: Sizes, target: float) -> Row:
    """Requests/s through the storage layer at 8 threads, each on its own token: authorize
    plus the event submitted to an AuditWriter (flushed at the end of each timed block,
    in the time) against today's three calls (increment_token_usage, get_project_by_id,
    create_audit_event). Every event must then be stored exactly once."""
    count = PROXY_THREADS
    sizes = replace(sizes, thread_calls=sizes.thread_calls // 2)  # three calls are slow
    projects = {t: db.get_token_by_id(t).project_id for t in tokens[:count]}
    writer = db.audit_writer()
    before = db.count_audit_events(AuditEventFilter(action=PROXY_ACTION))

    def events(index: int) -> Iterator[AuditEvent]:
        token = tokens[index]
        return iter([proxy_event(token, projects[token], i) for i in range(sizes.thread_calls)])

    def new_path(index: int) -> Callable[[], object]:
        token, pending = tokens[index], events(index)

        def request() -> None:
            db.authorize(token)
            writer.submit(next(pending))

        return request

    def old_path(index: int) -> Callable[[], object]:
        token, pending = tokens[index], events(index)

        def request() -> None:
            counted = db.increment_token_usage(token)
            db.get_project_by_id(counted.project_id)
            db.create_audit_event(next(pending))

        return request

    try:
        rates = thread_rounds(
            {"authorize+writer": new_path, "three calls": old_path},
            count,
            sizes,
            finish={"authorize+writer": writer.flush},
        )
    finally:
        writer.close()
    check("proxy path: events the writer rejected", writer.rejected, 0)
    stored = db.count_audit_events(AuditEventFilter(action=PROXY_ACTION)) - before
    expected = 2 * (sizes.thread_rounds + 1) * count * sizes.thread_calls
    check("proxy path: audit events stored", stored, expected)
    return ratio_row(
        f"proxy path x {count} threads",
        rates,
        "authorize+writer",
        "three calls",
        target,
        higher_is_better=True,
        unit="ops/s",
        note="writer flushed in each block",
    )


BatchInsert = Callable[[list[AuditEvent]], int]
"""A batch insert-or-skip of audit events: how many were new."""


def check_batch_insert(db: DB, name: str, insert: BatchInsert, project_id: str) -> None:
    """``insert`` stores new events as ours does and skips those already stored."""
    fresh = fresh_events(10, project_id)
    check(f"{name}: new events stored", insert(fresh[:6]), 6)
    check(f"{name}: a replay skips stored ids", insert(fresh), 4)
    check(f"{name}: event read back", db.get_audit_event_by_id(fresh[7].id), fresh[7])


def batch_insert_rows(
    db: DB, raws: dict[str, BatchInsert], project_id: str, sizes: Sizes, target: float
) -> list[Row]:
    """create_audit_events of 1,000 new events against each raw form (all timed in the
    same rounds), then against the fastest raw form (by median)."""
    variants: dict[str, BatchInsert] = {"ours": db.create_audit_events, **raws}
    for name, insert in variants.items():
        check_batch_insert(db, name, insert, project_id)
    calls = max(sizes.block // 400, 1)

    def args(name: str) -> list[list[AuditEvent]]:
        return [fresh_events(BATCH, project_id) for _ in range(calls)]

    timed: dict[str, Callable[[Any], object]] = dict(variants)
    times = interleave(timed, args, sizes.rounds)
    label = f"create_audit_events ({BATCH:,})"
    rows = []
    if len(raws) > 1:
        rows += [ratio_row(label, times, "ours", name, None) for name in raws]
    fastest = min(raws, key=lambda name: statistics.median(times[name]))
    note = "vs the fastest raw form" if len(raws) > 1 else ""
    rows.append(ratio_row(label, times, "ours", fastest, target, note=note))
    return rows


def spool_rows(db: DB, project_id: str, sizes: Sizes) -> list[Row]:
    """The spool's cost: AuditWriter.submit with spool_path against without, per event,
    at 1 thread; submits alone (the request's cost) and with the flush that stores them."""
    calls = sizes.block // 4
    with tempfile.TemporaryDirectory(prefix="llm-proxy-db-spool-") as folder:
        writers = {
            "spool": db.audit_writer(spool_path=Path(folder) / "spool.db"),
            "no spool": db.audit_writer(),
        }
        try:
            names = list(writers)
            submits: dict[str, list[float]] = {name: [] for name in names}
            stored: dict[str, list[float]] = {name: [] for name in names}
            for number in range(-1, sizes.rounds):
                shift = number % len(names)
                for name in names[shift:] + names[:shift]:
                    writer, events = writers[name], fresh_events(calls, project_id)
                    start = time.perf_counter()
                    for event in events:
                        writer.submit(event)
                    submitted = time.perf_counter()
                    writer.flush()
                    done = time.perf_counter()
                    if number >= 0:
                        submits[name].append((submitted - start) / calls * 1e6)
                        stored[name].append((done - start) / calls * 1e6)
        finally:
            for writer in writers.values():
                writer.close()
    for name, writer in writers.items():
        check(f"{name}: events the writer stored", writer.written, (sizes.rounds + 1) * calls)
    return [
        ratio_row("audit submit", submits, "spool", "no spool", None),
        ratio_row("audit submit + flush", stored, "spool", "no spool", None, note="per event"),
    ]


# -- SQLAlchemy Core -----------------------------------------------------------------------------


def have_sqlalchemy() -> bool:
    """Whether SQLAlchemy is installed."""
    import importlib.util

    return importlib.util.find_spec("sqlalchemy") is not None


def sqlalchemy_variants(engine_url: str, creator: Callable[[], Any], postgres: bool) -> SaVariants:
    """SQLAlchemy Core on one held connection from ``creator``, with the same schema and
    value types (timestamps decoded to aware UTC, metadata to dicts)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import StaticPool

    class TextTime(sa.types.TypeDecorator[datetime]):
        """SQLite's text timestamps, encoded and decoded as the library does."""

        impl = sa.String
        cache_ok = True

        def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
            return None if value is None else encode_text_timestamp(value)

        def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value)

    class NaiveTime(sa.types.TypeDecorator[datetime]):
        """PostgreSQL's naive UTC ``TIMESTAMP`` values, made aware."""

        impl = sa.DateTime
        cache_ok = True

        def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
            return None if value is None else encode_naive_utc(value)

        def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
            return None if value is None else value.replace(tzinfo=UTC)

    class Metadata(sa.types.TypeDecorator[dict[str, Any]]):
        """Audit metadata: JSON text as the library writes it."""

        impl = sa.Text
        cache_ok = True

        def process_bind_param(self, value: dict[str, Any] | None, dialect: sa.Dialect) -> Any:
            return metadata_json(value)

        def process_result_value(self, value: Any, dialect: sa.Dialect) -> dict[str, Any] | None:
            return None if value is None else json.loads(value)

    ts: type[sa.types.TypeDecorator[datetime]] = NaiveTime if postgres else TextTime
    meta = sa.MetaData()
    projects = sa.Table(
        "projects",
        meta,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("is_active", sa.Boolean),
    )
    tokens = sa.Table(
        "tokens",
        meta,
        sa.Column("project_id", sa.String),
        sa.Column("token", sa.String, primary_key=True),
        sa.Column("expires_at", ts()),
        sa.Column("is_active", sa.Boolean),
        sa.Column("deactivated_at", ts()),
        sa.Column("request_count", sa.Integer),
        sa.Column("max_requests", sa.Integer),
        sa.Column("created_at", ts()),
        sa.Column("last_used_at", ts()),
        sa.Column("cache_hit_count", sa.Integer),
    )
    text_columns = (
        "project_id",
        "request_id",
        "correlation_id",
        "client_ip",
        "method",
        "path",
        "user_agent",
        "reason",
        "token_id",
    )
    audit = sa.Table(
        "audit_events",
        meta,
        sa.Column("action", sa.String),
        sa.Column("actor", sa.String),
        sa.Column("outcome", sa.String),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("timestamp", ts()),
        *(sa.Column(name, sa.String) for name in text_columns),
        sa.Column("metadata", Metadata()),
    )
    dialect = SQLITE if not postgres else None
    expires = (
        sa.literal_column(dialect.comparable_time("expires_at")) if dialect else tokens.c.expires_at
    )
    get = sa.select(tokens).where(tokens.c.token == sa.bindparam("t"))
    increment = (
        sa.update(tokens)
        .where(
            tokens.c.token == sa.bindparam("t"),
            tokens.c.is_active,
            sa.or_(tokens.c.expires_at.is_(None), expires > sa.bindparam("now", type_=ts())),
            sa.or_(tokens.c.max_requests.is_(None), tokens.c.request_count < tokens.c.max_requests),
            tokens.c.request_count < MAX_COUNT,
            sa.exists().where(projects.c.id == tokens.c.project_id, projects.c.is_active),
        )
        .values(request_count=tokens.c.request_count + 1, last_used_at=sa.bindparam("stamp"))
        .returning(*tokens.c)
    )
    audit_id = audit.c.id.collate("C") if postgres else audit.c.id
    listing = (
        sa.select(audit)
        .where(audit.c.project_id == sa.bindparam("p"))
        .order_by(audit.c.timestamp.desc(), audit_id.desc())
    )
    insert = sa.insert(audit)
    engine = sa.create_engine(
        engine_url, creator=creator, poolclass=StaticPool, isolation_level="AUTOCOMMIT"
    )
    conn = engine.connect()

    def sa_get(token: str) -> tuple[Any, ...]:
        return tuple(conn.execute(get, {"t": token}).one())

    def sa_increment(token: str) -> tuple[Any, ...]:
        now = datetime.now(UTC)
        return tuple(conn.execute(increment, {"t": token, "now": now, "stamp": now}).one())

    queries: dict[tuple[int | None, int], Any] = {}

    def sa_list(flt: AuditEventFilter) -> list[tuple[Any, ...]]:
        query = queries.get((flt.limit, flt.offset))
        if query is None:  # built once per page shape, as an application would hold it
            query = queries[flt.limit, flt.offset] = listing.limit(flt.limit).offset(flt.offset)
        return [tuple(row) for row in conn.execute(query, {"p": flt.project_id})]

    def sa_insert(item: dict[str, Any]) -> object:
        return conn.execute(insert, item)

    return SaVariants(sa_get, sa_increment, sa_list, sa_insert)


# -- SQLite ------------------------------------------------------------------------------------


def sqlite_connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection configured as the SQLite backend configures its own."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    for pragma in sqlite_pragmas(busy_timeout):
        conn.execute(pragma)
    return conn


def sqlite_pragmas(busy_timeout: float) -> list[str]:
    """The pragmas the SQLite backend sets on each of its connections."""
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
    ]


def bench_sqlite(folder: Path, sizes: Sizes, sa_wanted: bool) -> Report:
    """Every SQLite figure."""
    report = Report("sqlite")
    path = str(folder / "bench.db")
    pool = max(16, *sizes.threads)
    config = FullConfig(driver="sqlite", path=path, max_open_conns=pool, max_idle_conns=pool)
    busy = config.busy_timeout.total_seconds()
    new_from_full_config(config).close()  # migrated by the library
    build = sqlite_connect(path, busy)
    st = Statements(SQLITE)
    projects, token_params, project_ids = seed_rows(SQLITE, sizes)
    started = time.perf_counter()
    build.execute("BEGIN")
    build.executemany(st.insert_project, projects)
    build.executemany(st.insert_token, token_params)
    build.executemany(st.insert_audit, new_events(SQLITE, 0, sizes.events[0], project_ids))
    build.execute("COMMIT")
    build.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a long-running database would be
    report.extra["build_seconds"] = [round(time.perf_counter() - started, 2)]
    tokens = [row[1] for row in token_params]
    raw = sqlite_connect(path, busy)

    def execute(sql: str, params: Any) -> list[Any]:
        return raw.execute(sql, params).fetchall()

    def write(sql: str, params: Any) -> int:
        return raw.execute(sql, params).rowcount

    get, increment, listing, insert = raw_variants(SQLITE, execute, write, datetime.fromisoformat)
    sa = None
    if sa_wanted:
        sa = sqlalchemy_variants("sqlite://", lambda: sqlite_connect(path, busy), postgres=False)
    db = new_from_full_config(config)
    v = Variants(SQLITE, db, get, increment, listing, insert, sa)
    try:
        check_equal(v, tokens, AuditEventFilter(project_id=project_ids[0], limit=PAGE))
        targets = {
            "get_token_by_id": 1.15,
            "increment_token_usage": 1.1,
            "get_token_by_id vs sqlalchemy": 0.4,
            "increment_token_usage vs sqlalchemy": 0.4,
        }
        report.rows += token_rows(v, tokens, sizes, targets)
        list_medians = []
        done = sizes.events[0]
        for size in sizes.events:
            if size > done:
                started = time.perf_counter()
                build.execute("BEGIN")
                build.executemany(
                    st.insert_audit, new_events(SQLITE, done, size - done, project_ids)
                )
                build.execute("COMMIT")
                build.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                report.extra["build_seconds"].append(round(time.perf_counter() - started, 2))
                done = size
            rows, median = list_rows(v, project_ids[0], size, size * 9 // 10, sizes, 1.15)
            report.rows += rows
            list_medians.append(median)
        report.rows.append(flat_row(sizes, list_medians))
        report.rows += create_row(v, project_ids[1], sizes, 1.1)
        raws = {"raw executemany": sqlite_batch_insert(raw)}
        report.rows += batch_insert_rows(db, raws, project_ids[2], sizes, 1.2)
        report.rows.append(proxy_path_row(db, tokens, sizes, 2.0))
        report.rows += spool_rows(db, project_ids[3], sizes)
        report.rows += sqlite_thread_rows(db, path, busy, tokens, sizes)
        report.rows += sqlite_async_rows(db, path, busy, tokens, sizes)
        report.rows += encryption_rows(folder, sizes)
    finally:
        db.close()
        raw.close()
        build.close()
    return report


def audit_columns() -> str:
    """The ``audit_events`` columns of the library's insert, in its order."""
    return Statements(SQLITE).insert_audit.split("(", 1)[1].split(")", 1)[0]


def sqlite_batch_insert(conn: sqlite3.Connection) -> BatchInsert:
    """The raw driver's insert-or-skip of a batch: one executemany of INSERT OR IGNORE
    in one write transaction."""
    columns = audit_columns()
    marks = ", ".join("?" for _ in columns.split(","))
    sql = f"INSERT OR IGNORE INTO audit_events ({columns}) VALUES ({marks})"

    def insert(events: list[AuditEvent]) -> int:
        rows = [encoded_event(SQLITE, values(e)) for e in events]
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.executemany(sql, rows).rowcount
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return count

    return insert


def flat_row(sizes: Sizes, medians: list[float]) -> Row:
    """Listing stays flat as the table grows tenfold."""
    small, large = medians
    ratio = large / small
    label = f"list flat: {sizes.events[1]:,} / {sizes.events[0]:,}"
    return Row(
        label,
        "large",
        "small",
        large,
        small,
        ratio,
        ratio,
        ratio,
        "<= 1.2",
        ratio <= 1.2,
        note="ratio of medians",
    )


def sqlite_thread_rows(
    db: DB, path: str, busy: float, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    """Increments at 1, 4, 8, 16 threads: one DB vs one raw connection per thread."""
    st = Statements(SQLITE)
    rows = []
    for count in sizes.threads:
        conns = [sqlite_connect(path, busy) for _ in range(count)]

        def ours(index: int) -> Callable[[], object]:
            token = tokens[index]
            return lambda: db.increment_token_usage(token)

        def raw(index: int, conns: list[sqlite3.Connection] = conns) -> Callable[[], object]:
            token, conn = tokens[index], conns[index]

            def call() -> object:
                stamp = encode_text_timestamp(datetime.now(UTC))
                row = conn.execute(st.increment_usage, (stamp, token, stamp)).fetchall()[0]
                return decoded_token(row, datetime.fromisoformat)

            return call

        rates = thread_rounds({"ours": ours, "raw": raw}, count, sizes)
        rows.append(
            ratio_row(f"increment x {count} threads", rates, "ours", "raw", None, unit="ops/s")
        )
        for conn in conns:
            conn.close()
    return rows


def sqlite_async_rows(
    db: DB, path: str, busy: float, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    """The asyncio rows on the sync section's file, on one event loop: an AsyncDB
    (configured as ``db``) against raw aiosqlite, when installed, at 1 task; increments
    at 8 tasks against ``db`` at 8 threads."""
    return asyncio.run(_sqlite_async_rows(db, path, busy, tokens, sizes))


async def _sqlite_async_rows(
    db: DB, path: str, busy: float, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    try:  # optional, and untyped for mypy wherever it is missing
        aiosqlite: Any = importlib.import_module("aiosqlite")
    except ImportError:
        aiosqlite = None
    adb = await aio.new_from_full_config(db.config)
    conn: Any = None
    try:
        raw = None
        if aiosqlite is not None:
            conn = await aiosqlite.connect(path, timeout=busy, isolation_level=None)
            for pragma in sqlite_pragmas(busy):
                await conn.execute(pragma)

            async def execute(sql: str, params: Any) -> list[Any]:
                return list(await conn.execute_fetchall(sql, params))

            raw = async_raw_token_calls(SQLITE, execute, datetime.fromisoformat)
        await check_async_equal(adb, db, raw, tokens[1])
        rows: list[Row] = []
        if raw is None:
            note = "skipped: aiosqlite is not installed (pip install aiosqlite)"
            rows.append(skipped_row("aio get/increment (1 task)", note))
        else:
            rows += await async_token_rows(adb, raw, tokens, sizes, 1.3, None)
        count = ASYNC_TASKS["sqlite"]

        def aio_worker(index: int) -> Callable[[], Awaitable[object]]:
            token = tokens[index]
            return lambda: adb.increment_token_usage(token)

        def sync_worker(index: int) -> Callable[[], object]:
            token = tokens[index]
            return lambda: db.increment_token_usage(token)

        async def aio_run() -> float:
            return await tasks_rate(count, sizes.thread_calls, aio_worker)

        async def sync_run() -> float:  # blocks the loop, on which nothing else runs then
            return threaded(count, sizes.thread_calls, sync_worker)

        rates = await rate_rounds({"aio": aio_run, "sync": sync_run}, sizes.thread_rounds)
        rows.append(
            ratio_row(
                f"aio increment x {count} tasks",
                rates,
                "aio",
                "sync",
                1.0,
                higher_is_better=True,
                unit="ops/s",
                note=f"vs DB at {count} threads",
            )
        )
        return rows
    finally:
        if conn is not None:
            await conn.close()
        await adb.close()


def encryption_rows(folder: Path, sizes: Sizes) -> list[Row]:
    """Upstream keys encrypted at rest (enc:v1) against plaintext: project reads, where
    each key is decrypted; token calls never touch the cipher."""
    import base64

    dbs: dict[str, DB] = {}
    for label, key in (("plaintext", None), ("enc:v1", base64.b64encode(os.urandom(32)).decode())):
        config = FullConfig(
            driver="sqlite", path=str(folder / f"keys-{label}.db"), encryption_key=key
        )
        dbs[label] = new_from_full_config(config)
    try:
        ids = {
            label: db.create_project(Project(name="p", openai_api_key="sk-upstream")).id
            for label, db in dbs.items()
        }
        for db in dbs.values():
            for i in range(99):
                db.create_project(Project(name=f"p{i:03}", openai_api_key=f"sk-upstream-{i}"))
        calls = sizes.block

        def getter(label: str) -> Callable[[Any], object]:
            db, project_id = dbs[label], ids[label]
            return lambda _: db.get_project_by_id(project_id)

        times = interleave({k: getter(k) for k in dbs}, lambda name: range(calls), sizes.rounds)
        rows = [ratio_row("get_project_by_id", times, "enc:v1", "plaintext", None)]

        def lister(label: str) -> Callable[[Any], object]:
            db = dbs[label]
            return lambda _: db.list_projects()

        lists = {k: lister(k) for k in dbs}
        times = interleave(lists, lambda name: range(max(calls // 100, 5)), sizes.rounds)
        rows.append(ratio_row("list_projects (100)", times, "enc:v1", "plaintext", None))
        return rows
    finally:
        for db in dbs.values():
            db.close()


# -- PostgreSQL -----------------------------------------------------------------------------------


def bench_postgres(url: str, sizes: Sizes, sa_wanted: bool) -> Report | None:
    """Every PostgreSQL figure, in a schema of its own (dropped at the end); None when no
    server answers (outside CI, where that fails the run)."""
    import psycopg
    from psycopg import conninfo

    report = Report("postgres")
    schema = f"bench_{os.getpid()}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["?"])[0]
        if os.environ.get("CI"):
            raise CheckFailed(f"PostgreSQL is required under CI: {reason}") from None
        print(f"PostgreSQL: skipped, no server answers ({reason}); --no-postgres to silence")
        return None
    try:
        scoped = conninfo.make_conninfo(url, options=f"-csearch_path={schema}")
        pool = max(16, *sizes.threads)
        config = FullConfig(
            driver="postgres", database_url=scoped, max_open_conns=pool, max_idle_conns=pool
        )
        # The session options the backend sets on every connection.
        statement_ms = round(config.statement_timeout.total_seconds() * 1000)
        lock_ms = max(1, round(config.busy_timeout.total_seconds() * 1000))
        options = (
            f"-csearch_path={schema} -c statement_timeout={statement_ms} -c lock_timeout={lock_ms}"
        )
        db = new_from_full_config(config)
        try:
            postgres_body(report, db, url, options, scoped, sizes, sa_wanted)
        finally:
            db.close()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return report


def postgres_body(
    report: Report, db: DB, url: str, options: str, scoped: str, sizes: Sizes, sa_wanted: bool
) -> None:
    import psycopg

    from llm_proxy_db_postgres._dialect import POSTGRES

    st = Statements(POSTGRES)
    projects, token_params, project_ids = seed_rows(POSTGRES, sizes)
    tokens = [row[1] for row in token_params]

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(url, autocommit=True, options=options)

    build = connect()
    build.execute("SET statement_timeout = 0")  # loading a million rows outlasts the session's
    raw = connect()
    started = time.perf_counter()

    def add_events(start: int, count: int) -> None:
        columns = st.insert_audit.split("(", 1)[1].split(")", 1)[0]
        with build.cursor() as cur, cur.copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
            for row in new_events(POSTGRES, start, count, project_ids):
                copy.write_row(row)
        build.execute("ANALYZE audit_events")

    with build.transaction(), build.cursor() as cur:
        cur.executemany(st.insert_project, projects)
        cur.executemany(st.insert_token, token_params)
    add_events(0, sizes.events[0])
    build.execute("ANALYZE")
    report.extra["build_seconds"] = [round(time.perf_counter() - started, 2)]

    def execute(sql: str, params: Any) -> list[Any]:
        return raw.execute(sql, params).fetchall()

    def write(sql: str, params: Any) -> int:
        return raw.execute(sql, params).rowcount

    get, increment, listing, insert = raw_variants(POSTGRES, execute, write, aware)
    sa = None
    if sa_wanted:
        sa = sqlalchemy_variants("postgresql+psycopg://", connect, postgres=True)
    v = Variants(POSTGRES, db, get, increment, listing, insert, sa)
    try:
        check_equal(v, tokens, AuditEventFilter(project_id=project_ids[0], limit=PAGE))
        targets = {"get_token_by_id": 1.05, "increment_token_usage": 1.05}
        report.rows += token_rows(v, tokens, sizes, targets)
        list_medians = []
        done = sizes.events[0]
        for size in sizes.events:
            if size > done:
                started = time.perf_counter()
                add_events(done, size - done)
                report.extra["build_seconds"].append(round(time.perf_counter() - started, 2))
                done = size
            rows, median = list_rows(v, project_ids[0], size, size * 9 // 10, sizes, 1.15)
            report.rows += rows
            list_medians.append(median)
        report.rows.append(flat_row(sizes, list_medians))
        report.rows += create_row(v, project_ids[1], sizes, 1.1)
        raws = postgres_batch_inserts(raw)
        report.rows += batch_insert_rows(db, raws, project_ids[2], sizes, 1.2)
        report.rows.append(proxy_path_row(db, tokens, sizes, 2.0))
        report.rows += spool_rows(db, project_ids[3], sizes)
        report.rows += postgres_thread_rows(db, url, options, tokens, sizes)
        report.rows += postgres_coalescing_rows(db, url, options, tokens, sizes)
        report.rows += postgres_async_rows(db, url, options, tokens, sizes)
        report.extra["processes"] = processes_run(scoped, connect, tokens, sizes)
    finally:
        raw.close()
        build.close()


def postgres_batch_inserts(conn: Any) -> dict[str, BatchInsert]:
    """The raw driver's insert-or-skip of a batch, five ways: one multi-row INSERT ... ON
    CONFLICT DO NOTHING (its text held per batch size; psycopg parses its placeholders on
    every call, the text being too long for its cache), executemany of the one-row form
    (psycopg pipelines it) in one transaction, one INSERT ... SELECT FROM unnest() of one
    array per column (a short statement: one round trip, 15 parameters), the same from
    jsonb_array_elements() of one JSON parameter, and COPY into a temporary table then
    INSERT ... SELECT ... ON CONFLICT DO NOTHING in one transaction."""
    from llm_proxy_db_postgres._dialect import POSTGRES

    columns = audit_columns()
    width = len(columns.split(","))
    one = "(" + ", ".join("%s" for _ in range(width)) + ")"
    single = f"INSERT INTO audit_events ({columns}) VALUES {one} ON CONFLICT DO NOTHING"
    texts: dict[int, str] = {}

    def multi_row(events: list[AuditEvent]) -> int:
        sql = texts.get(len(events))
        if sql is None:
            rows = ", ".join(one for _ in events)
            sql = texts[len(events)] = (
                f"INSERT INTO audit_events ({columns}) VALUES {rows} ON CONFLICT DO NOTHING"
            )
        params = [p for e in events for p in encoded_event(POSTGRES, values(e))]
        count: int = conn.execute(sql, params).rowcount
        return count

    def executemany(events: list[AuditEvent]) -> int:
        rows = [encoded_event(POSTGRES, values(e)) for e in events]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(single, rows)
            count: int = cur.rowcount
        return count

    names = [name.strip() for name in columns.split(",")]
    arrays = ", ".join("%s::timestamp[]" if name == "timestamp" else "%s::text[]" for name in names)
    unnested = (
        f"INSERT INTO audit_events ({columns}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT DO NOTHING"
    )

    def unnest(events: list[AuditEvent]) -> int:
        rows = [encoded_event(POSTGRES, values(e)) for e in events]
        count: int = conn.execute(
            unnested, [list(column) for column in zip(*rows, strict=True)]
        ).rowcount
        return count

    fields = ", ".join(
        f"(r ->> {i})::timestamp" if name == "timestamp" else f"r ->> {i}"
        for i, name in enumerate(names)
    )
    from_json = (
        f"INSERT INTO audit_events ({columns}) SELECT {fields} "
        "FROM jsonb_array_elements(%s::jsonb) AS r ON CONFLICT DO NOTHING"
    )

    def as_json(events: list[AuditEvent]) -> int:
        rows = [encoded_event(POSTGRES, values(e)) for e in events]
        payload = json.dumps(rows, default=datetime.isoformat)
        count: int = conn.execute(from_json, (payload,)).rowcount
        return count

    conn.execute("CREATE TEMP TABLE bench_stage (LIKE audit_events) ON COMMIT DELETE ROWS")
    staged = f"INSERT INTO audit_events ({columns}) SELECT {columns} FROM bench_stage "
    staged += "ON CONFLICT DO NOTHING"

    def copy(events: list[AuditEvent]) -> int:
        rows = [encoded_event(POSTGRES, values(e)) for e in events]
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(f"COPY bench_stage ({columns}) FROM STDIN") as stream:
                for row in rows:
                    stream.write_row(row)
            count: int = cur.execute(staged).rowcount
        return count

    return {
        "raw multi-row": multi_row,
        "raw executemany": executemany,
        "raw unnest": unnest,
        "raw json": as_json,
        "raw COPY + insert": copy,
    }


def postgres_thread_rows(
    db: DB, url: str, options: str, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    """Increments at 1, 4, 8, 16 threads: one DB vs a raw psycopg_pool sized alike."""
    from psycopg_pool import ConnectionPool

    from llm_proxy_db_postgres._dialect import POSTGRES

    sql = Statements(POSTGRES).increment_usage
    rows = []
    biggest = max(sizes.threads)
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=biggest,
        max_size=biggest,
        kwargs={"autocommit": True, "options": options},
        open=True,
    )
    try:
        pool.wait()
        for count in sizes.threads:

            def ours(index: int) -> Callable[[], object]:
                token = tokens[index]
                return lambda: db.increment_token_usage(token)

            def raw(index: int) -> Callable[[], object]:
                token = tokens[index]

                def call() -> object:
                    stamp = encode_naive_utc(datetime.now(UTC))
                    with pool.connection() as conn:
                        row = conn.execute(sql, (stamp, token, stamp)).fetchall()[0]
                    return decoded_token(row, aware)

                return call

            rates = thread_rounds({"ours": ours, "raw": raw}, count, sizes)
            target = 0.95 if count >= 8 else None
            rows.append(
                ratio_row(
                    f"increment x {count} threads",
                    rates,
                    "ours",
                    "raw",
                    target,
                    higher_is_better=True,
                    unit="ops/s",
                )
            )
    finally:
        pool.close()
    return rows


COALESCE_THREADS = 32
"""Client threads (and pgbench clients) of the coalescing rows (issue 14's bar)."""


PGBENCH_MODES = ("simple", "prepared")
"""pgbench's query modes of the coalescing comparison: each statement planned every time,
and prepared once per client (its plan reused: the fastest form pgbench has)."""


def find_pgbench() -> str | None:
    """The pgbench executable: on PATH, or Debian's versioned folder."""
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    return str(candidates[0]) if candidates else None


def pgbench_script(sql: str, tokens: Sequence[str], stamp: str) -> str:
    """A pgbench script running ``sql`` (the library's increment) once per transaction
    with literal parameters, each client on its own token, ``tokens[client_id]``, as each
    of our threads is (a tree of ``\\if`` on ``:client_id``: log2(len) comparisons, done
    by pgbench itself; in prepared mode a client prepares its one statement once)."""
    parts = sql.split("%s")
    if len(parts) != 4 or "%%" in sql:
        raise CheckFailed(f"unexpected increment statement: {sql}")

    def quoted(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def statement(token: str) -> str:
        params = (quoted(stamp), quoted(token), quoted(stamp))
        text = parts[0] + "".join(p + rest for p, rest in zip(params, parts[1:], strict=True))
        return text + ";"

    def branch(low: int, high: int) -> list[str]:
        if high - low == 1:
            return [statement(tokens[low])]
        middle = (low + high) // 2
        head = [f"\\if :client_id < {middle}", *branch(low, middle), "\\else"]
        return [*head, *branch(middle, high), "\\endif"]

    return "\n".join(branch(0, len(tokens))) + "\n"


def pgbench_window(
    pgbench: str, url: str, options: str, script: Path, seconds: int, done: list[int], mode: str
) -> float:
    """One pgbench run of ``script`` at 32 clients for ``seconds`` in query ``mode``
    (``simple``: each statement parsed and planned; ``prepared``: each prepared once per
    client, then executed by name): its tps (without connection time); appends the
    transactions it processed to ``done``."""
    command = [
        pgbench,
        "-n",
        "-M",
        mode,
        "-c",
        str(COALESCE_THREADS),
        "-j",
        str(min(COALESCE_THREADS, os.cpu_count() or 1)),
        "-T",
        str(seconds),
        "-f",
        str(script),
        url,
    ]
    env = {**os.environ, "PGOPTIONS": options}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    out = result.stdout + result.stderr
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    processed = re.search(r"actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if result.returncode or tps is None or processed is None:
        raise CheckFailed(f"pgbench failed ({result.returncode}): {out.strip()[-2000:]}")
    check("pgbench: failed transactions", int(failed.group(1)) if failed else 0, 0)
    done.append(int(processed.group(1)))
    return float(tps.group(1))


def rate_windows(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """The rate each variant returns, per interleaved window (one warm-up round; the
    order rotates from round to round)."""
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for number in range(-1, rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            rate = variants[name]()
            if number >= 0:
                rates[name].append(rate)
    return rates


def p50_windows(
    variants: dict[str, Callable[[], object]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """The median latency (us) of ``calls`` calls of each variant, per interleaved window."""
    names = list(variants)
    p50s: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for number in range(-1, rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            fn, latencies = variants[name], []
            for _ in range(calls):
                start = clock()
                fn()
                latencies.append(clock() - start)
            if number >= 0:
                p50s[name].append(statistics.median(latencies) * 1e6)
    return p50s


def postgres_coalescing_rows(
    db: DB, url: str, options: str, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    """Increments at 32 threads through a DB with ``coalesce_increments`` against one
    without (both configured as ``db`` but with a pool of 32), on distinct tokens per
    thread and on one shared token; pgbench running the library's UPDATE at 32 clients,
    in the same rounds as the distinct-token windows; the p50 latency at 1 thread. The
    request counts must then add up exactly to every acknowledged increment."""
    count = COALESCE_THREADS
    calls = max(sizes.thread_calls // 2, 1)
    started = time.perf_counter()
    chosen = list(tokens[:count])  # a token per thread, and per pgbench client
    shared = chosen[0]
    settings = attrs.evolve(db.config, max_open_conns=count, max_idle_conns=count)
    coalesced = new_from_full_config(attrs.evolve(settings, coalesce_increments=True))
    plain = new_from_full_config(settings)
    scratch = tempfile.TemporaryDirectory(prefix="llm-proxy-db-pgbench-")
    folder = scratch.name
    rows: list[Row] = []
    pgbench_done: list[int] = []
    acknowledged = 0
    try:
        before = sum(plain.get_token_by_id(t).request_count for t in chosen)
        counted = coalesced.increment_token_usage(shared)
        check("coalesced increment", values(plain.get_token_by_id(shared)), values(counted))
        acknowledged += 1

        def window(target: DB, same: bool) -> Callable[[], float]:
            each = max(calls // 3, 1) if same else calls  # one token: the plain DB is slow

            def worker(index: int) -> Callable[[], object]:
                token = shared if same else chosen[index]
                return lambda: target.increment_token_usage(token)

            def run() -> float:
                nonlocal acknowledged
                rate = threaded(count, each, worker)
                acknowledged += count * each
                return rate

            return run

        distinct: dict[str, Callable[[], float]] = {
            "coalesced": window(coalesced, False),
            "plain": window(plain, False),
        }
        pgbench = find_pgbench()
        if pgbench is None:
            note = "pgbench not found: row skipped"
        else:
            note = ""
            script = Path(folder) / "increment.sql"
            from llm_proxy_db_postgres._dialect import POSTGRES

            stamp = encode_naive_utc(datetime.now(UTC)).isoformat(sep=" ")
            sql = Statements(POSTGRES).increment_usage
            script.write_text(pgbench_script(sql, chosen, stamp))
            seconds = math.ceil(sizes.process_seconds / 2)
            for mode in PGBENCH_MODES:
                distinct[f"pgbench {mode}"] = functools.partial(
                    pgbench_window, pgbench, url, options, script, seconds, pgbench_done, mode
                )
        rates = rate_windows(distinct, sizes.thread_rounds)
        label = f"increment x {count} threads, coalesced"
        rows.append(
            ratio_row(
                label,
                rates,
                "coalesced",
                "plain",
                1.5,
                higher_is_better=True,
                unit="ops/s",
                note="a token per thread",
            )
        )
        for mode in PGBENCH_MODES:
            if pgbench is None:
                rows.append(skipped_row(f"pgbench UPDATE x {count} clients", note))
                break
            rows.append(
                ratio_row(
                    f"pgbench UPDATE x {count} clients",
                    rates,
                    "coalesced",
                    f"pgbench {mode}",
                    0.95,
                    higher_is_better=True,
                    unit="ops/s",
                    note=f"-M {mode}, a token per client, -T {seconds}",
                )
            )
        one = rate_windows(
            {"coalesced": window(coalesced, True), "plain": window(plain, True)},
            sizes.thread_rounds,
        )
        rows.append(
            ratio_row(
                label,
                one,
                "coalesced",
                "plain",
                1.5,
                higher_is_better=True,
                unit="ops/s",
                note="one shared token",
            )
        )
        latency_token = chosen[1 % len(chosen)]
        p50s = p50_windows(
            {
                "coalesced": lambda: coalesced.increment_token_usage(latency_token),
                "plain": lambda: plain.increment_token_usage(latency_token),
            },
            sizes.block,
            sizes.rounds,
        )
        acknowledged += 2 * sizes.block * (sizes.rounds + 1)
        rows.append(
            ratio_row("increment p50 x 1 thread, coalesced", p50s, "coalesced", "plain", 1.15)
        )
        after = sum(plain.get_token_by_id(t).request_count for t in chosen)
        check("coalescing: counted increments", after - before, acknowledged + sum(pgbench_done))
        print(f"postgres  coalescing rows: {time.perf_counter() - started:.1f} s")
    finally:
        coalesced.close()
        plain.close()
        scratch.cleanup()
    return rows


def postgres_async_rows(
    db: DB, url: str, options: str, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    """The asyncio rows on the sync section's schema, on one event loop: an AsyncDB
    (configured as ``db``) against a raw psycopg ``AsyncConnectionPool`` of the same
    min/max size, at 1 task and at 64."""
    return asyncio.run(_postgres_async_rows(db, url, options, tokens, sizes))


async def _postgres_async_rows(
    db: DB, url: str, options: str, tokens: Sequence[str], sizes: Sizes
) -> list[Row]:
    from psycopg_pool import AsyncConnectionPool

    from llm_proxy_db_postgres._backend import pool_sizing
    from llm_proxy_db_postgres._dialect import POSTGRES

    adb = await aio.new_from_full_config(db.config)
    sizing = pool_sizing(db.config, name="bench-raw-async")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, kwargs={"autocommit": True, "options": options}, **sizing
    )
    try:
        await pool.open(wait=True)

        async def execute(sql: str, params: Any) -> list[Any]:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                rows: list[Any] = await cursor.fetchall()
                return rows

        raw = async_raw_token_calls(POSTGRES, execute, aware)
        await check_async_equal(adb, db, raw, tokens[1])
        return await async_token_rows(adb, raw, tokens, sizes, 1.15, ASYNC_TASKS["postgres"])
    finally:
        await pool.close()
        await adb.close()


def _process_main(
    url: str, tokens: list[str], threads: int, seconds: float, barrier: Any, results: Any
) -> None:
    """One process of the multi-process run: its own DB, ``threads`` threads incrementing
    the shared token set for ``seconds``; puts (acknowledged, failed, seconds)."""
    db = new_from_full_config(
        FullConfig(driver="postgres", database_url=url, max_open_conns=threads, auto_migrate=False)
    )
    counts = [[0, 0] for _ in range(threads)]
    go = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        tally = counts[index]
        position = index + os.getpid()
        go.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            position += 1
            try:
                db.increment_token_usage(tokens[position % len(tokens)])
                tally[0] += 1
            except TransientError:
                tally[1] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    go.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    db.close()
    results.put((sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed))


def processes_run(
    scoped: str, connect: Callable[[], Any], tokens: Sequence[str], sizes: Sizes
) -> dict[str, Any]:
    """P processes x T threads on one database; the counts must add up exactly."""
    shared = list(tokens[-32:])
    count_sql = "SELECT COALESCE(SUM(request_count), 0) FROM tokens WHERE token = ANY(%s)"
    with connect() as conn:
        before = conn.execute(count_sql, (shared,)).fetchone()[0]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(sizes.processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(scoped, shared, sizes.process_threads, sizes.process_seconds, barrier, results),
        )
        for _ in range(sizes.processes)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    with connect() as conn:
        after = conn.execute(count_sql, (shared,)).fetchone()[0]
    acked = sum(o[0] for o in outcomes)
    failed = sum(o[1] for o in outcomes)
    elapsed = max(o[2] for o in outcomes)
    figures = {
        "processes": sizes.processes,
        "threads": sizes.process_threads,
        "tokens": len(shared),
        "acknowledged": acked,
        "failed": failed,
        "counted": after - before,
        "ops_per_s": round(acked / elapsed),
    }
    print(
        f"postgres  {sizes.processes} processes x {sizes.process_threads} threads: "
        f"{figures['ops_per_s']:,} ops/s, {acked:,} acknowledged, {failed} failed, "
        f"{after - before:,} counted"
    )
    if failed == 0:
        check("exact count over processes", after - before, acked)
    elif not acked <= after - before <= acked + failed:
        raise CheckFailed(f"counted {after - before} outside [{acked}, {acked + failed}]")
    return figures


# -- MySQL / MariaDB ------------------------------------------------------------------------------

MYSQL_THREADS = (1, 8)
"""The thread counts of the MySQL rows (issue 13's bars)."""


def mysql_connect_kwargs(url: str) -> dict[str, Any]:
    """PyMySQL ``connect`` arguments for a ``mysql://`` (or ``mariadb://``) URL."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "connect_timeout": 5,
    }
    if parts.path.strip("/"):
        kwargs["database"] = unquote(parts.path.strip("/"))
    return kwargs


def mysql_session_kwargs(config: FullConfig, *, mariadb: bool) -> dict[str, Any]:
    """What the MySQL backend sets on each of its connections: rowcounts of matched rows
    (``CLIENT.FOUND_ROWS``), autocommit, ``utf8mb4`` and its ``SET SESSION`` (UTC, the
    strict ``sql_mode``, the lock wait and statement time limits)."""
    from pymysql.constants import CLIENT

    from llm_proxy_db_mysql._backend import session_settings

    return {
        "client_flag": CLIENT.FOUND_ROWS,
        "autocommit": True,
        "charset": "utf8mb4",
        "init_command": session_settings(config, mariadb=mariadb),
    }


def bench_mysql(url: str, sizes: Sizes) -> Report | None:
    """The MySQL token figures, in a database of its own (dropped at the end); None when
    the backend is not installed or (outside CI, where that fails the run) no server
    answers."""
    try:
        import pymysql

        from llm_proxy_db_mysql._dialect import MYSQL
    except ImportError as exc:
        print(f"MySQL: skipped, its backend is not installed ({exc}); --no-mysql to silence")
        return None
    from urllib.parse import urlsplit, urlunsplit

    server = mysql_connect_kwargs(url)
    database = f"llmpdb_bench_{os.getpid()}"
    try:
        admin = pymysql.connect(**server, autocommit=True)
    except pymysql.Error as exc:
        if os.environ.get("CI"):
            raise CheckFailed(f"MySQL is required under CI: {exc}") from None
        print(f"MySQL: skipped, no server answers ({exc}); --no-mysql to silence")
        return None
    report = Report("mysql")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT VERSION()")
            report.extra["server"] = str(cur.fetchone()[0])
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        scoped = urlunsplit(urlsplit(url)._replace(path=f"/{database}"))
        pool = max(16, *MYSQL_THREADS)
        config = FullConfig(
            driver="mysql", database_url=scoped, max_open_conns=pool, max_idle_conns=pool
        )
        db = new_from_full_config(config)  # migrated by the library
        try:
            session = mysql_session_kwargs(
                config, mariadb="mariadb" in report.extra["server"].lower()
            )
            mysql_body(report, db, MYSQL, {**server, **session, "database": database}, sizes)
        finally:
            db.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
    return report


def mysql_body(
    report: Report, db: DB, dialect: Dialect, server: dict[str, Any], sizes: Sizes
) -> None:
    import pymysql

    st = Statements(dialect)
    projects, token_params, _ = seed_rows(dialect, sizes)
    tokens = [row[1] for row in token_params]

    def connect() -> pymysql.connections.Connection[Any]:
        return pymysql.connect(**server)

    started = time.perf_counter()
    with connect() as build, build.cursor() as cur:
        build.begin()
        cur.executemany(st.insert_project, projects)
        cur.executemany(st.insert_token, token_params)
        build.commit()
    report.extra["build_seconds"] = [round(time.perf_counter() - started, 2)]
    decode = dialect.decode_time

    def raw_calls(
        conn: pymysql.connections.Connection[Any],
    ) -> tuple[Callable[[str], tuple[Any, ...]], Callable[[str], tuple[Any, ...]]]:
        """The library's statements on one held connection: a read; an UPDATE (the count
        in its OK packet), then the row read back."""
        cur = conn.cursor()

        def get(token: str) -> tuple[Any, ...]:
            cur.execute(st.get_token, (token,))
            return decoded_token(cur.fetchall()[0], decode)

        def increment(token: str) -> tuple[Any, ...]:
            stamp = dialect.encode_time(datetime.now(UTC))
            if cur.execute(st.increment_usage, (stamp, token, stamp)) != 1:
                raise CheckFailed(f"raw increment of {token[:8]}... counted nothing")
            return get(token)

        return get, increment

    held = connect()
    conns: list[pymysql.connections.Connection[Any]] = []
    try:
        raw_get, raw_increment = raw_calls(held)
        token = tokens[0]
        check("raw get_token_by_id", raw_get(token), values(db.get_token_by_id(token)))
        counted = values(db.increment_token_usage(token))
        check("increment read back raw", raw_get(token), counted)
        again = raw_increment(token)
        check("raw increment_token_usage", again, values(db.get_token_by_id(token)))
        check("raw increment counted one more", again[5], counted[5] + 1)
        calls = sizes.block
        picked = [tokens[i * len(tokens) // calls] for i in range(calls)]
        pairs: list[tuple[str, Callable[[str], object], Callable[[str], object]]] = [
            ("get_token_by_id", db.get_token_by_id, raw_get),
            ("increment_token_usage", db.increment_token_usage, raw_increment),
        ]
        for operation, ours, raw in pairs:
            times = interleave({"ours": ours, "raw": raw}, lambda name: picked, sizes.rounds)
            report.rows.append(ratio_row(f"{operation} (1 thread)", times, "ours", "raw", 1.15))
        count = max(MYSQL_THREADS)
        conns = [connect() for _ in range(count)]
        per_thread = [raw_calls(conn) for conn in conns]
        for position, (operation, ours, _) in enumerate(pairs):

            def mine(index: int, fn: Callable[[str], object] = ours) -> Callable[[], object]:
                token = tokens[index]
                return lambda: fn(token)

            def theirs(index: int, position: int = position) -> Callable[[], object]:
                token, fn = tokens[index], per_thread[index][position]
                return lambda: fn(token)

            rates = thread_rounds({"ours": mine, "raw": theirs}, count, sizes)
            report.rows.append(
                ratio_row(
                    f"{operation} x {count} threads",
                    rates,
                    "ours",
                    "raw",
                    round(1 / 1.15, 2),
                    higher_is_better=True,
                    unit="ops/s",
                    note="raw: a held connection per thread",
                )
            )
    finally:
        for conn in [held, *conns]:
            conn.close()


# -- output --------------------------------------------------------------------------------------


def print_report(report: Report) -> None:
    """The backend's table."""
    print(f"\n== {report.backend} ==")
    print(
        f"{'operation':40} {'ours':>10} {'other':>10} {'vs':11} "
        f"{'ratio median [min-max]':24} {'target':8} met"
    )
    for r in report.rows:
        if r.ours == "-" or r.ours_us == 0:
            print(f"{r.operation:40} {r.note}")
            continue
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        cells = (
            f"{r.ours_us:10.1f} {r.other_us:10.1f}"
            if r.unit == "us/op"
            else f"{r.ours_us:10.0f} {r.other_us:10.0f}"
        )
        span = f"{r.ratio:5.2f}x [{r.low:.2f}-{r.high:.2f}]"
        label = f"{r.ours}/{r.other}"
        line = f"{r.operation:40} {cells} {label:11} {span:24} {r.target:8} {met}"
        print(line + (f"  ({r.note})" if r.note else "") + ("  ops/s" if r.unit != "us/op" else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few rounds (CI)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL database to use (a schema of its own, dropped after)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--mysql",
        metavar="URL",
        default=DEFAULT_MYSQL,
        help="MySQL or MariaDB server to use (a database of its own, dropped after)",
    )
    parser.add_argument("--no-mysql", action="store_true", help="skip MySQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--no-sqlalchemy", action="store_true", help="skip SQLAlchemy Core")
    parser.add_argument(
        "--json", metavar="PATH", help="where to write every figure (default: the temp folder)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sa_wanted = not args.no_sqlalchemy and have_sqlalchemy()
    if not sa_wanted:
        print("SQLAlchemy Core: not installed or skipped; its rows are left out")
    started = time.perf_counter()
    reports: list[Report] = []
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="llm-proxy-db-bench-") as folder:
            if not args.no_sqlite:
                reports.append(bench_sqlite(Path(folder), sizes, sa_wanted))
                print_report(reports[-1])
            if not args.no_postgres:
                postgres = bench_postgres(args.postgres, sizes, sa_wanted)
                if postgres is not None:
                    reports.append(postgres)
                    print_report(postgres)
            if not args.no_mysql:
                mysql = bench_mysql(args.mysql, sizes)
                if mysql is not None:
                    reports.append(mysql)
                    print_report(mysql)
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        status = 1
    seconds = time.perf_counter() - started
    path = (
        Path(args.json)
        if args.json
        else Path(tempfile.gettempdir()) / f"llm-proxy-db-bench-{int(time.time())}.json"
    )
    document = {
        "sizes": asdict(sizes),
        "seconds": round(seconds, 1),
        "check_failed": bool(status),
        "backends": [asdict(r) for r in reports],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\n{seconds:.0f} s; every figure in {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
