"""Interoperability with the Go llm-proxy (issue 3), and the stored timestamp format.

A database built the way the Go program builds it (goose applying the three SQL files, rows
written by the mattn/go-sqlite3 driver) opens with ``new()`` and works through the API; a
database this package creates has the Go schema's tables, columns, indexes, foreign key and
goose version rows, and holds values the Go driver reads.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import pytest
from sqlite_support import STORED_TIMESTAMP, OpenDB, raw_rows

from llm_proxy_db import (
    AuditEvent,
    AuditEventFilter,
    Config,
    MigrationError,
    Project,
    Token,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    new,
)
from llm_proxy_db.sql import parse_migration
from llm_proxy_db_sqlite import SQLITE

MIGRATIONS = files("llm_proxy_db_sqlite") / "migrations"
GO_FILES = (
    "00001_initial_schema.sql",
    "00002_add_deactivation_columns.sql",
    "00003_add_cache_hit_count.sql",
)
IS_ACTIVE = "is_active BOOLEAN NOT NULL DEFAULT 1"

ISSUE_3_INDEXES: dict[str, tuple[str, list[str]]] = {
    "idx_projects_name": ("projects", ["name"]),
    "idx_tokens_project_id": ("tokens", ["project_id"]),
    "idx_tokens_expires_at": ("tokens", ["expires_at"]),
    "idx_tokens_is_active": ("tokens", ["is_active"]),
    "idx_audit_timestamp": ("audit_events", ["timestamp"]),
    "idx_audit_action": ("audit_events", ["action"]),
    "idx_audit_project_id": ("audit_events", ["project_id"]),
    "idx_audit_client_ip": ("audit_events", ["client_ip"]),
    "idx_audit_request_id": ("audit_events", ["request_id"]),
    "idx_audit_outcome": ("audit_events", ["outcome"]),
    "idx_audit_ip_action": ("audit_events", ["client_ip", "action"]),
}
# name -> (type, notnull, pk), as PRAGMA table_info reports the Go schema's columns.
GO_COLUMNS: dict[str, dict[str, tuple[str, int, int]]] = {
    "projects": {
        "id": ("TEXT", 0, 1),
        "name": ("TEXT", 1, 0),
        "openai_api_key": ("TEXT", 1, 0),
        "is_active": ("BOOLEAN", 1, 0),
        "created_at": ("DATETIME", 1, 0),
        "updated_at": ("DATETIME", 1, 0),
        "deactivated_at": ("DATETIME", 0, 0),
    },
    "tokens": {
        "token": ("TEXT", 0, 1),
        "project_id": ("TEXT", 1, 0),
        "expires_at": ("DATETIME", 0, 0),
        "is_active": ("BOOLEAN", 1, 0),
        "request_count": ("INTEGER", 1, 0),
        "max_requests": ("INTEGER", 0, 0),
        "created_at": ("DATETIME", 1, 0),
        "last_used_at": ("DATETIME", 0, 0),
        "deactivated_at": ("DATETIME", 0, 0),
        "cache_hit_count": ("INTEGER", 1, 0),
    },
    "audit_events": {
        "id": ("TEXT", 0, 1),
        "timestamp": ("DATETIME", 1, 0),
        "action": ("TEXT", 1, 0),
        "actor": ("TEXT", 1, 0),
        "project_id": ("TEXT", 0, 0),
        "request_id": ("TEXT", 0, 0),
        "correlation_id": ("TEXT", 0, 0),
        "client_ip": ("TEXT", 0, 0),
        "method": ("TEXT", 0, 0),
        "path": ("TEXT", 0, 0),
        "user_agent": ("TEXT", 0, 0),
        "outcome": ("TEXT", 1, 0),
        "reason": ("TEXT", 0, 0),
        "token_id": ("TEXT", 0, 0),
        "metadata": ("TEXT", 0, 0),
    },
}
TIMESTAMP_COLUMNS = {
    "projects": ("created_at", "updated_at", "deactivated_at"),
    "tokens": ("expires_at", "created_at", "last_used_at", "deactivated_at"),
    "audit_events": ("timestamp",),
}


def utc(
    year: int, month: int, day: int, hour: int, minute: int, second: int, microsecond: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


# -- building a database as the Go program does --------------------------------------------


def _go_column_order(statement: str) -> list[str]:
    """The published Go 00001 creates projects and tokens without ``is_active`` and adds it
    with ``ALTER TABLE`` (so it is the last column): the same statements, in that shape."""
    for table in ("projects", "tokens"):
        if statement.startswith(f"CREATE TABLE IF NOT EXISTS {table} ("):
            lines = [line for line in statement.splitlines() if line.strip() != f"{IS_ACTIVE},"]
            assert len(lines) == len(statement.splitlines()) - 1
            return ["\n".join(lines), f"ALTER TABLE {table} ADD COLUMN {IS_ACTIVE}"]
    return [statement]


def build_go_database(path: Path, *, go_column_order: bool = False) -> None:
    """goose's sequence on a fresh file: its version table and row 0, then each file's Up
    statements in a transaction with the file's version row (tstamp by the table default,
    ``datetime('now')``, as goose leaves it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(SQLITE.version_table_ddl)
        conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, 1)")
        for filename in GO_FILES:
            migration = parse_migration((MIGRATIONS / filename).read_text("utf-8"), filename)
            conn.execute("BEGIN")
            for statement in migration.up:
                for sql in _go_column_order(statement) if go_column_order else [statement]:
                    conn.execute(sql)
            conn.execute(
                "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, 1)",
                (migration.version,),
            )
            conn.execute("COMMIT")
    finally:
        conn.close()


# Go's driver writes time.Time as '2006-01-02 15:04:05.999999999-07:00' in the value's zone;
# SQLite's CURRENT_TIMESTAMP gives '2006-01-02 15:04:05'; some tools write a 'T'.
GO_ROWS: dict[str, list[dict[str, Any]]] = {
    "projects": [
        {
            "id": "proj-go",
            "name": "go-project",
            "openai_api_key": "sk-upstream-go",
            "is_active": True,
            "created_at": "2024-05-01 13:00:00.123456789+01:00",
            "updated_at": "2024-05-01 12:00:00",
        },
        {
            "id": "proj-off",
            "name": "go-inactive",
            "openai_api_key": "sk-upstream-off",
            "is_active": False,
            "deactivated_at": "2024-05-03 12:00:00.000000999+01:00",
            "created_at": "2024-05-02T10:30:00.25+01:00",
            "updated_at": "2024-05-03 11:00:00+00:00",
        },
    ],
    "tokens": [
        {
            "token": "sk-go-token-limited",
            "project_id": "proj-go",
            "expires_at": "2099-01-01 01:00:00+01:00",
            "is_active": True,
            "deactivated_at": None,
            "request_count": 5,
            "max_requests": 7,
            "created_at": "2024-05-01 13:00:00.123456789+01:00",
            "last_used_at": "2024-05-01T13:30:00.999999999+01:00",
        },
        {
            "token": "sk-go-token-open",
            "project_id": "proj-go",
            "expires_at": None,
            "is_active": True,
            "deactivated_at": None,
            "request_count": 0,
            "max_requests": None,
            "created_at": "2024-05-01 12:00:00",
            "last_used_at": None,
        },
        {
            "token": "sk-go-token-revoked",
            "project_id": "proj-off",
            "expires_at": None,
            "is_active": False,
            "deactivated_at": "2024-05-03 12:00:00+01:00",
            "request_count": 2,
            "max_requests": None,
            "created_at": "2024-05-02 08:00:00-02:00",
            "last_used_at": None,
        },
    ],
    "audit_events": [
        {
            "id": "evt-go-1",
            "timestamp": "2024-05-01 13:00:00.987654321+01:00",
            "action": "token.create",
            "actor": "admin",
            "project_id": "proj-go",
            "request_id": "req-1",
            "correlation_id": "corr-1",
            "client_ip": "203.0.113.9",
            "method": "POST",
            "path": "/manage/tokens",
            "user_agent": "go-http-client/1.1",
            "outcome": "success",
            "reason": None,
            "token_id": "sk-go-to...ited",
            "metadata": json.dumps({"duration_ms": 12, "tags": ["a", "b"], "ok": True}),
        },
        {
            "id": "evt-go-2",
            "timestamp": "2024-05-01 11:00:00",
            "action": "proxy.request",
            "actor": "sk-go-to...open",
            "project_id": "proj-go",
            "outcome": "failure",
            "reason": "upstream timeout",
            "metadata": None,
        },
    ],
}


def insert_go_rows(path: Path) -> None:
    """The rows, as Go's database/sql binds them: booleans as 1/0, metadata as JSON text."""
    conn = sqlite3.connect(path)
    with conn:
        for table, rows in GO_ROWS.items():
            for row in rows:
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                values = [int(v) if isinstance(v, bool) else v for v in row.values()]
                conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", values)
    conn.close()


# -- the Go program's database, opened here ------------------------------------------------


@pytest.mark.parametrize("go_column_order", [False, True], ids=["shipped-sql", "go-column-order"])
def test_database_built_by_go_opens_reads_updates_and_increments(
    db_path: Path, go_column_order: bool
) -> None:
    build_go_database(db_path, go_column_order=go_column_order)
    insert_go_rows(db_path)
    go_goose_rows = raw_rows(
        db_path, "SELECT id, version_id, is_applied, tstamp FROM goose_db_version"
    )

    with new(Config(path=str(db_path))) as db:
        # Upgraded from the Go program's version 3 to ours; goose's rows left as they were.
        assert db.migrations.version() == 100
        status = db.migrations.status()
        assert [(s.version, s.applied) for s in status] == [(v, True) for v in (1, 2, 3, 100)]
        assert all(s.applied_at is not None for s in status)  # datetime('now') text reads
        rows = raw_rows(db_path, "SELECT id, version_id, is_applied, tstamp FROM goose_db_version")
        assert rows[:4] == go_goose_rows
        assert [(r[1], r[2]) for r in rows[4:]] == [(100, 1)]

        # Read: every form of timestamp becomes an aware UTC datetime (microseconds).
        project = db.get_project_by_id("proj-go")
        assert project.name == "go-project"
        assert project.openai_api_key == "sk-upstream-go"
        assert project.is_active is True
        assert project.deactivated_at is None
        assert project.created_at == utc(2024, 5, 1, 12, 0, 0, 123456)
        assert project.updated_at == utc(2024, 5, 1, 12, 0, 0)
        for stamp in (project.created_at, project.updated_at):
            assert stamp.tzinfo is UTC
        inactive = db.get_project_by_id("proj-off")
        assert inactive.is_active is False
        assert inactive.created_at == utc(2024, 5, 2, 9, 30, 0, 250000)
        assert inactive.deactivated_at == utc(2024, 5, 3, 11, 0, 0)  # 999 ns truncated
        assert inactive.updated_at == utc(2024, 5, 3, 11, 0, 0)
        assert [p.name for p in db.list_projects()] == ["go-inactive", "go-project"]

        limited = db.get_token_by_id("sk-go-token-limited")
        assert limited.project_id == "proj-go"
        assert limited.expires_at == utc(2099, 1, 1, 0, 0, 0)
        assert limited.is_active is True
        assert (limited.request_count, limited.max_requests) == (5, 7)
        assert limited.created_at == utc(2024, 5, 1, 12, 0, 0, 123456)
        assert limited.last_used_at == utc(2024, 5, 1, 12, 30, 0, 999999)
        assert limited.cache_hit_count == 0  # the column default of Go's 00003
        revoked = db.get_token_by_id("sk-go-token-revoked")
        assert revoked.is_active is False
        assert revoked.deactivated_at == utc(2024, 5, 3, 11, 0, 0)
        assert revoked.created_at == utc(2024, 5, 2, 10, 0, 0)
        assert {t.token for t in db.list_tokens("proj-go")} == {
            "sk-go-token-limited",
            "sk-go-token-open",
        }
        for token in db.list_tokens():
            for value in (token.created_at, token.expires_at, token.last_used_at):
                assert value is None or value.tzinfo is UTC

        event = db.get_audit_event_by_id("evt-go-1")
        assert event.timestamp == utc(2024, 5, 1, 12, 0, 0, 987654)
        assert event.timestamp.tzinfo is UTC
        assert event.metadata == {"duration_ms": 12, "tags": ["a", "b"], "ok": True}
        assert (event.action, event.actor, event.outcome) == ("token.create", "admin", "success")
        assert (event.client_ip, event.method, event.path) == (
            "203.0.113.9",
            "POST",
            "/manage/tokens",
        )
        other = db.get_audit_event_by_id("evt-go-2")
        assert other.timestamp == utc(2024, 5, 1, 11, 0, 0)
        assert other.metadata is None
        assert [e.id for e in db.list_audit_events()] == ["evt-go-1", "evt-go-2"]
        assert db.count_audit_events(AuditEventFilter(project_id="proj-go")) == 2
        assert db.count_audit_events(AuditEventFilter(outcome="failure")) == 1

        # Update, increment, revoke and log through the API.
        renamed = db.update_project(attrs.evolve(project, name="go-project-renamed"))
        assert renamed.created_at == project.created_at
        assert renamed.updated_at > project.updated_at
        updated = db.update_token(attrs.evolve(limited, max_requests=8))
        assert updated.max_requests == 8
        assert updated.expires_at == utc(2099, 1, 1, 0, 0, 0)
        for expected in (6, 7, 8):
            assert db.increment_token_usage(limited.token).request_count == expected
        with pytest.raises(TokenLimitReachedError):
            db.increment_token_usage(limited.token)
        with pytest.raises(TokenInactiveError):
            db.increment_token_usage(revoked.token)
        db.increment_cache_hit_count(limited.token, 3)
        db.revoke_token("sk-go-token-open")
        assert db.get_token_by_id("sk-go-token-open").deactivated_at is not None
        db.create_audit_event(AuditEvent(action="token.use", actor="proxy", outcome="success"))
        db.create_project(Project(name="python-project", openai_api_key="sk-upstream-py"))
        stats = db.stats()
        assert (stats.projects, stats.tokens, stats.total_requests) == (3, 3, 10)

    # What this package wrote is UTC text in the Go driver's layout; Go's own values stay.
    ((name, active_type, created_text, updated_text),) = raw_rows(
        db_path,
        "SELECT name, typeof(is_active), created_at, updated_at FROM projects WHERE id = ?",
        ["proj-go"],
    )
    assert (name, active_type) == ("go-project-renamed", "integer")
    assert created_text == "2024-05-01 13:00:00.123456789+01:00"  # untouched
    assert STORED_TIMESTAMP.match(updated_text)
    ((expires, last_used, count, limit, hits),) = raw_rows(
        db_path,
        "SELECT expires_at, last_used_at, request_count, max_requests, cache_hit_count "
        "FROM tokens WHERE token = 'sk-go-token-limited'",
    )
    assert expires == "2099-01-01 00:00:00+00:00"  # rewritten by update_token, in UTC
    assert STORED_TIMESTAMP.match(last_used)
    assert (count, limit, hits) == (8, 8, 3)
    ((active, active_type, deactivated),) = raw_rows(
        db_path,
        "SELECT is_active, typeof(is_active), deactivated_at FROM tokens "
        "WHERE token = 'sk-go-token-open'",
    )
    assert (active, active_type) == (0, "integer")
    assert STORED_TIMESTAMP.match(deactivated)
    ((stamp, metadata),) = raw_rows(
        db_path, "SELECT timestamp, metadata FROM audit_events WHERE action = 'token.use'"
    )
    assert STORED_TIMESTAMP.match(stamp)
    assert metadata is None


def test_go_database_keeps_working_after_reopening(db_path: Path) -> None:
    build_go_database(db_path, go_column_order=True)
    insert_go_rows(db_path)
    new(Config(path=str(db_path))).close()
    with new(Config(path=str(db_path))) as db:  # already at version 100: nothing to apply
        assert db.migrations.up() == []
        assert db.get_token_by_id("sk-go-token-limited").request_count == 5
    versions = raw_rows(db_path, "SELECT version_id FROM goose_db_version ORDER BY id")
    assert [v for (v,) in versions] == [0, 1, 2, 3, 100]


@pytest.mark.parametrize("auto_migrate", [True, False], ids=["migrating", "not-migrating"])
def test_go_database_past_version_3_is_refused_on_open(
    db_path: Path, open_db: OpenDB, auto_migrate: bool
) -> None:
    """The Go program's own later migrations number on from 4 (a token id column, ...):
    a database it took to version 5 has a schema this package does not know."""
    build_go_database(db_path)
    insert_go_rows(db_path)
    conn = sqlite3.connect(db_path)
    with conn:
        for version in (4, 5):
            conn.execute(
                "INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, 1)", (version,)
            )
    conn.close()
    before = raw_rows(db_path, "SELECT * FROM goose_db_version ORDER BY id")
    with pytest.raises(MigrationError) as caught:
        open_db(auto_migrate=auto_migrate)
    message = str(caught.value)
    assert message.startswith(
        "database has applied migration versions 4, 5 that this package does not ship: "
        "it was migrated by another program (the Go llm-proxy?)"
    )
    assert message.endswith("refusing to run on an unknown schema")
    assert raw_rows(db_path, "SELECT * FROM goose_db_version ORDER BY id") == before
    indexes = raw_rows(db_path, "SELECT name FROM sqlite_master WHERE name LIKE 'idx_audit_%_id'")
    assert ("idx_audit_timestamp_id",) not in indexes  # 100 was not applied on top


# -- expiry that Go wrote with a non-UTC offset compares by instant, not by text ---------


@pytest.mark.parametrize(
    ("offset", "shift", "expect_usable"),
    [
        # expired 30 minutes ago, written in +01:00: text sorts after 'now' in UTC
        (timezone(timedelta(hours=1)), timedelta(minutes=-30), False),
        # valid for another hour, written in -07:00: text sorts before 'now' in UTC
        (timezone(timedelta(hours=-7)), timedelta(hours=1), True),
    ],
    ids=["expired-plus-0100", "valid-minus-0700"],
)
def test_go_expiry_written_with_an_offset_is_honoured(
    db_path: Path, offset: timezone, shift: timedelta, expect_usable: bool
) -> None:
    build_go_database(db_path)
    insert_go_rows(db_path)
    expires = (datetime.now(UTC) + shift).astimezone(offset)
    go_text = expires.strftime("%Y-%m-%d %H:%M:%S.%f") + expires.strftime("%z")[:3] + ":00"
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "UPDATE tokens SET expires_at = ? WHERE token = 'sk-go-token-open'", (go_text,)
        )
    conn.close()
    with new(Config(path=str(db_path))) as db:
        if expect_usable:
            assert db.increment_token_usage("sk-go-token-open").request_count == 1
        else:
            with pytest.raises(TokenExpiredError):
                db.increment_token_usage("sk-go-token-open")


# -- the reverse: a database this package creates is the Go program's schema ---------------


def _columns(path: Path, table: str) -> dict[str, tuple[str, int, int]]:
    return {
        name: (type_, notnull, pk)
        for _, name, type_, notnull, _, pk in raw_rows(path, f"PRAGMA table_info({table})")
    }


def _defaults(path: Path, table: str) -> dict[str, Any]:
    return {row[1]: row[4] for row in raw_rows(path, f"PRAGMA table_info({table})")}


def _indexes(path: Path) -> dict[str, tuple[str, list[str]]]:
    found = {}
    for name, table in raw_rows(
        path, "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ):
        info = raw_rows(path, f"PRAGMA index_info({name})")
        found[name] = (table, [column for _, _, column in sorted(info)])
    return found


def test_database_created_here_has_the_go_schema(open_db: OpenDB, db_path: Path) -> None:
    open_db().close()

    tables = {
        name
        for (name,) in raw_rows(
            db_path,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
    }
    assert tables == {"projects", "tokens", "audit_events", "goose_db_version"}
    for table, expected in GO_COLUMNS.items():
        assert _columns(db_path, table) == expected, table

    defaults = _defaults(db_path, "projects")
    assert defaults["is_active"] == "1"
    assert defaults["created_at"] == defaults["updated_at"] == "CURRENT_TIMESTAMP"
    defaults = _defaults(db_path, "tokens")
    assert (defaults["is_active"], defaults["request_count"], defaults["cache_hit_count"]) == (
        "1",
        "0",
        "0",
    )
    assert defaults["created_at"] == "CURRENT_TIMESTAMP"

    indexes = _indexes(db_path)
    assert {name: indexes[name] for name in ISSUE_3_INDEXES if name in indexes} == ISSUE_3_INDEXES
    extra = set(indexes) - set(ISSUE_3_INDEXES)
    assert extra == {
        "idx_audit_project_timestamp",
        "idx_audit_timestamp_id",
        "idx_tokens_project_created",
    }
    # projects.name is UNIQUE (an automatic unique index on exactly that column).
    unique = [
        [c for _, _, c in raw_rows(db_path, f"PRAGMA index_info({name})")]
        for _, name, is_unique, origin, _ in raw_rows(db_path, "PRAGMA index_list(projects)")
        if is_unique and origin == "u"
    ]
    assert unique == [["name"]]
    # The outcome CHECK constraint is there.
    audit_sql = raw_rows(db_path, "SELECT sql FROM sqlite_master WHERE name = 'audit_events'")
    assert "CHECK (outcome IN ('success', 'failure'))" in audit_sql[0][0]

    foreign_keys = raw_rows(db_path, "PRAGMA foreign_key_list(tokens)")
    assert [(fk[2], fk[3], fk[4], fk[6]) for fk in foreign_keys] == [
        ("projects", "project_id", "id", "CASCADE")
    ]
    assert raw_rows(db_path, "PRAGMA foreign_key_list(audit_events)") == []

    goose = raw_rows(
        db_path, "SELECT id, version_id, is_applied, tstamp FROM goose_db_version ORDER BY id"
    )
    assert [(version, applied) for _, version, applied, _ in goose] == [
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
        (100, 1),
    ]
    assert [row[0] for row in goose] == sorted(row[0] for row in goose)
    assert all(STORED_TIMESTAMP.match(row[3]) for row in goose)


@pytest.mark.parametrize("go_column_order", [False, True], ids=["shipped-sql", "go-column-order"])
def test_schema_matches_the_go_built_one_column_for_column(
    open_db: OpenDB, db_path: Path, tmp_path: Path, go_column_order: bool
) -> None:
    """Apart from column order, a database made here and one goose made from the Go files
    (then upgraded here) have the same columns, defaults, indexes and foreign keys."""
    open_db().close()
    go_path = tmp_path / "go.db"
    build_go_database(go_path, go_column_order=go_column_order)
    new(Config(path=str(go_path))).close()

    def schema(path: Path) -> dict[str, Any]:
        return {
            table: sorted(row[1:] for row in raw_rows(path, f"PRAGMA table_info({table})"))
            for table in GO_COLUMNS
        } | {
            "indexes": _indexes(path),
            "foreign_keys": raw_rows(path, "PRAGMA foreign_key_list(tokens)"),
        }

    assert schema(db_path) == schema(go_path)


# -- the stored timestamp format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (utc(2024, 5, 1, 12, 0, 0), "2024-05-01 12:00:00+00:00"),
        (utc(2024, 5, 1, 12, 0, 0, 500000), "2024-05-01 12:00:00.5+00:00"),
        (utc(2024, 5, 1, 12, 0, 0, 120000), "2024-05-01 12:00:00.12+00:00"),
        (utc(2024, 5, 1, 12, 0, 0, 123456), "2024-05-01 12:00:00.123456+00:00"),
        (utc(2024, 5, 1, 12, 0, 0, 1), "2024-05-01 12:00:00.000001+00:00"),
        (
            datetime(
                2024, 5, 1, 14, 30, 0, 250000, tzinfo=timezone(timedelta(hours=2, minutes=30))
            ),
            "2024-05-01 12:00:00.25+00:00",
        ),
        (
            datetime(2024, 12, 31, 20, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2025-01-01 01:00:00+00:00",
        ),
    ],
)
def test_timestamps_are_stored_as_utc_text(
    open_db: OpenDB, db_path: Path, value: datetime, stored: str
) -> None:
    db = open_db()
    project = db.create_project(
        Project(name="stamps", openai_api_key="sk-upstream", created_at=value, updated_at=value)
    )
    db.create_token(
        Token(
            project_id=project.id,
            token="sk-stamps",  # noqa: S106 - a test token
            expires_at=value,
            created_at=value,
            last_used_at=value,
            deactivated_at=value,
            is_active=False,
        )
    )
    db.create_audit_event(
        AuditEvent(id="evt", action="a", actor="b", outcome="success", timestamp=value)
    )
    assert raw_rows(db_path, "SELECT created_at, updated_at FROM projects") == [(stored, stored)]
    assert raw_rows(
        db_path, "SELECT expires_at, created_at, last_used_at, deactivated_at FROM tokens"
    ) == [(stored,) * 4]
    assert raw_rows(db_path, "SELECT timestamp FROM audit_events") == [(stored,)]
    # ... and reads back as the same instant, in UTC.
    assert db.get_audit_event_by_id("evt").timestamp == value
    assert db.get_audit_event_by_id("evt").timestamp.tzinfo is UTC


def test_every_timestamp_written_by_the_api_has_the_stored_format(
    open_db: OpenDB, db_path: Path
) -> None:
    db = open_db()
    project = db.create_project(Project(name="api", openai_api_key="sk-upstream"))
    token = db.create_token(
        Token(project_id=project.id, expires_at=datetime.now(UTC) + timedelta(days=1))
    )
    db.increment_token_usage(token.token)
    db.revoke_token(token.token)
    db.update_project(attrs.evolve(project, is_active=False, deactivated_at=datetime.now(UTC)))
    with db.transaction() as tx:
        other = tx.create_token(Token(project_id=project.id))
        tx.create_audit_event(AuditEvent(action="tx", actor="test", outcome="failure"))
    db.revoke_project_tokens(project.id)
    assert db.get_token_by_id(other.token).is_active is False
    for table, columns in TIMESTAMP_COLUMNS.items():
        for row in raw_rows(db_path, f"SELECT {', '.join(columns)} FROM {table}"):
            for column, text in zip(columns, row, strict=True):
                assert text is None or STORED_TIMESTAMP.match(text), (table, column, text)
    # Booleans are stored as the integers 1/0.
    assert set(raw_rows(db_path, "SELECT typeof(is_active), is_active FROM tokens")) == {
        ("integer", 0)
    }
    assert raw_rows(db_path, "SELECT typeof(is_active), is_active FROM projects") == [
        ("integer", 0)
    ]
