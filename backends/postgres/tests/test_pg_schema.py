"""PostgreSQL schema and migrations: goose's advisory lock, the schema chosen by the URL,
and the shipped migrations reproducing the Go llm-proxy's PostgreSQL schema."""

from __future__ import annotations

import secrets
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
    AuditEvent,
    AuditEventFilter,
    FullConfig,
    MigrationError,
    Project,
    Token,
    new_from_full_config,
)
from llm_proxy_db.sql._statements import AUDIT_COLUMNS, Statements
from llm_proxy_db_postgres import POSTGRES, _backend
from tests.fixtures.goose import ISSUE_3_INDEXES

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer

TABLES = {"projects", "tokens", "audit_events", "goose_db_version"}
GO_INDEXES = ISSUE_3_INDEXES  # the Go program's indexes (migrations 1-3)
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
    assert outcome == [100]
    assert _migration_lock_holders(lock_holder) == []


def test_read_only_migration_calls_do_not_wait_for_a_running_migration(
    postgres_url: str, lock_holder: psycopg.Connection[Any]
) -> None:
    # Another process is migrating (it holds the lock): status, version and opening
    # without auto-migration answer at once instead of queueing behind it.
    started = time.monotonic()
    with _open(postgres_url, auto_migrate=False) as db:
        assert db.migrations.version() == 0
        assert [s.applied for s in db.migrations.status()] == [False, False, False, False]
        db.migrations.check_schema()
    assert time.monotonic() - started < 5
    assert _migration_lock_holders(lock_holder) != []  # the holder still has it


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
        assert db.migrations.down() == 100
        assert db.migrations.up() == [100]
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
    assert versions == [(version, True) for version in (0, 1, 2, 3, 100)]


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


def test_applied_version_no_file_has_is_refused_on_open(postgres_url: str) -> None:
    """A database the Go llm-proxy took past version 3 (its own 4 and 5)."""
    with _open(postgres_url) as db:
        assert db.migrations.down() == 100
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (4, true)")
        conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (5, true)")
    for auto_migrate in (True, False):
        with pytest.raises(MigrationError) as caught:
            _open(postgres_url, auto_migrate=auto_migrate)
        message = str(caught.value)
        assert message.startswith("database has applied migration versions 4, 5 that this")
        assert "llm-proxy-db-postgres" in message
        assert message.endswith("refusing to run on an unknown schema")
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version_id FROM goose_db_version ORDER BY id").fetchall()
    assert [v for (v,) in versions] == [0, 1, 2, 3, 4, 5]


# -- ordering: text by code point, and still read from the hot-path indexes ---------------


def _plan(conn: psycopg.Connection[Any], statement: str, params: list[Any]) -> str:
    rows = conn.execute("EXPLAIN " + statement, params).fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize(
    ("flt", "index"),
    [
        (AuditEventFilter(project_id="p3", limit=50), "idx_audit_project_timestamp"),
        (AuditEventFilter(limit=50), "idx_audit_timestamp_id"),
        (AuditEventFilter(limit=50, offset=5000), "idx_audit_timestamp_id"),
    ],
    ids=["project", "all", "all-page-101"],
)
def test_newest_audit_events_first_read_the_index_without_sorting(
    postgres_url: str, flt: AuditEventFilter, index: str
) -> None:
    """The audit listing orders ``id COLLATE "C"``; migration 00100 builds its indexes with
    that collation, so the planner walks them backwards instead of sorting (an index on
    plain ``id`` would need an incremental sort). 20,000 events, 200 projects, three
    events per second (so the id tiebreak matters)."""
    statements = Statements(POSTGRES)
    where, params = statements.codec.audit_where(flt)
    query = f"SELECT {AUDIT_COLUMNS} FROM audit_events{where} {statements.audit_order}"
    query += " LIMIT ? OFFSET ?"
    params += [flt.limit, flt.offset]
    assert 'id COLLATE "C" DESC' in query
    with _open(postgres_url), psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_events (id, timestamp, action, actor, outcome, project_id) "
            "SELECT 'evt-' || g, timestamp '2024-01-01' + (g / 3) * interval '1 second', "
            "'token.use', 'proxy', 'success', 'p' || (g % 200) "
            "FROM generate_series(1, 20000) AS g"
        )
        conn.execute("ANALYZE audit_events")
        plan = _plan(conn, statements.sql(query), params)
    assert f"Index Scan Backward using {index}" in plan, plan
    assert "Sort" not in plan, plan  # neither a full sort nor an incremental one


def test_a_projects_tokens_can_be_read_in_order_from_the_index(postgres_url: str) -> None:
    """Without a LIMIT, sorting a project's few tokens may well be the cheaper plan, so
    sorting is switched off: a plan without Sort exists only if an index supplies
    ``created_at DESC, token COLLATE "C" DESC`` (one on plain ``token`` would not)."""
    statements = Statements(POSTGRES)
    with _open(postgres_url), psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, name, openai_api_key) "
            "SELECT 'p' || g, 'project ' || g, 'sk' FROM generate_series(0, 199) AS g"
        )
        conn.execute(
            "INSERT INTO tokens (token, project_id, created_at) "
            "SELECT 'tok-' || g, 'p' || (g % 200), timestamp '2024-01-01' + g * interval '1 s' "
            "FROM generate_series(1, 20000) AS g"
        )
        conn.execute("ANALYZE tokens")
        conn.execute("SET enable_sort = off")
        conn.execute("SET enable_incremental_sort = off")
        plan = _plan(conn, statements.list_project_tokens, ["p3"])
    assert 'token COLLATE "C" DESC' in statements.list_project_tokens
    assert "idx_tokens_project_created" in plan, plan
    assert "Sort" not in plan, plan


def _non_c_collation_clause(conn: psycopg.Connection[Any]) -> str | None:
    """CREATE DATABASE options giving a locale-aware (not byte-order) default collation,
    from what the server has: a libc en_US locale, else ICU's en-US (PostgreSQL 15+)."""
    row = conn.execute(
        "SELECT collcollate FROM pg_collation WHERE collprovider = 'c' "
        "AND collcollate ILIKE 'en_US.utf%' ORDER BY collname LIMIT 1"
    ).fetchone()
    if row is not None:
        return f"LC_COLLATE '{row[0]}' LC_CTYPE '{row[0]}'"
    icu = conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'en-US-x-icu'").fetchone()
    if icu is not None and conn.info.server_version >= 150000:
        return "LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    return None


@pytest.fixture
def en_us_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database whose default collation sorts 'a' before 'B' (dropped afterwards)."""
    name = f"llm_proxy_db_en_us_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        clause = _non_c_collation_clause(admin)
        if clause is None:
            pytest.skip("the server has no en_US collation (libc or ICU) to create a database")
        try:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8 {clause}')
        except psycopg.Error as exc:
            pytest.skip(f"cannot create a database with {clause}: {exc}")
    try:
        url = conninfo.make_conninfo(postgres_server.admin_url, dbname=name)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT 'a' < 'B'").fetchone()
        if row is None or not row[0]:
            pytest.skip(f"a database created with {clause} still sorts 'B' before 'a'")
        yield url
    finally:
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_text_orders_by_code_point_whatever_the_database_collation(
    en_us_database_url: str,
) -> None:
    """As SQLite (BINARY) and the memory backend (Python str) order: 'B' < 'a' < 'c'."""
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with _open(en_us_database_url) as db:
        projects = {
            name: db.create_project(Project(name=name, openai_api_key="sk-upstream"))
            for name in ("a", "B", "c")
        }
        assert [p.name for p in db.list_projects()] == ["B", "a", "c"]
        for token in ("tok-a", "tok-B", "tok-c"):  # one instant: the token is the tiebreak
            db.create_token(Token(project_id=projects["a"].id, token=token, created_at=created))
        expected = ["tok-c", "tok-a", "tok-B"]  # newest first, then token descending
        assert [t.token for t in db.list_tokens()] == expected
        assert [t.token for t in db.list_tokens(projects["a"].id)] == expected
        for event_id in ("evt-a", "evt-B", "evt-c"):
            db.create_audit_event(
                AuditEvent(id=event_id, action="a", actor="b", outcome="success", timestamp=created)
            )
        assert [e.id for e in db.list_audit_events()] == ["evt-c", "evt-a", "evt-B"]
    with psycopg.connect(en_us_database_url) as conn:
        # The database's own order differs: that is what COLLATE "C" is there for.
        names = conn.execute("SELECT name FROM projects ORDER BY name").fetchall()
        assert [n for (n,) in names] == ["a", "B", "c"]
