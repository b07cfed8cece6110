"""The SQLite backend's timeouts: a lock held elsewhere (``busy_timeout``), a statement that
runs too long (``statement_timeout``, through a progress handler), the pool's wait
(``pool_timeout``); each a ``TransientError`` that names its cause."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import DB, Project, Token, TransientError
from llm_proxy_db.sql import Step
from llm_proxy_db_sqlite import SQLiteBackend


def backend_of(db: DB) -> SQLiteBackend:
    backend = db._backend
    assert isinstance(backend, SQLiteBackend)
    return backend


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """A long admin job: another connection holding the database's write lock."""
    admin = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    admin.execute("BEGIN IMMEDIATE")
    admin.execute("UPDATE tokens SET request_count = request_count")
    return admin


def _seeded(open_db: OpenDB, **overrides: object) -> tuple[DB, str]:
    db = open_db(**overrides)
    project = db.create_project(Project(name="p", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id))
    return db, token.token


def test_the_defaults_are_a_few_seconds(open_db: OpenDB) -> None:
    db = open_db()
    with backend_of(db).executor.connection() as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    assert backend_of(db)._pool._timeout == 5.0


def test_a_held_write_lock_fails_writers_after_busy_timeout(open_db: OpenDB, db_path: Path) -> None:
    db, token = _seeded(open_db, busy_timeout=timedelta(milliseconds=300))
    admin = _hold_write_lock(db_path)
    try:
        for call in (
            lambda: db.increment_token_usage(token),
            lambda: db.create_project(Project(name="q", openai_api_key="sk-upstream")),
        ):
            started = time.monotonic()
            with pytest.raises(TransientError, match="is locked") as caught:
                call()
            elapsed = time.monotonic() - started
            assert 0.25 <= elapsed < 2, elapsed
            assert "busy_timeout (0.3 s)" in str(caught.value)
            assert str(db_path) in str(caught.value)
        assert db.get_token_by_id(token).request_count == 0  # reads go on under WAL
    finally:
        admin.rollback()
        admin.close()
    assert db.increment_token_usage(token).request_count == 1


def test_an_increment_cut_off_says_it_may_have_been_counted(open_db: OpenDB, db_path: Path) -> None:
    db, token = _seeded(open_db, busy_timeout=timedelta(milliseconds=100))
    admin = _hold_write_lock(db_path)
    try:
        with pytest.raises(TransientError, match="may or may not have been counted"):
            db.increment_token_usage(token)
        with pytest.raises(TransientError, match="cache hit may or may not"):
            db.increment_cache_hit_count(token)
        with pytest.raises(TransientError) as caught:
            db.revoke_token(token)
        assert "counted" not in str(caught.value)
    finally:
        admin.rollback()
        admin.close()


def test_a_long_statement_is_interrupted_after_statement_timeout(open_db: OpenDB) -> None:
    db = open_db(statement_timeout=timedelta(milliseconds=200))
    backend = backend_of(db)
    slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"statement_timeout \(0.2 s\) and was interrupted"):
        backend.executor.run(Step(slow))
    assert time.monotonic() - started < 2
    assert db.list_projects() == []  # the connection goes on serving


def test_statement_timeout_zero_means_no_limit_and_migrations_run_without_it(
    open_db: OpenDB,
) -> None:
    db = open_db(statement_timeout=timedelta(0))
    backend = backend_of(db)
    assert type(backend.executor).__name__ == "DbApiExecutor"
    # With a limit, the migration runner's connection still has none.
    limited = backend_of(open_db(statement_timeout=timedelta(milliseconds=1)))
    with limited.migration_connection() as migration:
        rows = migration.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 300000) "
            "SELECT count(*) FROM n"
        )
    assert rows == [(300000,)]


def test_the_pool_wait_is_pool_timeout_then_a_transient_error(open_db: OpenDB) -> None:
    db = open_db(max_open_conns=1, max_idle_conns=1, pool_timeout=timedelta(milliseconds=200))
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction() as tx:
            tx.list_projects()
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"no SQLite connection free within 0.2 s: 1 in"):
            db.list_projects()
        assert 0.15 <= time.monotonic() - started < 2
    finally:
        release.set()
        holder.join(10)
