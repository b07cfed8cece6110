"""Interop with the Go llm-proxy's MySQL schema: a database the Go program migrated to
version 3 and wrote rows to opens here (migrated on to 100 and 101), its tokens validate
and count, goose's rows are kept; rolled back to 3, this package's database is the Go
program's schema again.

The Go program is not built here (it needs Go 1.23; Debian ships 1.19), so its writes are
reproduced exactly as go-sql-driver/mysql 1.9 sends them with the DSN its docs give
(``user:password@tcp(host:3306)/db?parseTime=true``: ``loc`` UTC, server-side prepared
statements): a ``time.Time`` as the text ``2006-01-02 15:04:05.999999999`` of its UTC
wall clock (nanoseconds, trailing zeros cut; the server truncates them to DATETIME(6)'s
microseconds), a ``bool`` as 1/0, a nil pointer as NULL; in a session that keeps the
server's time zone (set to +02:00 here, so nothing may depend on it). goose v3 builds its
table with its MySQL ``CREATE TABLE`` and writes ``(version_id, is_applied)`` rows, each
file's statements and row in one transaction.

Needs llm-proxy-db-mysql and a MySQL or MariaDB server (tests/fixtures/mysql.py: skipped
without one, except under ``CI``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import pytest

pymysql = pytest.importorskip("pymysql")
pytest.importorskip("llm_proxy_db_mysql")

from llm_proxy_db import (  # noqa: E402 - after the skips
    DB,
    AuditEventFilter,
    FullConfig,
    Project,
    Token,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    new_from_full_config,
)
from llm_proxy_db.sql import parse_migration  # noqa: E402
from tests.fixtures.mysql import MySQLServer, connect_kwargs  # noqa: E402

MIGRATIONS = files("llm_proxy_db_mysql") / "migrations"
GO_FILES = (
    "00001_initial_schema.sql",
    "00002_add_deactivation_columns.sql",
    "00003_add_cache_hit_count.sql",
)
GO_UP_SECTIONS_SHA256 = {
    # sha256 of each Go file's text before "-- +goose Down" (sofatutor/llm-proxy,
    # internal/database/migrations/sql/mysql): the Up sections are the Go program's own.
    "00001_initial_schema.sql": "fecc4809c354a8dc5fd687f732334eeebac5b010ea1cced0c46cfb5ae86a1bd5",
    "00002_add_deactivation_columns.sql": (
        "c93d9d6772890293b5da5c023cbe05ade9545880cbb8a7430cddb09f00c70ef9"
    ),
    "00003_add_cache_hit_count.sql": (
        "0d4dc1102f3ed37fc2ba5448ff16e9787316d8fa33345233de172b6ca8ab0c7c"
    ),
}
GOOSE_MYSQL_TABLE = """CREATE TABLE goose_db_version (
		id serial NOT NULL,
		version_id bigint NOT NULL,
		is_applied boolean NOT NULL,
		tstamp timestamp NULL default now(),
		PRIMARY KEY(id)
	)"""
"""goose v3's MySQL dialect, as the Go program's goose.Up creates it."""
GOOSE_INSERT = "INSERT INTO goose_db_version (version_id, is_applied) VALUES (%s, %s)"

# Go's token.GenerateToken: "sk-" + base64url (no padding) of a UUIDv7's 16 bytes.
LIMITED = "sk-AZNnZ1bVdUOaSQyGF3m0Xg"
OPEN = "sk-AZNnZ1bVdUOaSQyGF3m0Xh"
EXPIRED = "sk-AZNnZ1bVdUOaSQyGF3m0Xi"
REVOKED = "sk-AZNnZ1bVdUOaSQyGF3m0Xj"


def go_time(value: datetime) -> str:
    """go-sql-driver's ``appendDateTime`` of ``value.In(time.UTC)`` (nanoseconds)."""
    utc = value.astimezone(UTC)
    nanoseconds = utc.microsecond * 1000 + 789  # Go's clock has nanoseconds
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{nanoseconds:09d}".rstrip("0")


def go_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return go_time(value)
    return value


def go_connection(url: str) -> Any:
    """A session as the Go program's: the server's settings, a non-UTC time zone."""
    conn = pymysql.connect(**connect_kwargs(url))
    with conn.cursor() as cursor:
        cursor.execute("SET time_zone = '+02:00'")
    return conn


def go_exec(conn: Any, statement: str, *args: Any) -> int:
    with conn.cursor() as cursor:
        return int(cursor.execute(statement, tuple(go_value(a) for a in args)))


def goose_up_to_3(url: str) -> None:
    """goose.Up with the Go program's files 1 to 3."""
    conn = go_connection(url)
    try:
        conn.begin()
        go_exec(conn, GOOSE_MYSQL_TABLE)
        go_exec(conn, GOOSE_INSERT, 0, True)
        conn.commit()
        for filename in GO_FILES:
            text = (MIGRATIONS / filename).read_text("utf-8")
            up = text.split("-- +goose Down")[0]
            assert hashlib.sha256(up.encode()).hexdigest() == GO_UP_SECTIONS_SHA256[filename]
            migration = parse_migration(text, filename)
            conn.begin()
            for statement in migration.up:
                go_exec(conn, statement)
            go_exec(conn, GOOSE_INSERT, migration.version, True)
            conn.commit()
    finally:
        conn.close()


NOW = datetime.now(UTC).replace(microsecond=123456)
PROJECT_ID = str(uuid.UUID("0193672c-5a1e-7c3d-9f00-123456789abc"))
OFF_ID = str(uuid.UUID("0193672c-5a1e-7c3d-9f00-123456789abd"))


def write_go_rows(url: str) -> None:
    """DBCreateProject, CreateToken (its version-3 columns), one IncrementTokenUsage and
    one audit event, with the Go program's statements and argument types."""
    conn = go_connection(url)
    project = (
        "INSERT INTO projects (id, name, api_key, is_active, deactivated_at, created_at, "
        "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
    )
    token = (
        "INSERT INTO tokens (token, project_id, expires_at, is_active, deactivated_at, "
        "request_count, max_requests, created_at, last_used_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    try:
        go_exec(conn, project, PROJECT_ID, "go-project", "sk-upstream-go", True, None, NOW, NOW)
        go_exec(
            conn,
            project,
            OFF_ID,
            "go-inactive",
            "sk-upstream-off",
            False,
            NOW,
            NOW - timedelta(days=1),
            NOW,
        )
        day = timedelta(days=1)
        go_exec(conn, token, LIMITED, PROJECT_ID, NOW + day, True, None, 0, 3, NOW, None)
        go_exec(conn, token, OPEN, PROJECT_ID, None, True, None, 0, None, NOW, None)
        go_exec(conn, token, EXPIRED, PROJECT_ID, NOW - day, True, None, 0, None, NOW, None)
        go_exec(conn, token, REVOKED, OFF_ID, None, False, None, 2, None, NOW, None)
        now = datetime.now(UTC)
        counted = go_exec(
            conn,
            "UPDATE tokens SET request_count = request_count + 1, last_used_at = %s "
            "WHERE token = %s AND is_active = TRUE AND (expires_at IS NULL OR expires_at > %s) "
            "AND (max_requests IS NULL OR max_requests <= 0 OR request_count < max_requests)",
            now,
            LIMITED,
            now,
        )
        assert counted == 1
        go_exec(
            conn,
            "INSERT INTO audit_events (id, timestamp, action, actor, project_id, request_id, "
            "correlation_id, client_ip, method, path, user_agent, outcome, reason, token_id, "
            "metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            str(uuid.uuid4()),
            NOW,
            "token.create",
            "management",
            PROJECT_ID,
            "req-1",
            None,
            "2001:db8::1",
            "POST",
            "/manage/tokens",
            "curl/8.5.0",
            "success",
            None,
            "sk-AZNnZ...m0Xg",
            json.dumps({"duration_ms": 12, "ok": True}, separators=(",", ":")),
        )
    finally:
        conn.close()


def raw(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(**connect_kwargs(url))
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            cursor.execute(query, args)
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def utc_micro(value: datetime) -> datetime:
    return value.astimezone(UTC)  # NOW has microseconds; the nanoseconds were truncated


@pytest.fixture
def go_url(mysql_url: str) -> str:
    goose_up_to_3(mysql_url)
    write_go_rows(mysql_url)
    return mysql_url


@pytest.fixture
def db(go_url: str) -> Iterator[DB]:
    database = new_from_full_config(FullConfig(driver="mysql", database_url=go_url))
    try:
        yield database
    finally:
        database.close()


def test_the_go_database_opens_and_keeps_gooses_rows(go_url: str) -> None:
    goose = "SELECT id, version_id, is_applied, tstamp FROM goose_db_version ORDER BY id"
    before = raw(go_url, goose)
    assert [(row[1], row[2]) for row in before] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    with new_from_full_config(FullConfig(driver="mysql", database_url=go_url)) as db:
        assert db.migrations.version() == 101
        status = db.migrations.status()
        assert [(s.version, s.applied) for s in status] == [(v, True) for v in (1, 2, 3, 100, 101)]
        assert all(s.applied_at is not None and s.progress is None for s in status)
        # goose's TIMESTAMP, written in the Go session's +02:00, reads back as UTC.
        go_applied = {s.version: s.applied_at for s in status if s.version <= 3}
        for version, applied_at in go_applied.items():
            assert applied_at is not None
            assert abs(applied_at - datetime.now(UTC)) < timedelta(minutes=5), version
    after = raw(go_url, goose)
    assert after[:4] == before
    assert [(row[1], row[2]) for row in after[4:]] == [(100, 1), (101, 1)]


def test_go_rows_read_back(db: DB) -> None:
    project = db.get_project_by_id(PROJECT_ID)
    assert project.name == "go-project"
    assert project.openai_api_key == "sk-upstream-go"  # the Go schema's api_key column
    assert project.is_active and project.deactivated_at is None
    assert project.created_at == utc_micro(NOW) and project.created_at.tzinfo is UTC
    inactive = db.get_project_by_id(OFF_ID)
    assert not inactive.is_active and inactive.deactivated_at == utc_micro(NOW)
    assert [p.name for p in db.list_projects()] == ["go-inactive", "go-project"]

    limited = db.get_token_by_id(LIMITED)
    assert (limited.request_count, limited.max_requests) == (1, 3)
    assert limited.expires_at == utc_micro(NOW + timedelta(days=1))
    assert limited.last_used_at is not None
    assert abs(limited.last_used_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert limited.cache_hit_count == 0  # Go's 00003 default
    assert {t.token for t in db.list_tokens(PROJECT_ID)} == {LIMITED, OPEN, EXPIRED}

    [event] = db.list_audit_events(AuditEventFilter(project_id=PROJECT_ID))
    assert (event.action, event.actor, event.outcome) == ("token.create", "management", "success")
    assert event.client_ip == "2001:db8::1" and event.timestamp == utc_micro(NOW)
    assert event.metadata == {"duration_ms": 12, "ok": True}


def test_go_tokens_validate_and_count(db: DB, go_url: str) -> None:
    assert db.increment_token_usage(LIMITED).request_count == 2
    assert db.increment_token_usage(LIMITED).request_count == 3
    with pytest.raises(TokenLimitReachedError):
        db.increment_token_usage(LIMITED)
    assert db.get_token_by_id(LIMITED).request_count == 3
    for _ in range(5):
        db.increment_token_usage(OPEN)
    assert db.get_token_by_id(OPEN).request_count == 5
    with pytest.raises(TokenExpiredError):
        db.increment_token_usage(EXPIRED)
    with pytest.raises(TokenInactiveError):
        db.increment_token_usage(REVOKED)
    # Exact keys (version 101): a case variant or a padded copy of a Go token is no token.
    for variant in (OPEN.upper(), OPEN.lower(), OPEN + "   ", OPEN + " "):
        with pytest.raises(TokenNotFoundError):
            db.increment_token_usage(variant)
    assert db.get_token_by_id(OPEN).request_count == 5
    # A row written here reads in the Go program's session with its own query.
    created = db.create_token(Token(project_id=PROJECT_ID, max_requests=2))
    conn = go_connection(go_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT token, project_id, expires_at, is_active, deactivated_at, "
                "request_count, max_requests, created_at, last_used_at, cache_hit_count "
                "FROM tokens WHERE token = %s",
                (created.token,),
            )
            row = cursor.fetchone()
    finally:
        conn.close()
    assert row is not None
    assert row[:7] == (created.token, PROJECT_ID, None, 1, None, 0, 2)
    assert row[7] == created.created_at.replace(tzinfo=None)  # naive UTC, as Go reads it


def _schema(url: str) -> dict[str, str]:
    shown = {}
    for table in ("projects", "tokens", "audit_events"):
        [(_, text)] = raw(url, f"SHOW CREATE TABLE {table}")
        shown[table] = text
    return shown


def test_rolled_back_to_3_it_is_the_go_schema(mysql_server: MySQLServer) -> None:
    go_url = mysql_server.new_database_url()
    goose_up_to_3(go_url)
    ours = mysql_server.new_database_url()
    with new_from_full_config(FullConfig(driver="mysql", database_url=ours)) as db:
        db.create_project(Project(name="kept", openai_api_key="sk-upstream"))
        assert db.migrations.down() == 101
        assert db.migrations.down() == 100
        assert db.migrations.version() == 3
    assert _schema(ours) == _schema(go_url)
    goose = "SELECT version_id, is_applied FROM goose_db_version ORDER BY id"
    assert raw(ours, goose) == raw(go_url, goose)
    assert raw(ours, "SELECT name FROM projects") == [("kept",)]
