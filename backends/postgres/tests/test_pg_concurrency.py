"""PostgreSQL across PROCESSES (spawned, not threads): the request limit holds exactly, and
migrations started by many processes at once apply each version exactly once."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg

from llm_proxy_db import (
    DatabaseError,
    FullConfig,
    Project,
    Token,
    TokenLimitReachedError,
    new_from_full_config,
)
from tests.fixtures.processes import run_processes

PROCESSES = 8
ATTEMPTS = 5000
LIMIT = 1000
MIGRATORS = 10
_JOIN_S = 60.0


def _config(url: str, *, auto_migrate: bool, pool: int = 2) -> FullConfig:
    return FullConfig(
        driver="postgres",
        database_url=url,
        max_open_conns=pool,
        max_idle_conns=min(pool, 1),
        conn_max_lifetime=timedelta(minutes=5),
        auto_migrate=auto_migrate,
    )


# -- workers (module level: the spawn start method imports this module in each child) -----


def _race_worker(url: str, token: str, attempts: int, barrier: Any, results: Any) -> None:
    """Opens its own DB, waits for the others, then spends ``attempts`` on ``token``."""
    ok = refused = 0
    other: list[str] = []
    loop_s = 0.0
    try:
        db = new_from_full_config(_config(url, auto_migrate=False, pool=1))
        try:
            barrier.wait(timeout=30)
            started = time.perf_counter()
            for _ in range(attempts):
                try:
                    db.increment_token_usage(token)
                    ok += 1
                except TokenLimitReachedError:
                    refused += 1
                except DatabaseError as exc:
                    other.append(f"{type(exc).__name__}: {exc}")
            loop_s = time.perf_counter() - started
        finally:
            db.close()
    except BaseException as exc:  # reported to the parent, which fails the test
        other.append(f"{type(exc).__name__}: {exc}")
    results.put((ok, refused, other, loop_s))


def _migrate_worker(url: str, barrier: Any, results: Any) -> None:
    """Waits for the others, then opens the DB with ``auto_migrate=True``."""
    try:
        barrier.wait(timeout=30)
        db = new_from_full_config(_config(url, auto_migrate=True, pool=1))
        try:
            results.put(("ok", db.migrations.version()))
        finally:
            db.close()
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_racing_on_one_token_never_overrun_its_limit(postgres_url: str) -> None:
    with new_from_full_config(_config(postgres_url, auto_migrate=True)) as db:
        project = db.create_project(Project(name="race", openai_api_key="sk-race"))
        token = db.create_token(Token(project_id=project.id, max_requests=LIMIT)).token

        per_process = ATTEMPTS // PROCESSES
        assert per_process * PROCESSES == ATTEMPTS
        started = time.perf_counter()
        results = run_processes(
            _race_worker, [(postgres_url, token, per_process)] * PROCESSES, within_s=_JOIN_S
        )
        elapsed = time.perf_counter() - started

        errors = [error for _, _, other, _ in results for error in other]
        assert errors == []
        successes = sum(ok for ok, _, _, _ in results)
        refused = sum(refused for _, refused, _, _ in results)
        racing = max(loop_s for _, _, _, loop_s in results)
        print(
            f"\n{PROCESSES} processes, {ATTEMPTS} attempts, limit {LIMIT}: "
            f"{successes} successes, {refused} refused; racing {racing:.2f}s, "
            f"{elapsed:.2f}s with spawning; "
            f"per process {[ok for ok, _, _, _ in results]}"
        )
        assert successes == LIMIT
        assert refused == ATTEMPTS - LIMIT
        stored = db.get_token_by_id(token)
        assert stored.request_count == LIMIT
        assert stored.last_used_at is not None
        # Several processes really took part (not one process doing all the work).
        assert sum(1 for ok, _, _, _ in results if ok) >= 2
        assert elapsed < 60


def test_ten_processes_migrating_a_fresh_schema_at_once_apply_each_version_once(
    postgres_url: str,
) -> None:
    results = run_processes(_migrate_worker, [(postgres_url,)] * MIGRATORS, within_s=_JOIN_S)

    assert results == [("ok", 100)] * MIGRATORS
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT version_id, COUNT(*), BOOL_AND(is_applied) FROM goose_db_version "
            "GROUP BY version_id ORDER BY version_id"
        ).fetchall()
        locks = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    assert rows == [(version, 1, True) for version in (0, 1, 2, 3, 100)]
    assert locks == (0,)
