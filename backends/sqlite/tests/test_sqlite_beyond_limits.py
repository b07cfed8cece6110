"""Rows another program stored beyond the models' limits still read back and can still be
revoked; their counters are never pushed further (a clear ``DatabaseError``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import MAX_COUNT, AuditEventFilter, DatabaseError, TokenUsageError, generate_token

_TOKEN = generate_token()
_PROJECT = "p" * 300  # an id longer than 191 characters
_NAME = "n" * 300  # a name longer than 255


def _store_beyond_limits(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO projects (id, name, openai_api_key, is_active, created_at, updated_at) "
            "VALUES (?, ?, ?, 1, '0500-01-01 00:00:00+00:00', '2024-05-01 12:00:00+00:00')",
            (_PROJECT, _NAME, "k" * 20_000),
        )
        conn.execute(
            "INSERT INTO tokens (token, project_id, is_active, request_count, max_requests, "
            "created_at, cache_hit_count) VALUES (?, ?, 1, ?, ?, '2024-05-01 12:00:00+00:00', ?)",
            (_TOKEN, _PROJECT, 3_000_000_000, 4_000_000_000, 5_000_000_000),
        )
        conn.execute(
            "INSERT INTO audit_events (id, timestamp, action, actor, outcome, reason, method) "
            "VALUES ('e', '2024-05-01 12:00:00+00:00', 'a', 'b', 'success', ?, ?)",
            ("r" * 20_000, "m" * 50),
        )
    conn.close()


def test_rows_beyond_the_limits_read_back_and_can_be_revoked(
    open_db: OpenDB, db_path: Path
) -> None:
    open_db().close()  # migrated
    _store_beyond_limits(db_path)
    db = open_db()
    project = db.get_project_by_id(_PROJECT)
    assert project.name == _NAME and project.created_at.year == 500
    assert [p.id for p in db.list_projects()] == [_PROJECT]
    token = db.get_token_by_id(_TOKEN)
    assert token.request_count == 3_000_000_000 and token.cache_hit_count == 5_000_000_000
    assert db.list_tokens(_PROJECT) == [token]
    (event,) = db.list_audit_events(AuditEventFilter(search="rrr"))
    assert event.reason == "r" * 20_000 and event.method == "m" * 50

    with pytest.raises(DatabaseError, match="would pass its maximum") as counted:
        db.increment_token_usage(_TOKEN)
    assert not isinstance(counted.value, TokenUsageError)
    with pytest.raises(DatabaseError, match="would pass its maximum"):
        db.increment_cache_hit_count(_TOKEN)
    assert db.get_token_by_id(_TOKEN) == token, "a refused increment changed the token"
    assert db.reset_token_usage(_TOKEN).request_count == 0

    db.revoke_token(_TOKEN)
    assert not db.get_token_by_id(_TOKEN).is_active
    db.delete_token(_TOKEN)
    _store_token_again(db_path)
    assert db.revoke_project_tokens(_PROJECT) == 1
    assert db.stats().total_requests == 3_000_000_000
    assert MAX_COUNT < 3_000_000_000


def _store_token_again(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO tokens (token, project_id, is_active, request_count, created_at) "
            "VALUES (?, ?, 1, 3000000000, '2024-05-01 12:00:00+00:00')",
            (_TOKEN, _PROJECT),
        )
    conn.close()
