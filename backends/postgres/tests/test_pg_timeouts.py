"""PostgreSQL timeouts: the session's ``statement_timeout`` and ``lock_timeout`` (set through
the startup options), a row lock held elsewhere bounded by ``busy_timeout`` (a
``TransientError`` that says the request may or may not have been counted), and the
migration runner, which runs without either."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from llm_proxy_db import DB, FullConfig, Project, Token, TransientError, new_from_full_config
from llm_proxy_db.sql import Step
from llm_proxy_db_postgres import PostgresBackend


def _open(url: str, **overrides: Any) -> DB:
    settings: dict[str, Any] = {"driver": "postgres", "database_url": url, "max_idle_conns": 1}
    settings.update(overrides)
    return new_from_full_config(FullConfig(**settings))


def _backend(db: DB) -> PostgresBackend:
    backend = db._backend
    assert isinstance(backend, PostgresBackend)
    return backend


def _show(db: DB, name: str) -> str:
    with _backend(db).executor.connection() as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_every_connection_has_the_configured_timeouts(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        assert _show(db, "statement_timeout") == "10s"
        assert _show(db, "lock_timeout") == "5s"
        assert _show(db, "search_path").startswith("s_")  # the URL's own options kept
    with _open(
        postgres_url,
        statement_timeout=timedelta(0),
        busy_timeout=timedelta(milliseconds=1500),
    ) as db:
        assert _show(db, "statement_timeout") == "0"
        assert _show(db, "lock_timeout") == "1500ms"


def test_a_row_lock_held_elsewhere_fails_the_increment_after_busy_timeout(
    postgres_url: str,
) -> None:
    with _open(postgres_url, busy_timeout=timedelta(milliseconds=300)) as db:
        project = db.create_project(Project(name="locked", openai_api_key="sk-upstream"))
        token = db.create_token(Token(project_id=project.id)).token
        with psycopg.connect(postgres_url) as other:  # a transaction holding the row
            other.execute(
                "UPDATE tokens SET request_count = request_count WHERE token = %s", (token,)
            )
            started = time.monotonic()
            with pytest.raises(TransientError) as caught:
                db.increment_token_usage(token)
            elapsed = time.monotonic() - started
            other.rollback()
        assert 0.25 <= elapsed < 2, elapsed
        message = str(caught.value)
        assert "lock timeout (lock_timeout 0.3 s)" in message
        assert "may or may not have been counted" in message
        assert token not in message
        assert db.increment_token_usage(token).request_count == 1


def test_a_long_statement_is_cancelled_after_statement_timeout(postgres_url: str) -> None:
    with _open(postgres_url, statement_timeout=timedelta(milliseconds=200)) as db:
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"statement timeout \(statement_timeout 0.2 s\)"):
            _backend(db).executor.run(Step("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 2
        assert db.list_projects() == []


def test_migrations_run_without_the_timeouts(postgres_url: str) -> None:
    with _open(postgres_url, statement_timeout=timedelta(milliseconds=100)) as db:
        backend = _backend(db)
        for exclusive in (True, False):
            with backend.migration_connection(exclusive=exclusive) as conn:
                assert conn.execute("SHOW statement_timeout") == [("0",)]
                assert conn.execute("SHOW lock_timeout") == [("0",)]
                conn.execute("SELECT pg_sleep(0.3)")
        assert _show(db, "statement_timeout") == "100ms"  # the session's own value again
        assert _show(db, "lock_timeout") == "5s"


def test_health_check_waits_for_a_connection_no_longer_than_connect_timeout(
    postgres_url: str,
) -> None:
    with _open(
        postgres_url,
        max_open_conns=1,
        pool_timeout=timedelta(seconds=10),
        connect_timeout=timedelta(seconds=2),
    ) as db:
        with db.transaction() as tx:  # holds the only connection
            tx.list_projects()
            started = time.monotonic()
            with pytest.raises(TransientError, match=r"no connection free within 2 s: 1 in use"):
                db._backend.health_check()
            assert 1.5 <= time.monotonic() - started < 4
        db.health_check()
