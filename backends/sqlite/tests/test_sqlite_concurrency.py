"""Many writers on one SQLite file: threads in one process, and separate processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlite_support import OpenDB, race_increments, raw_rows

from llm_proxy_db import AuditEvent, AuditEventFilter, Project, Token


def test_threads_doing_mixed_writes_never_see_database_is_locked(open_db: OpenDB) -> None:
    db = open_db()  # the default pool: up to 10 connections, so the 8 threads really contend
    project = db.create_project(Project(name="busy", openai_api_key="sk-upstream"))
    shared = db.create_token(Token(project_id=project.id))
    deadline = time.monotonic() + 1.0
    errors: list[BaseException] = []
    tally_lock = threading.Lock()
    tally = {"increments": 0, "tokens": 0, "events": 0, "transactions": 0, "hits": 0}

    def count(name: str, n: int = 1) -> None:
        with tally_lock:
            tally[name] += n

    def worker(n: int) -> None:
        i = 0
        try:
            while time.monotonic() < deadline:
                i += 1
                step = (n + i) % 5
                if step == 0:
                    db.create_token(Token(project_id=project.id))
                    count("tokens")
                elif step == 1:
                    db.increment_token_usage(shared.token)
                    count("increments")
                elif step == 2:
                    db.create_audit_event(
                        AuditEvent(action="token.use", actor=f"worker-{n}", outcome="success")
                    )
                    count("events")
                elif step == 3:
                    # Read, then write, in one unit: BEGIN IMMEDIATE must take the lock first.
                    with db.transaction() as tx:
                        tx.get_project_by_id(project.id)
                        tx.create_token(Token(project_id=project.id))
                        tx.increment_token_usage(shared.token)
                        tx.create_audit_event(
                            AuditEvent(action="tx", actor=f"worker-{n}", outcome="success")
                        )
                    count("transactions")
                    count("tokens")
                    count("increments")
                    count("events")
                else:
                    db.increment_cache_hit_count(shared.token)
                    count("hits")
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, [repr(exc) for exc in errors]
    assert tally["transactions"] > 0
    stored = db.get_token_by_id(shared.token)
    assert stored.request_count == tally["increments"]
    assert stored.cache_hit_count == tally["hits"]
    assert len(db.list_tokens(project.id)) == tally["tokens"] + 1
    assert db.count_audit_events() == tally["events"]
    assert db.count_audit_events(AuditEventFilter(action="tx")) == tally["transactions"]


def test_readers_do_not_block_a_writer_holding_a_transaction(open_db: OpenDB) -> None:
    db = open_db()
    project = db.create_project(Project(name="wal", openai_api_key="sk-upstream"))
    with db.transaction() as tx:
        tx.create_token(Token(project_id=project.id))
        # WAL: other connections read the last committed state meanwhile, without waiting.
        with ThreadPoolExecutor(2) as executor:
            seen = list(executor.map(lambda _: len(db.list_tokens()), range(2)))
        assert seen == [0, 0]
    assert len(db.list_tokens()) == 1


def test_processes_racing_increments_stop_exactly_at_max_requests(
    open_db: OpenDB, db_path: Path
) -> None:
    db = open_db()
    project = db.create_project(Project(name="racing", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id, max_requests=200))
    ctx = multiprocessing.get_context("spawn")
    processes, attempts = 4, 150  # 600 attempts for 200 requests
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=race_increments,
            args=(str(db_path), token.token, attempts, barrier, results),
        )
        for _ in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        outcomes = [results.get(timeout=60) for _ in workers]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert all(process.exitcode == 0 for process in workers)
    errors = [error for _, _, errs in outcomes for error in errs]
    assert not errors, errors
    assert sum(successes for successes, _, _ in outcomes) == 200
    assert sum(refused for _, refused, _ in outcomes) == processes * attempts - 200
    assert db.get_token_by_id(token.token).request_count == 200
    assert raw_rows(db_path, "SELECT request_count FROM tokens WHERE token = ?", [token.token]) == [
        (200,)
    ]
