"""The MySQL migrations on a real server (MariaDB here): the shipped files, exact keys after
version 101, the field limits, the GET_LOCK migration lock, and per-statement progress
(DDL is not transactional: a file failing at its second statement, a ``kill -9`` during
``up``, ``down`` refusing to cross a partly applied file).

The runner runs on ``migration_connection`` over plain PyMySQL connections with the
backend's session settings, so these tests need no pool.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from importlib.resources import files
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.connections import Connection
from pymysql.constants import CLIENT

from llm_proxy_db import MigrationError
from llm_proxy_db._limits import MAX_METADATA_BYTES, MAX_TEXT, TEXT_LIMITS
from llm_proxy_db.sql import DbApiMigrationConnection, Migrations
from llm_proxy_db.sql._migrate import PROGRESS_TABLE
from llm_proxy_db_mysql._backend import SQL_MODE, translate_error
from llm_proxy_db_mysql._migration import MIGRATION_LOCK, migration_connection
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
from tests.fixtures.mysql import connect_kwargs
from tests.fixtures.processes import run_processes

MYSQL_FILES = Path(str(files("llm_proxy_db_mysql") / "migrations"))
SHIPPED = [1, 2, 3, 100, 101]
GO_VERSIONS = [1, 2, 3]

COLUMNS = schema_columns(api_key_column="api_key")


def connect(url: str) -> Connection[Any]:
    """A connection as the backend opens one: autocommit, FOUND_ROWS, UTC, strict mode."""
    conn: Connection[Any] = pymysql.connect(**connect_kwargs(url), client_flag=CLIENT.FOUND_ROWS)
    with conn.cursor() as cursor:
        cursor.execute(f"SET SESSION time_zone = '+00:00', sql_mode = '{SQL_MODE}'")
    return conn


class Target:
    """A ``MigrationTarget`` on ``url``: ``migration_connection`` over new connections."""

    def __init__(self, url: str, *, lock_timeout: float = 30.0) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self.exclusive_runs = 0

    def migration_connection(
        self, *, exclusive: bool = True
    ) -> AbstractContextManager[DbApiMigrationConnection]:
        self.exclusive_runs += exclusive
        return migration_connection(
            lambda: connect(self.url),
            translate=translate_error,
            exclusive=exclusive,
            target="the test server",
            lock_timeout=self.lock_timeout,
        )


def rows(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(query, params)
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def execute(url: str, *statements: str) -> None:
    conn = connect(url)
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def tables(url: str) -> set[str]:
    return {str(row[0]) for row in rows(url, "SHOW TABLES")}


def goose_rows(url: str) -> list[tuple[int, int]]:
    return as_goose_rows(rows(url, GOOSE_ROWS_QUERY))


def progress_rows(url: str) -> list[tuple[Any, ...]]:
    return rows(url, f"SELECT * FROM {PROGRESS_TABLE} ORDER BY version_id")


# -- the shipped files --------------------------------------------------------------------


def test_shipped_files_up_and_down(mysql_url: str) -> None:
    migrations = Migrations(MYSQL_FILES, Target(mysql_url))
    assert [m.version for m in migrations.migrations] == SHIPPED
    assert migrations.up() == SHIPPED
    assert goose_rows(mysql_url) == applied_rows(SHIPPED)
    assert progress_rows(mysql_url) == []
    assert tables(mysql_url) == {
        "projects",
        "tokens",
        "audit_events",
        "goose_db_version",
        PROGRESS_TABLE,
    }
    for table, columns in COLUMNS.items():
        found = rows(
            mysql_url,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "DATABASE() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
        assert [str(row[0]) for row in found] == columns
    indexes = {
        str(row[0])
        for row in rows(
            mysql_url,
            "SELECT DISTINCT index_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE()",
        )
    }
    assert indexes >= ISSUE_3_INDEXES | HOT_PATH_INDEXES
    fks = rows(
        mysql_url,
        "SELECT constraint_name, delete_rule FROM information_schema.referential_constraints "
        "WHERE constraint_schema = DATABASE() AND table_name = 'tokens'",
    )
    assert fks == [("tokens_ibfk_1", "CASCADE")]

    for version in reversed(SHIPPED):
        assert migrations.down() == version
    assert migrations.down() is None
    assert tables(mysql_url) == {"goose_db_version", PROGRESS_TABLE}
    assert goose_rows(mysql_url) == [(0, 1)]
    assert migrations.up() == SHIPPED  # and back again


def test_every_text_column_compares_exactly_after_version_101(mysql_url: str) -> None:
    migrations = Migrations(MYSQL_FILES, Target(mysql_url))
    migrations.up(target=100)
    execute(
        mysql_url,
        "INSERT INTO projects (id, name, api_key) VALUES ('p1', 'acme', 'k')",
        "INSERT INTO tokens (token, project_id) VALUES ('sk-AbCdEf', 'p1')",
    )
    variants = "SELECT token FROM tokens WHERE token IN ('SK-ABCDEF', 'sk-AbCdEf   ')"
    # The Go schema's utf8mb4_unicode_ci: case-folding and PAD SPACE find the real token.
    assert rows(mysql_url, variants) == [("sk-AbCdEf",)]
    with pytest.raises(pymysql.IntegrityError):
        execute(mysql_url, "INSERT INTO projects (id, name, api_key) VALUES ('p2', 'Acme ', 'k')")

    assert migrations.up() == [101]
    assert rows(mysql_url, variants) == []
    assert rows(mysql_url, "SELECT token FROM tokens WHERE token = 'sk-AbCdEf'") == [("sk-AbCdEf",)]
    execute(
        mysql_url,
        "INSERT INTO projects (id, name, api_key) VALUES ('p2', 'Acme ', 'k'), ('P1', 'B', 'k')",
    )
    # Ordered by code point, as SQLite's BINARY and PostgreSQL's COLLATE "C" order.
    assert rows(mysql_url, "SELECT name FROM projects ORDER BY name") == [
        ("Acme ",),
        ("B",),
        ("acme",),
    ]
    collations = rows(
        mysql_url,
        "SELECT table_name, column_name, collation_name FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name IN ('projects', 'tokens', "
        "'audit_events') AND collation_name IS NOT NULL",
    )
    assert collations and {row[2] for row in collations} == {"utf8mb4_nopad_bin"}
    # The foreign key still cascades across the converted columns.
    execute(mysql_url, "DELETE FROM projects WHERE id = 'p1'")
    assert rows(mysql_url, "SELECT COUNT(*) FROM tokens") == [(0,)]


def test_field_limits_are_the_schemas(mysql_url: str) -> None:
    """core/_limits.py declares what this schema stores: each VARCHAR's length is the
    field's limit, a TEXT column (65,535 bytes) takes the limit in 4-byte characters."""
    Migrations(MYSQL_FILES, Target(mysql_url)).up()
    found = {
        (str(table), str(column)): (str(kind), length)
        for table, column, kind, length in rows(
            mysql_url,
            "SELECT table_name, column_name, data_type, character_maximum_length FROM "
            "information_schema.columns WHERE table_schema = DATABASE() AND table_name IN "
            "('projects', 'tokens', 'audit_events') AND character_maximum_length IS NOT NULL",
        )
    }
    fields = {
        ("projects", "id"): "id",
        ("projects", "name"): "name",
        ("projects", "api_key"): "openai_api_key",
        ("tokens", "token"): "token",
        ("tokens", "project_id"): "project_id",
        ("audit_events", "id"): "id",
        ("audit_events", "action"): "action",
        ("audit_events", "actor"): "actor",
        ("audit_events", "project_id"): "project_id",
        ("audit_events", "request_id"): "request_id",
        ("audit_events", "correlation_id"): "correlation_id",
        ("audit_events", "client_ip"): "client_ip",
        ("audit_events", "method"): "method",
        ("audit_events", "path"): "path",
        ("audit_events", "user_agent"): "user_agent",
        ("audit_events", "reason"): "reason",
        ("audit_events", "token_id"): "token_id",
    }
    for column, field in fields.items():
        kind, length = found[column]
        if kind == "varchar":
            assert length == TEXT_LIMITS[field], column
        else:
            assert kind == "text" and TEXT_LIMITS[field] * 4 <= length == 65_535, column
    assert found[("audit_events", "metadata")] == ("text", MAX_METADATA_BYTES)
    assert MAX_TEXT * 4 <= 65_535 < (MAX_TEXT + 1) * 4
    # The extremes store (strict sql_mode), one more character is refused, never cut.
    big = "\U0001f600"
    execute(
        mysql_url,
        "INSERT INTO projects (id, name, api_key) VALUES "
        f"('{big * 191}', '{big * 255}', '{'k' * TEXT_LIMITS['openai_api_key']}')",
        "INSERT INTO audit_events (id, timestamp, action, actor, client_ip, method, path, "
        f"outcome, metadata) VALUES ('e1', '1000-01-01 00:00:00', '{big * 255}', 'a', "
        f"'{'f' * 45}', '{'M' * 10}', '{big * MAX_TEXT}', 'success', "
        f"'{'m' * MAX_METADATA_BYTES}')",
        "INSERT INTO audit_events (id, timestamp, action, actor, outcome) VALUES "
        "('e2', '9999-12-31 23:59:59.999999', 'a', 'a', 'success')",
    )
    for statement in (
        f"INSERT INTO projects (id, name, api_key) VALUES ('{big * 192}', 'n2', 'k')",
        f"INSERT INTO projects (id, name, api_key) VALUES ('p3', '{big * 256}', 'k')",
        "INSERT INTO audit_events (id, timestamp, action, actor, path, outcome) VALUES "
        f"('e3', '2024-01-01', 'a', 'a', '{big * (MAX_TEXT + 1)}', 'success')",
    ):
        with pytest.raises(pymysql.err.DataError):
            execute(mysql_url, statement)


# -- the migration lock -------------------------------------------------------------------


def _hold_the_lock(url: str) -> tuple[Connection[Any], int]:
    """A session holding the migration lock, and its connection id. The lock is
    server-wide: other test sessions on the server may hold it a moment, so wait."""
    holder = connect(url)
    with holder.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, 60), CONNECTION_ID()", (MIGRATION_LOCK,))
        taken, holder_id = cursor.fetchone()
    assert taken == 1
    return holder, int(holder_id)


def test_the_lock_is_taken_only_when_a_file_is_pending(mysql_url: str) -> None:
    target = Target(mysql_url)
    migrations = Migrations(MYSQL_FILES, target)
    assert migrations.up() == SHIPPED
    assert target.exclusive_runs == 1
    # Released by the run: another session takes it at once (nobody else holds it long).
    holder, holder_id = _hold_the_lock(mysql_url)
    try:
        # Up to date: opening never waits for a lock another process holds.
        started = time.monotonic()
        assert Migrations(MYSQL_FILES, target).up() == []
        assert time.monotonic() - started < 5
        assert target.exclusive_runs == 1
        assert rows(mysql_url, "SELECT IS_USED_LOCK(%s)", (MIGRATION_LOCK,)) == [(holder_id,)]
    finally:
        holder.close()


def test_a_lock_timeout_names_the_holders_connection_id(mysql_url: str) -> None:
    holder, holder_id = _hold_the_lock(mysql_url)  # as a Go llm-proxy migrating would
    try:
        migrations = Migrations(MYSQL_FILES, Target(mysql_url, lock_timeout=1.5))
        started = time.monotonic()
        with pytest.raises(MigrationError) as info:
            migrations.up()
        assert 1.4 < time.monotonic() - started < 10  # waited in steps, then gave up
        message = str(info.value)
        database = mysql_url.rsplit("/", 1)[1]
        assert f"MySQL connection id {holder_id} on database {database!r}" in message
        assert f"KILL {holder_id}" in message
        assert "llm-proxy-migrations" in message
        assert "goose_db_version" not in tables(mysql_url)  # nothing ran
    finally:
        holder.close()
    # Released (the holder's session ended): the run goes ahead.
    assert Migrations(MYSQL_FILES, Target(mysql_url)).up() == SHIPPED


def _race_up(url: str, barrier: Any, results: Any) -> None:
    up_at_barrier(Migrations(MYSQL_FILES, Target(url)), barrier, results)


def test_processes_racing_apply_each_version_once(mysql_url: str) -> None:
    outcomes = run_processes(_race_up, [(mysql_url,)] * 3, within_s=120)
    assert_each_version_applied_once(outcomes, SHIPPED)
    assert goose_rows(mysql_url) == applied_rows(SHIPPED)


# -- per-statement progress ---------------------------------------------------------------

FAILS_AT_ITS_SECOND_STATEMENT = (
    "-- +goose Up\n"
    "CREATE TABLE half_done (x INT);\n"  # not safe to repeat: the re-run must skip it
    "INSERT INTO no_such_table VALUES (1);\n"
    "CREATE INDEX idx_half_done ON half_done (x);\n"
    "-- +goose Down\n"
    "DROP TABLE half_done;\n"
)
FIXED = FAILS_AT_ITS_SECOND_STATEMENT.replace(
    "INSERT INTO no_such_table VALUES (1);", "INSERT INTO half_done VALUES (1);"
)


def test_a_file_failing_at_its_second_statement_resumes_after_the_first(
    mysql_url: str, tmp_path: Path
) -> None:
    source = source_with(MYSQL_FILES, tmp_path, {"00102_half.sql": FAILS_AT_ITS_SECOND_STATEMENT})
    with pytest.raises(MigrationError) as info:
        Migrations(source, Target(mysql_url)).up()
    message = str(info.value)
    assert "00102_half.sql (version 102, up) failed at statement 2 of 3" in message
    assert "DDL is not transactional on mysql: its first 1 statement stay applied" in message
    assert "migrate up resumes at statement 2" in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "half_done" in tables(mysql_url)
    assert progress_rows(mysql_url) == [(102, "up", 1, 3)]
    migrations = Migrations(source, Target(mysql_url))
    assert migrations.version() == 101
    status = {item.version: item for item in migrations.status()}
    assert status[102].progress == "version 102 stopped after statement 1 of 3"
    assert not status[102].applied

    # down would cross the partial file: refused unless forced.
    with pytest.raises(MigrationError, match="rolling back version 101 would cross it"):
        migrations.down()
    assert migrations.version() == 101

    source.joinpath("00102_half.sql").write_text(FIXED)
    assert Migrations(source, Target(mysql_url)).up() == [102]
    assert rows(mysql_url, "SELECT x FROM half_done") == [(1,)]
    assert progress_rows(mysql_url) == []
    assert goose_rows(mysql_url)[-1] == (102, 1)


def test_down_force_crosses_a_partial_file_and_keeps_its_record(
    mysql_url: str, tmp_path: Path
) -> None:
    source = source_with(MYSQL_FILES, tmp_path, {"00102_half.sql": FAILS_AT_ITS_SECOND_STATEMENT})
    with pytest.raises(MigrationError):
        Migrations(source, Target(mysql_url)).up()
    migrations = Migrations(source, Target(mysql_url))
    assert migrations.down(force=True) == 101
    assert migrations.version() == 100
    assert progress_rows(mysql_url) == [(102, "up", 1, 3)]
    source.joinpath("00102_half.sql").write_text(FIXED)
    assert Migrations(source, Target(mysql_url)).up() == [101, 102]
    assert progress_rows(mysql_url) == []


BIG_FILES = 30


def _big_source(tmp_path: Path) -> Path:
    extra = {}
    for n in range(102, 102 + BIG_FILES):
        # DDL is safe to repeat (a kill between a DDL statement's commit and its progress
        # row re-runs it, as in the shipped files); the INSERT is not, and need not be:
        # it commits together with its progress row.
        extra[f"{n:05d}_big_{n}.sql"] = (
            f"-- +goose Up\nCREATE TABLE IF NOT EXISTS t_{n} (id INT PRIMARY KEY, v INT);\n"
            f"INSERT INTO t_{n} (id, v) SELECT seq, seq FROM seq_1_to_20000;\n"
            f"CREATE INDEX IF NOT EXISTS idx_t_{n} ON t_{n} (v);\n"
            f"-- +goose Down\nDROP TABLE t_{n};\n"
        )
    return source_with(MYSQL_FILES, tmp_path, extra)


def _up_in_child(url: str, source: str) -> None:
    Migrations(Path(source), Target(url)).up()


def test_kill_9_during_up_then_up_resumes(mysql_url: str, tmp_path: Path) -> None:
    source = _big_source(tmp_path)
    Migrations(MYSQL_FILES, Target(mysql_url)).up()
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_up_in_child, args=(mysql_url, str(source)), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(row[0] > 106 for row in progress_rows(mysql_url)):
                break
            assert child.is_alive(), "the child finished before it could be killed"
            time.sleep(0.002)
        child.kill()  # SIGKILL mid-file: the server ends its session (and its lock)
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    migrations = Migrations(source, Target(mysql_url))
    at = migrations.version()
    assert 101 < at < 101 + BIG_FILES
    partial = [item for item in migrations.status() if item.progress]
    assert len(partial) <= 1
    if partial:
        assert partial[0].version == at + 1 and 1 <= partial[0].statements_done <= 3
    # The killed session's lock is gone: the re-run takes it and resumes.
    assert migrations.up() == list(range(at + 1, 102 + BIG_FILES))
    for n in range(102, 102 + BIG_FILES):
        assert rows(mysql_url, f"SELECT COUNT(*), SUM(v) FROM t_{n}") == [(20000, 200010000)]
    applied = [v for v, is_applied in goose_rows(mysql_url) if is_applied]
    assert applied == [0, *SHIPPED, *range(102, 102 + BIG_FILES)]
    assert progress_rows(mysql_url) == []


# -- the command line ---------------------------------------------------------------------


def _cli(url: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_"))}
    env.update(DB_DRIVER="mysql", DATABASE_URL=url, LLM_PROXY_DB_LOAD_PLUGINS="mysql,memory")
    done = subprocess.run(
        [sys.executable, "-m", "llm_proxy_db.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def test_the_cli_reports_a_partial_file_and_down_needs_force(mysql_url: str) -> None:
    assert _cli(mysql_url, "migrate", "up").stdout.endswith("now at version 101.\n")
    assert _cli(mysql_url, "migrate", "down").stdout == "Rolled back 101; now at version 100.\n"
    # What a migrate up killed after version 101's second statement leaves: those two
    # statements done, and their progress row.
    [migration] = [
        m for m in Migrations(MYSQL_FILES, Target(mysql_url)).migrations if m.version == 101
    ]
    execute(
        mysql_url,
        *migration.up[:2],
        f"INSERT INTO {PROGRESS_TABLE} VALUES (101, 'up', 2, {len(migration.up)})",
    )
    text = _cli(mysql_url, "migrate", "status").stdout.splitlines()
    assert text[-2].split()[:3] == ["101", "exact_text_collation", "partial"]
    assert text[-1] == (
        "version 101 stopped after statement 2 of 5: migrate up resumes it at statement 3."
    )
    status = json.loads(_cli(mysql_url, "--json", "migrate", "status").stdout)
    assert status[-1] | {"applied_at": None} == {
        "version": 101,
        "name": "exact_text_collation",
        "applied": False,
        "applied_at": None,
        "stopped_in": "up",
        "statements_done": 2,
        "statements_total": 5,
    }
    refused = _cli(mysql_url, "migrate", "down", code=1)
    assert "version 101 stopped after statement 2 of 5" in refused.stderr
    assert "would cross it" in refused.stderr and "--force" in refused.stderr
    forced = _cli(mysql_url, "migrate", "down", "--force")
    assert forced.stdout == "Rolled back 100; now at version 3.\n"
    resumed = _cli(mysql_url, "migrate", "up")
    assert resumed.stdout == "Applied 100, 101; now at version 101.\n"
    assert progress_rows(mysql_url) == []
    collations = rows(
        mysql_url,
        "SELECT DISTINCT collation_name FROM information_schema.columns WHERE table_schema = "
        "DATABASE() AND table_name = 'projects' AND collation_name IS NOT NULL",
    )
    assert collations == [("utf8mb4_nopad_bin",)]
