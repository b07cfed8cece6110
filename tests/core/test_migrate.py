"""The goose-compatible migration runner on real databases (SQLite files, PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llm_proxy_db._errors import DatabaseError, MigrationError
from llm_proxy_db.sql import Dialect
from llm_proxy_db.sql._migrate import (
    DbApiMigrationConnection,
    MigrationConnection,
    Migrations,
    MigrationStatus,
)
from tests.fixtures.goose import (
    GOOSE_ROWS_QUERY,
    HOT_PATH_INDEXES,
    ISSUE_3_INDEXES,
    applied_rows,
    as_goose_rows,
    assert_each_version_applied_once,
    schema_columns,
    source_with,
    up_at_barrier,
)
from tests.fixtures.processes import run_processes

# The runner is tested with the real backends' dialects and files: the SQLite tests run
# where llm-proxy-db-sqlite is installed, the PostgreSQL ones where llm-proxy-db-postgres is.


def _sqlite_dialect() -> Dialect:
    dialect: Dialect = pytest.importorskip("llm_proxy_db_sqlite").SQLITE
    return dialect


def _postgres_dialect() -> Dialect:
    dialect: Dialect = pytest.importorskip("llm_proxy_db_postgres").POSTGRES
    return dialect


def _sqlite_translate(exc: Exception) -> DatabaseError:
    return DatabaseError(f"SQLite error: {exc}")


def _postgres_translate(exc: Exception) -> DatabaseError:
    translate: Any = pytest.importorskip("llm_proxy_db_postgres._backend").translate_error
    error: DatabaseError = translate(exc)
    return error


REPO = Path(__file__).resolve().parents[2]
SQLITE_FILES = REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations"
POSTGRES_FILES = REPO / "backends/postgres/src/llm_proxy_db_postgres/migrations"
ALL = [1, 2, 3, 100]  # 1-3 are the Go llm-proxy's; this package numbers from 100

COLUMNS = schema_columns()
TIME_COLUMNS = {
    "created_at",
    "updated_at",
    "deactivated_at",
    "expires_at",
    "last_used_at",
    "timestamp",
}


# -- SQLite ------------------------------------------------------------------------------


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    # Switching a brand-new file to WAL while other processes open it can fail at once with
    # "database is locked": busy_timeout does not cover it, so retry briefly.
    deadline = time.monotonic() + 30
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteTarget:
    """A tiny ``MigrationTarget``: one fresh sqlite3 connection per run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dialect = _sqlite_dialect()

    @contextmanager
    def _connection(self) -> Iterator[MigrationConnection]:
        conn = _sqlite_connect(self.path)
        try:
            yield DbApiMigrationConnection(
                conn, _sqlite_dialect(), driver_error=sqlite3.Error, translate=_sqlite_translate
            )
        finally:
            conn.close()

    def migration_connection(
        self, *, exclusive: bool = True
    ) -> AbstractContextManager[MigrationConnection]:
        return self._connection()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    _sqlite_dialect()  # skips where the SQLite backend is not installed
    return tmp_path / "llm-proxy.db"


@pytest.fixture
def migrations(db_path: Path) -> Migrations:
    return Migrations(SQLITE_FILES, SqliteTarget(db_path))


def _rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def _goose_rows(path: Path) -> list[tuple[int, int]]:
    return as_goose_rows(_rows(path, GOOSE_ROWS_QUERY))


def _user_tables(path: Path) -> set[str]:
    rows = _rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows} - {"goose_db_version", "sqlite_sequence"}


def test_up_applies_every_version_with_goose_rows(migrations: Migrations, db_path: Path) -> None:
    before = datetime.now(UTC)
    assert migrations.latest == 100
    assert migrations.up() == ALL
    assert migrations.version() == 100
    assert _goose_rows(db_path) == applied_rows(ALL)
    stamps = [row[0] for row in _rows(db_path, "SELECT tstamp FROM goose_db_version")]
    for stamp in stamps:  # the codec's UTC text, e.g. '2024-05-01 12:00:00.123+00:00'
        assert isinstance(stamp, str)
        assert stamp.endswith("+00:00")
        assert _sqlite_dialect().decode_time(stamp) >= before.replace(microsecond=0)
    status = migrations.status()
    assert [(s.version, s.name, s.applied) for s in status] == [
        (1, "initial_schema", True),
        (2, "add_deactivation_columns", True),
        (3, "add_cache_hit_count", True),
        (100, "add_hot_path_indexes", True),
    ]
    for entry in status:
        assert isinstance(entry, MigrationStatus)
        assert entry.applied_at is not None
        assert entry.applied_at.tzinfo is not None
        assert before - timedelta(seconds=1) <= entry.applied_at <= datetime.now(UTC)


def test_up_is_idempotent(migrations: Migrations, db_path: Path) -> None:
    assert migrations.up() == ALL
    rows = _goose_rows(db_path)
    assert migrations.up() == []
    assert Migrations(SQLITE_FILES, SqliteTarget(db_path)).up() == []
    assert _goose_rows(db_path) == rows


def test_fresh_database_reads_as_version_zero(migrations: Migrations, db_path: Path) -> None:
    assert migrations.version() == 0
    status = migrations.status()
    assert [(s.version, s.applied, s.applied_at) for s in status] == [(v, False, None) for v in ALL]
    migrations.check_schema()
    assert migrations.down() is None
    assert _goose_rows(db_path) == [(0, 1)]  # down created goose's table and row only


def test_up_to_target_then_rest(migrations: Migrations) -> None:
    assert migrations.up(target=2) == [1, 2]
    assert migrations.version() == 2
    assert [(s.version, s.applied) for s in migrations.status()] == [
        (1, True),
        (2, True),
        (3, False),
        (100, False),
    ]
    assert migrations.status()[2].applied_at is None
    assert migrations.up(target=2) == []
    assert migrations.up(target=50) == [3]  # a target between files: up to the one below
    assert migrations.up() == [100]
    with pytest.raises(MigrationError, match="cannot migrate up to version 101"):
        migrations.up(target=101)


def test_down_one_version_at_a_time(migrations: Migrations, db_path: Path) -> None:
    migrations.up()
    assert migrations.down() == 100  # straight back to the Go program's version 3
    assert migrations.version() == 3
    assert _goose_rows(db_path) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert [(s.version, s.applied) for s in migrations.status()] == [
        (1, True),
        (2, True),
        (3, True),
        (100, False),
    ]
    assert migrations.down() == 3
    assert "cache_hit_count" not in _columns(db_path, "tokens")
    assert migrations.down() == 2
    assert "deactivated_at" not in _columns(db_path, "tokens")
    assert migrations.down() == 1
    assert _user_tables(db_path) == set()
    assert _rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'") == []
    assert migrations.down() is None
    assert _goose_rows(db_path) == [(0, 1)]
    assert migrations.version() == 0
    assert migrations.up() == ALL  # and back up again
    assert _goose_rows(db_path) == applied_rows(ALL)


def _columns(path: Path, table: str) -> list[str]:
    return [row[1] for row in _rows(path, f"PRAGMA table_info({table})")]


def test_schema_matches_issue_3(migrations: Migrations, db_path: Path) -> None:
    migrations.up()
    assert _user_tables(db_path) == set(COLUMNS)
    for table, expected in COLUMNS.items():
        info = _rows(db_path, f"PRAGMA table_info({table})")
        assert [row[1] for row in info] == expected
        for _, name, declared, *_ in info:
            if name in TIME_COLUMNS:
                assert declared == "DATETIME", (table, name)  # Go's driver parses these
            elif name == "is_active":
                assert declared == "BOOLEAN"
    indexes = {
        row[0]
        for row in _rows(
            db_path, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    assert indexes == ISSUE_3_INDEXES | HOT_PATH_INDEXES
    ip_action = [row[2] for row in _rows(db_path, "PRAGMA index_info(idx_audit_ip_action)")]
    assert ip_action == ["client_ip", "action"]
    fks = _rows(db_path, "PRAGMA foreign_key_list(tokens)")
    assert [(fk[2], fk[3], fk[4], fk[6]) for fk in fks] == [
        ("projects", "project_id", "id", "CASCADE")
    ]
    # defaults and the outcome CHECK
    conn = _sqlite_connect(db_path)
    try:
        conn.execute("INSERT INTO projects (id, name, openai_api_key) VALUES ('p', 'n', 'k')")
        conn.execute("INSERT INTO tokens (token, project_id) VALUES ('t', 'p')")
        row = conn.execute(
            "SELECT is_active, request_count, cache_hit_count, deactivated_at FROM tokens"
        ).fetchone()
        assert row == (1, 0, 0, None)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO audit_events (id, timestamp, action, actor, outcome) "
                "VALUES ('e', '2024-01-01 00:00:00+00:00', 'a', 'b', 'maybe')"
            )
        conn.execute("DELETE FROM projects")
        assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone() == (0,)  # cascade
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT * FROM audit_events WHERE project_id = ? "
            "ORDER BY timestamp DESC, id DESC LIMIT 50",
            "idx_audit_project_timestamp",
        ),
        (
            "SELECT * FROM audit_events ORDER BY timestamp DESC, id DESC LIMIT 50",
            "idx_audit_timestamp_id",
        ),
        (
            "SELECT * FROM tokens WHERE project_id = ? ORDER BY created_at DESC, token DESC",
            "idx_tokens_project_created",
        ),
    ],
)
def test_hot_queries_use_an_index_without_sorting(
    migrations: Migrations, db_path: Path, query: str, index: str
) -> None:
    migrations.up()
    params = ("p",) if "?" in query else ()
    plan = " | ".join(row[3] for row in _rows(db_path, f"EXPLAIN QUERY PLAN {query}", params))
    assert index in plan
    assert "TEMP B-TREE" not in plan


def test_newer_schema_is_refused(migrations: Migrations, db_path: Path) -> None:
    migrations.up()
    conn = _sqlite_connect(db_path)
    conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (199, 1)")
    conn.close()
    message = (
        "database schema version 199 is newer than the newest migration this package "
        "ships (100): upgrade llm-proxy-db-sqlite"
    )
    for call in (migrations.up, migrations.check_schema, migrations.down):
        with pytest.raises(MigrationError) as info:
            call()
        assert str(info.value) == message
    assert migrations.version() == 199
    status = migrations.status()
    assert [(s.version, s.name, s.applied) for s in status][-1] == (199, "", True)
    assert _goose_rows(db_path)[-1] == (199, 1)  # nothing touched


def _go_database(path: Path, go_versions: Sequence[int]) -> None:
    """What the Go llm-proxy leaves: our versions 1-3 (the same schema), then its own."""
    Migrations(SQLITE_FILES, SqliteTarget(path)).up(target=3)
    conn = _sqlite_connect(path)
    for version in go_versions:
        conn.execute(
            "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, 1)", (version,)
        )
    conn.close()


def test_applied_version_no_file_has_is_refused(migrations: Migrations, db_path: Path) -> None:
    """A Go llm-proxy database at version 5: its versions 4 and 5 are not ours."""
    _go_database(db_path, [4, 5])
    rows = _goose_rows(db_path)
    for call in (migrations.up, migrations.check_schema, migrations.down):
        with pytest.raises(MigrationError) as info:
            call()
        message = str(info.value)
        assert message.startswith(
            "database has applied migration versions 4, 5 that this package does not ship: "
            "it was migrated by another program (the Go llm-proxy?)"
        )
        assert "llm-proxy-db-sqlite" in message
        assert "1, 2, 3, 100" in message  # what it does ship
        assert message.endswith("refusing to run on an unknown schema")
    assert _goose_rows(db_path) == rows  # nothing touched: 100 was not applied on top
    assert migrations.version() == 5
    assert [(s.version, s.name, s.applied) for s in migrations.status()] == [
        (1, "initial_schema", True),
        (2, "add_deactivation_columns", True),
        (3, "add_cache_hit_count", True),
        (4, "", True),
        (5, "", True),
        (100, "add_hot_path_indexes", False),
    ]


def test_one_unknown_version_even_below_ours_is_refused(
    migrations: Migrations, db_path: Path
) -> None:
    """Go's version 4 alone (its token id column): once indistinguishable, now refused."""
    _go_database(db_path, [4])
    with pytest.raises(MigrationError, match=r"applied migration version 4 that") as info:
        migrations.check_schema()
    assert "unknown schema" in str(info.value)
    # ... also with our own version 100 on top (a database migrated by both programs)
    conn = _sqlite_connect(db_path)
    conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (100, 1)")
    conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (150, 1)")
    conn.close()
    with pytest.raises(MigrationError, match=r"versions 4, 150 that .* unknown schema"):
        migrations.up()


def test_long_unknown_version_lists_are_shortened(migrations: Migrations, db_path: Path) -> None:
    _go_database(db_path, range(4, 30))
    with pytest.raises(MigrationError) as info:
        migrations.check_schema()
    assert "versions 4, 5, 6, 7, 8, 9, 10, ..., 29 (26 versions) that" in str(info.value)


def test_rolled_back_and_zero_versions_are_not_unknown(
    migrations: Migrations, db_path: Path
) -> None:
    """Only applied versions count: goose's row 0, and a version whose newest row says
    rolled back (older goose kept such rows), are not an unknown schema."""
    _go_database(db_path, [4])
    conn = _sqlite_connect(db_path)
    conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (4, 0)")
    conn.close()
    migrations.check_schema()
    assert migrations.up() == [100]
    assert migrations.version() == 100


def _broken_source(tmp_path: Path, body: str, name: str = "00101_broken.sql") -> Path:
    return source_with(SQLITE_FILES, tmp_path, {name: body})


def test_failing_file_rolls_back_and_names_the_file(tmp_path: Path, db_path: Path) -> None:
    source = _broken_source(
        tmp_path,
        "-- +goose Up\n"
        "CREATE TABLE half_done (x INTEGER);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "INSERT INTO no_such_table VALUES (1);\n"
        "-- +goose Down\n"
        "DROP TABLE half_done;\n",
    )
    migrations = Migrations(source, SqliteTarget(db_path))
    with pytest.raises(MigrationError) as info:
        migrations.up()
    message = str(info.value)
    assert "00101_broken.sql" in message
    assert "version 101" in message
    assert "statement 3 of 3" in message
    assert "no_such_table" in message
    assert "rolled back" in message
    assert info.value.version == 101
    # Translated by the backend's mapping; the driver's exception is not attached.
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert migrations.version() == 100  # versions 1-100 committed, 101 not at all
    assert "half_done" not in _user_tables(db_path)
    assert _goose_rows(db_path)[-1] == (100, 1)
    # a failing Down leaves the version applied
    source.joinpath("00101_broken.sql").write_text(
        "-- +goose Up\nCREATE TABLE ok (x INTEGER);\n-- +goose Down\nDROP TABLE nope;\n"
    )
    migrations = Migrations(source, SqliteTarget(db_path))  # files are read once, on creation
    assert migrations.up() == [101]
    with pytest.raises(MigrationError, match=r"00101_broken\.sql \(version 101, down\)"):
        migrations.down()
    assert migrations.version() == 101
    assert "ok" in _user_tables(db_path)


class _Refusing:
    """A connection that raises a ready-made ``MigrationError`` for one statement."""

    def __init__(self, inner: MigrationConnection, error: MigrationError) -> None:
        self._inner = inner
        self._error = error
        self.dialect: Dialect = inner.dialect

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if "refuse_me" in statement:
            raise self._error
        return self._inner.execute(statement, params)

    def transaction(self) -> AbstractContextManager[None]:
        return self._inner.transaction()


def test_migration_error_is_not_wrapped_twice(tmp_path: Path, db_path: Path) -> None:
    error = MigrationError("lock wait timed out")
    source = _broken_source(tmp_path, "-- +goose Up\nCREATE TABLE refuse_me (x INTEGER);\n")
    inner = SqliteTarget(db_path)

    class Target:
        @contextmanager
        def _connection(self, exclusive: bool) -> Iterator[MigrationConnection]:
            with inner.migration_connection(exclusive=exclusive) as conn:
                yield _Refusing(conn, error)

        def migration_connection(
            self, *, exclusive: bool = True
        ) -> AbstractContextManager[MigrationConnection]:
            return self._connection(exclusive)

    migrations = Migrations(source, Target())
    with pytest.raises(MigrationError) as info:
        migrations.up()
    assert info.value is error
    assert migrations.version() == 100


def test_no_transaction_file(tmp_path: Path, db_path: Path) -> None:
    source = _broken_source(
        tmp_path,
        "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE TABLE plain (x INTEGER);\n"
        "-- +goose Down\nDROP TABLE plain;\n",
        "00101_plain.sql",
    )
    migrations = Migrations(source, SqliteTarget(db_path))
    assert migrations.up() == [*ALL, 101]
    assert "plain" in _user_tables(db_path)
    assert migrations.down() == 101
    assert "plain" not in _user_tables(db_path)


def test_reads_a_database_goose_wrote(migrations: Migrations, db_path: Path) -> None:
    """goose's own rows: tstamp from datetime('now'), and an old-style is_applied=0 row."""
    migrations.up(target=2)
    conn = _sqlite_connect(db_path)
    conn.execute("DELETE FROM goose_db_version WHERE version_id > 0")
    conn.execute("UPDATE goose_db_version SET tstamp = datetime('now')")
    for version, applied in [(1, 1), (2, 1), (2, 0)]:
        conn.execute(
            "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)",
            (version, applied),
        )
    conn.close()
    assert migrations.version() == 1  # the newest row for version 2 says rolled back
    status = {s.version: s for s in migrations.status()}
    assert status[1].applied
    assert status[1].applied_at is not None
    assert status[1].applied_at.tzinfo is not None
    assert not status[2].applied


def _race_up(path: str, barrier: Any, results: Any) -> None:
    up_at_barrier(Migrations(SQLITE_FILES, SqliteTarget(Path(path))), barrier, results)


def test_processes_racing_apply_each_version_once(db_path: Path) -> None:
    outcomes = run_processes(_race_up, [(str(db_path),)] * 4, within_s=60, method="fork")
    assert_each_version_applied_once(outcomes, ALL)
    assert _goose_rows(db_path) == applied_rows(ALL)


# -- PostgreSQL --------------------------------------------------------------------------

PG_URL = os.environ.get("LLM_PROXY_DB_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A scratch database (random name) on the test server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import conninfo, sql

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL server answers at {PG_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"llm_proxy_db_migrate_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield conninfo.make_conninfo(PG_URL, dbname=name)
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


_LOCK_KEY = 0x6C6C6D70  # any constant; the real backend picks its own


class PostgresTarget:
    """A tiny ``MigrationTarget``: one dedicated connection holding the advisory lock."""

    def __init__(self, url: str) -> None:
        self.url = url

    @contextmanager
    def _connection(self) -> Iterator[MigrationConnection]:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                yield DbApiMigrationConnection(
                    conn,
                    _postgres_dialect(),
                    driver_error=psycopg.Error,
                    translate=_postgres_translate,
                )
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        finally:
            conn.close()

    def migration_connection(
        self, *, exclusive: bool = True
    ) -> AbstractContextManager[MigrationConnection]:
        return self._connection()


def _pg_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query)
        return cursor.fetchall() if cursor.description is not None else []


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """The scratch database, emptied after each test."""
    yield pg_database
    _pg_rows(
        pg_database,
        "DROP TABLE IF EXISTS audit_events, tokens, projects, goose_db_version, half_done CASCADE",
    )


def test_postgres_files_up_and_down(pg_url: str) -> None:
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    migrations = Migrations(POSTGRES_FILES, PostgresTarget(pg_url))
    assert migrations.up() == ALL
    assert migrations.up() == []
    assert migrations.version() == 100
    rows = _pg_rows(
        pg_url, "SELECT version_id, is_applied, tstamp FROM goose_db_version ORDER BY id"
    )
    assert [(r[0], r[1]) for r in rows] == [(0, True), *((v, True) for v in ALL)]
    for _, _, tstamp in rows:  # naive UTC written by the runner, not the server's now()
        assert tstamp.tzinfo is None
        assert before - timedelta(seconds=1) <= tstamp <= datetime.now(UTC).replace(tzinfo=None)
    columns = _pg_rows(
        pg_url,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name <> 'goose_db_version' "
        "ORDER BY table_name, ordinal_position",
    )
    for table, expected in COLUMNS.items():
        assert [c[1] for c in columns if c[0] == table] == expected
    for table, column, data_type in columns:
        if column in TIME_COLUMNS:
            assert data_type == "timestamp without time zone", (table, column)
        elif column == "is_active":
            assert data_type == "boolean"
        elif column in ("request_count", "max_requests", "cache_hit_count"):
            assert data_type == "integer"
        else:
            assert data_type == "text", (table, column)
    indexes = {
        r[0]
        for r in _pg_rows(
            pg_url,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname LIKE 'idx_%'",
        )
    }
    assert indexes == ISSUE_3_INDEXES | HOT_PATH_INDEXES
    goose_columns = _pg_rows(
        pg_url,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'goose_db_version' ORDER BY ordinal_position",
    )
    assert goose_columns == [
        ("id", "integer"),
        ("version_id", "bigint"),
        ("is_applied", "boolean"),
        ("tstamp", "timestamp without time zone"),
    ]
    for version in (100, 3, 2, 1):
        assert migrations.down() == version
    assert migrations.down() is None
    leftover = _pg_rows(
        pg_url,
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename <> 'goose_db_version'",
    )
    assert leftover == []
    assert migrations.up() == ALL


def test_postgres_failing_file_rolls_back(pg_url: str, tmp_path: Path) -> None:
    source = tmp_path / "pg"
    shutil.copytree(POSTGRES_FILES, source)
    (source / "00101_broken.sql").write_text(
        "-- +goose Up\nCREATE TABLE half_done (x INTEGER);\n"
        "-- +goose StatementBegin\nDO $$ BEGIN RAISE EXCEPTION 'boom'; END $$;\n"
        "-- +goose StatementEnd\n"
    )
    migrations = Migrations(source, PostgresTarget(pg_url))
    with pytest.raises(MigrationError, match=r"00101_broken\.sql \(version 101, up\).*boom"):
        migrations.up()
    assert migrations.version() == 100
    assert _pg_rows(pg_url, "SELECT to_regclass('half_done') IS NULL") == [(True,)]
    with pytest.raises(MigrationError, match="upgrade llm-proxy-db-postgres"):
        _pg_rows(pg_url, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (107, true)")
        Migrations(POSTGRES_FILES, PostgresTarget(pg_url)).up()


def test_postgres_unknown_applied_version_is_refused(pg_url: str) -> None:
    migrations = Migrations(POSTGRES_FILES, PostgresTarget(pg_url))
    assert migrations.up(target=3) == [1, 2, 3]
    _pg_rows(pg_url, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (4, true)")
    _pg_rows(pg_url, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (5, true)")
    for call in (migrations.up, migrations.check_schema, migrations.down):
        with pytest.raises(MigrationError, match=r"^database has applied migration versions 4, 5"):
            call()
    rows = _pg_rows(pg_url, "SELECT version_id FROM goose_db_version ORDER BY id")
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 5]  # untouched
    assert _pg_rows(pg_url, "SELECT to_regclass('idx_audit_timestamp_id') IS NULL") == [(True,)]


def _pg_race_up(url: str, barrier: Any, results: Any) -> None:
    up_at_barrier(Migrations(POSTGRES_FILES, PostgresTarget(url)), barrier, results)


def test_postgres_processes_racing_apply_each_version_once(pg_url: str) -> None:
    outcomes = run_processes(_pg_race_up, [(pg_url,)] * 6, within_s=60, method="fork")
    assert_each_version_applied_once(outcomes, ALL)
    rows = _pg_rows(pg_url, "SELECT version_id FROM goose_db_version ORDER BY id")
    assert [r[0] for r in rows] == [0, *ALL]
