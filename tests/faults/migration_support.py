"""Shared by the migration fault tests: a big migration set, and a child running ``up`` on
it that is SIGKILLed mid-way."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.fault_workers import migrate_up

REPO = Path(__file__).resolve().parents[2]
MIGRATION_FILES = 100
"""Files past the shipped ones; each creates a table, fills it with 2,000 rows, indexes it."""


def big_migration_source(tmp_path: Path, files: int, dialect: str) -> Path:
    source = tmp_path / f"big-{dialect}"
    shipped = (
        REPO / "backends/postgres/src/llm_proxy_db_postgres/migrations"
        if dialect == "postgres"
        else REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations"
    )
    shutil.copytree(shipped, source)
    fill = (
        "INSERT INTO t_{n} (v) SELECT g::text FROM generate_series(1, 2000) g;\n"
        if dialect == "postgres"
        else "INSERT INTO t_{n} (v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
        "SELECT x + 1 FROM c WHERE x < 2000) SELECT x FROM c;\n"
    )
    key = "SERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY"
    for n in range(101, 101 + files):
        (source / f"{n:05d}_big_{n}.sql").write_text(
            f"-- +goose Up\nCREATE TABLE t_{n} (id {key}, v TEXT);\n"
            + fill.format(n=n)
            + f"CREATE INDEX idx_t_{n} ON t_{n} (v);\n-- +goose Down\nDROP TABLE t_{n};\n"
        )
    return source


def kill_during_up(
    driver: str, where: str, source: Path, read_version: Callable[[], int], latest: int
) -> tuple[int, float]:
    """Spawn a child running ``up`` on ``source``; SIGKILL it once it is mid-way (past the
    shipped versions, before ``latest``). The version it was killed at, and when."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=migrate_up, args=(driver, where, str(source), results), daemon=True)
    child.start()
    try:
        kind, _ = results.get(timeout=60)
        assert kind == "started"
        started = time.monotonic()
        version = 0
        while time.monotonic() - started < 60:
            version = read_version()
            if version >= 101 + MIGRATION_FILES // 10:
                break
            if not child.is_alive():
                pytest.fail(f"the child ended by itself: {results.get(timeout=5)}")
            time.sleep(0.002)
        child.kill()  # SIGKILL
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL, child.exitcode
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    at = read_version()
    assert 100 < at < latest, f"not killed mid-way: the child got to version {at} of {latest}"
    return at, time.monotonic() - started
