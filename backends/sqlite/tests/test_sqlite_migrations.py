"""The goose-compatible migrations as the SQLite backend runs them (``db.migrations``)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_support import OpenDB, race_migrate_up, raw_rows

from llm_proxy_db import Config, MigrationError, Project, Token, new
from llm_proxy_db_sqlite import SQLITE

SHIPPED = [1, 2, 3, 100]  # 1-3 are the Go llm-proxy's; ours number from 100


def goose_rows(path: Path) -> list[tuple[int, int]]:
    return [
        (int(version), int(applied))
        for version, applied in raw_rows(
            path, "SELECT version_id, is_applied FROM goose_db_version ORDER BY id"
        )
    ]


def table_names(path: Path) -> set[str]:
    return {name for (name,) in raw_rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}


def test_new_database_is_at_the_newest_version_with_status(open_db: OpenDB, db_path: Path) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    db = open_db()
    assert db.migrations.latest == SHIPPED[-1]
    assert db.migrations.version() == SHIPPED[-1]
    status = db.migrations.status()
    assert [s.version for s in status] == SHIPPED
    assert [s.name for s in status] == [
        "initial_schema",
        "add_deactivation_columns",
        "add_cache_hit_count",
        "add_hot_path_indexes",
    ]
    for entry in status:
        assert entry.applied
        assert entry.applied_at is not None
        assert entry.applied_at.utcoffset() == timedelta(0)
        assert before <= entry.applied_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert goose_rows(db_path) == [(0, 1), (1, 1), (2, 1), (3, 1), (100, 1)]
    assert db.migrations.up() == []  # nothing left to do


def test_auto_migrate_false_leaves_a_new_file_at_version_zero(
    open_db: OpenDB, db_path: Path
) -> None:
    db = open_db(auto_migrate=False)
    assert db.migrations.version() == 0
    status = db.migrations.status()
    assert [s.version for s in status] == SHIPPED
    assert all(not s.applied and s.applied_at is None for s in status)
    assert "projects" not in table_names(db_path)
    assert db.migrations.up(target=2) == [1, 2]
    assert db.migrations.version() == 2
    assert [s.applied for s in db.migrations.status()] == [True, True, False, False]
    assert db.migrations.up() == [3, 100]
    project = db.create_project(Project(name="late", openai_api_key="sk-upstream"))
    assert db.get_project_by_id(project.id) == project


def test_down_then_up_keeps_the_data(open_db: OpenDB, db_path: Path) -> None:
    db = open_db()
    project = db.create_project(Project(name="kept", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id, max_requests=5))
    db.increment_cache_hit_count(token.token, 3)

    def columns(table: str) -> list[str]:
        return [row[1] for row in raw_rows(db_path, f"PRAGMA table_info({table})")]

    def indexes() -> set[str]:
        return {
            name
            for (name,) in raw_rows(db_path, "SELECT name FROM sqlite_master WHERE type='index'")
        }

    assert db.migrations.down() == 100
    assert db.migrations.version() == 3
    assert "idx_audit_project_timestamp" not in indexes()
    assert db.migrations.down() == 3
    assert db.migrations.version() == 2
    assert "cache_hit_count" not in columns("tokens")
    assert [s.applied for s in db.migrations.status()] == [True, True, False, False]
    assert goose_rows(db_path) == [(0, 1), (1, 1), (2, 1)]

    assert db.migrations.up() == [3, 100]
    assert db.migrations.version() == 100
    assert "cache_hit_count" in columns("tokens")
    assert "idx_audit_project_timestamp" in indexes()
    stored = db.get_token_by_id(token.token)
    assert stored.max_requests == 5
    assert stored.cache_hit_count == 0  # the column came back with its default
    assert db.get_project_by_id(project.id) == project


def test_down_all_the_way_then_up_again(open_db: OpenDB, db_path: Path) -> None:
    db = open_db()
    assert [db.migrations.down() for _ in SHIPPED] == [100, 3, 2, 1]
    assert db.migrations.down() is None
    assert db.migrations.version() == 0
    assert table_names(db_path) & {"projects", "tokens", "audit_events"} == set()
    assert goose_rows(db_path) == [(0, 1)]
    assert db.migrations.up() == SHIPPED
    db.create_project(Project(name="again", openai_api_key="sk-upstream"))


def test_database_newer_than_this_package_is_refused(db_path: Path, open_db: OpenDB) -> None:
    open_db().close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO goose_db_version (version_id, is_applied, tstamp) "
            "VALUES (199, 1, '2030-01-01 00:00:00')"
        )
    conn.close()
    with pytest.raises(MigrationError, match=r"version 199 is newer") as caught:
        new(Config(path=str(db_path)))
    assert "(100)" in str(caught.value)  # the newest version shipped
    with pytest.raises(MigrationError, match="newer"):
        open_db(auto_migrate=False)  # checked even when not migrating
    # Refused means untouched: no row added or removed.
    assert goose_rows(db_path)[-1] == (199, 1)
    assert len(goose_rows(db_path)) == 6


def test_goose_table_has_goose_layout(open_db: OpenDB, db_path: Path) -> None:
    open_db()
    (ddl,) = raw_rows(db_path, "SELECT sql FROM sqlite_master WHERE name = 'goose_db_version'")[0]
    assert " ".join(ddl.split()) == " ".join(
        SQLITE.version_table_ddl.replace("IF NOT EXISTS ", "").split()
    )


def test_two_processes_running_up_apply_each_version_once(db_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    count = 2
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=race_migrate_up, args=(str(db_path), barrier, results))
        for _ in range(count)
    ]
    for process in workers:
        process.start()
    try:
        outcomes = [results.get(timeout=60) for _ in workers]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert all(process.exitcode == 0 for process in workers)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    applied = sorted(version for _, versions in outcomes for version in versions)
    assert applied == SHIPPED
    assert goose_rows(db_path) == [(0, 1), (1, 1), (2, 1), (3, 1), (100, 1)]
    counts = raw_rows(
        db_path, "SELECT version_id, COUNT(*) FROM goose_db_version GROUP BY version_id"
    )
    assert sorted(counts) == [(0, 1), (1, 1), (2, 1), (3, 1), (100, 1)]
