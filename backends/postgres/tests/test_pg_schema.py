"""PostgreSQL schema and migrations: goose's advisory lock, the schema chosen by the URL,
and the shipped migrations reproducing the Go llm-proxy's PostgreSQL schema."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import conninfo

from llm_proxy_db import (
    DB,
    FullConfig,
    MigrationError,
    Project,
    Token,
    new_from_full_config,
)
from llm_proxy_db_postgres import _backend

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer

TABLES = {"projects", "tokens", "audit_events", "goose_db_version"}
GO_INDEXES = {
    "idx_projects_name",
    "idx_tokens_project_id",
    "idx_tokens_expires_at",
    "idx_tokens_is_active",
    "idx_audit_timestamp",
    "idx_audit_action",
    "idx_audit_project_id",
    "idx_audit_client_ip",
    "idx_audit_request_id",
    "idx_audit_outcome",
    "idx_audit_ip_action",
}
_LOCK_KEY = (_backend.MIGRATION_LOCK_ID >> 32, _backend.MIGRATION_LOCK_ID & 0xFFFFFFFF)
_ADVISORY_LOCKS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %s "
    "AND objid::bigint = %s "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _open(url: str, **changes: Any) -> DB:
    return new_from_full_config(
        FullConfig(driver="postgres", database_url=url, max_open_conns=2, max_idle_conns=1)
        if not changes
        else FullConfig(driver="postgres", database_url=url, **changes)
    )


def _schema_of(url: str) -> str:
    options = conninfo.conninfo_to_dict(url)["options"]
    assert isinstance(options, str) and options.startswith("-csearch_path=")
    return options.removeprefix("-csearch_path=")


def _migration_lock_holders(conn: psycopg.Connection[Any]) -> list[int]:
    return [row[0] for row in conn.execute(_ADVISORY_LOCKS, _LOCK_KEY).fetchall()]


@pytest.fixture
def lock_holder(postgres_server: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    """A separate connection holding goose's migration lock on the scratch database."""
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_backend.MIGRATION_LOCK_ID,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock_all()")


# -- the migration lock -------------------------------------------------------------------


def test_up_waits_for_the_migration_lock_instead_of_failing(
    postgres_url: str, lock_holder: psycopg.Connection[Any]
) -> None:
    outcome: list[object] = []

    def migrate() -> None:
        try:
            with _open(postgres_url) as db:
                outcome.append(db.migrations.version())
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=migrate, daemon=True)
    worker.start()
    # The runner is blocked in pg_advisory_lock (a Lock wait on the server), not failing.
    deadline = time.monotonic() + 10
    waiting: list[tuple[Any, ...]] = []
    while not waiting and time.monotonic() < deadline:
        waiting = lock_holder.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid()"
        ).fetchall()
        time.sleep(0.05)
    assert waiting, "the migration runner never waited on the advisory lock"
    time.sleep(0.5)
    assert worker.is_alive() and outcome == []

    lock_holder.execute("SELECT pg_advisory_unlock(%s)", (_backend.MIGRATION_LOCK_ID,))
    worker.join(timeout=30)
    assert outcome == [4]
    assert _migration_lock_holders(lock_holder) == []


def test_up_gives_up_after_the_lock_timeout_with_a_clear_migration_error(
    postgres_url: str, lock_holder: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_backend, "MIGRATION_LOCK_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(MigrationError, match="migration lock") as caught:
        _open(postgres_url)
    elapsed = time.monotonic() - started

    assert 0.4 <= elapsed < 10
    assert "0.5s" in str(caught.value)
    # Only the holder has the lock; the runner's connection is gone and nothing was applied.
    assert _migration_lock_holders(lock_holder) == [lock_holder.info.backend_pid]
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s",
            (_schema_of(postgres_url),),
        ).fetchone()
    assert tables == (0,)


def test_no_advisory_lock_is_left_after_a_run(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    with _open(postgres_url) as db:
        assert db.migrations.up() == []
        assert db.migrations.down() == 4
        assert db.migrations.up() == [4]
        db.migrations.status()
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            assert _migration_lock_holders(conn) == []


def test_the_lock_statement_timeout_does_not_outlive_the_wait(postgres_url: str) -> None:
    backend = _backend.PostgresBackend(
        FullConfig(driver="postgres", database_url=postgres_url, max_idle_conns=0)
    )
    try:
        with backend.migration_connection() as conn:
            assert conn.execute("SHOW statement_timeout") == [("0",)]
    finally:
        backend.close()


# -- the schema ---------------------------------------------------------------------------


def test_the_url_schema_holds_the_tables_and_goose_version_table(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    schema = _schema_of(postgres_url)
    with _open(postgres_url):
        pass
    with psycopg.connect(postgres_server.url) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name = ANY(%s)",
            (sorted(TABLES),),
        ).fetchall()
    assert {name for owner, name in rows if owner == schema} == TABLES
    assert {owner for owner, _ in rows if owner != schema}.isdisjoint({"public"})


def test_two_schemas_do_not_see_each_others_data(postgres_server: PostgresServer) -> None:
    with (
        _open(postgres_server.new_schema_url()) as first,
        _open(postgres_server.new_schema_url()) as second,
    ):
        project = first.create_project(Project(name="only-in-first", openai_api_key="sk-1"))
        first.create_token(Token(project_id=project.id))
        second.create_project(Project(name="only-in-second", openai_api_key="sk-2"))

        assert [p.name for p in first.list_projects()] == ["only-in-first"]
        assert [p.name for p in second.list_projects()] == ["only-in-second"]
        assert second.list_tokens() == []
        assert second.stats().projects == 1


def test_migrations_reproduce_the_go_schema(postgres_url: str) -> None:
    schema = _schema_of(postgres_url)
    with _open(postgres_url), psycopg.connect(postgres_url) as conn:
        columns = {
            (table, column): (data_type, nullable)
            for table, column, data_type, nullable in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable "
                "FROM information_schema.columns WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        }
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            ).fetchall()
        }
        versions = conn.execute(
            "SELECT version_id, is_applied FROM goose_db_version ORDER BY id"
        ).fetchall()

    naive = "timestamp without time zone"
    expected = {
        ("projects", "id"): ("text", "NO"),
        ("projects", "name"): ("text", "NO"),
        ("projects", "openai_api_key"): ("text", "NO"),
        ("projects", "is_active"): ("boolean", "NO"),
        ("projects", "created_at"): (naive, "NO"),
        ("projects", "updated_at"): (naive, "NO"),
        ("projects", "deactivated_at"): (naive, "YES"),
        ("tokens", "token"): ("text", "NO"),
        ("tokens", "project_id"): ("text", "NO"),
        ("tokens", "expires_at"): (naive, "YES"),
        ("tokens", "is_active"): ("boolean", "NO"),
        ("tokens", "request_count"): ("integer", "NO"),
        ("tokens", "max_requests"): ("integer", "YES"),
        ("tokens", "created_at"): (naive, "NO"),
        ("tokens", "last_used_at"): (naive, "YES"),
        ("tokens", "deactivated_at"): (naive, "YES"),
        ("tokens", "cache_hit_count"): ("integer", "NO"),
        ("audit_events", "timestamp"): (naive, "NO"),
        ("audit_events", "metadata"): ("text", "YES"),
        ("audit_events", "outcome"): ("text", "NO"),
        # goose's own PostgreSQL layout
        ("goose_db_version", "id"): ("integer", "NO"),
        ("goose_db_version", "version_id"): ("bigint", "NO"),
        ("goose_db_version", "is_applied"): ("boolean", "NO"),
        ("goose_db_version", "tstamp"): (naive, "YES"),
    }
    assert {key: columns.get(key) for key in expected} == expected
    assert not any(data_type == "timestamp with time zone" for data_type, _ in columns.values())
    assert indexes >= GO_INDEXES
    assert versions == [(version, True) for version in range(5)]


def test_timestamps_are_stored_as_naive_utc(postgres_url: str) -> None:
    plus_five = timezone(timedelta(hours=5))
    expires = datetime(2031, 6, 1, 17, 30, 15, 123456, tzinfo=plus_five)
    with _open(postgres_url) as db:
        project = db.create_project(Project(name="tz", openai_api_key="sk-tz"))
        before = datetime.now(UTC)
        token = db.create_token(Token(project_id=project.id, expires_at=expires))
        db.increment_token_usage(token.token)
        after = datetime.now(UTC)

    # Read raw, in a session whose TimeZone is far from UTC: the values must not move.
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SET TIME ZONE 'America/Los_Angeles'")
        stored_expires, created, last_used = conn.execute(
            "SELECT expires_at, created_at, last_used_at FROM tokens WHERE token = %s",
            (token.token,),
        ).fetchone() or (None, None, None)

    assert stored_expires == datetime(2031, 6, 1, 12, 30, 15, 123456)  # naive, the UTC instant
    for value in (stored_expires, created, last_used):
        assert isinstance(value, datetime) and value.tzinfo is None
    assert isinstance(created, datetime) and isinstance(last_used, datetime)
    slack = timedelta(seconds=1)
    assert before - slack <= created.replace(tzinfo=UTC) <= after + slack
    assert before - slack <= last_used.replace(tzinfo=UTC) <= after + slack
