"""A SQLite row holding one byte that is not UTF-8 (another writer left it): no CLI output,
and no failure audit event's reason, quotes the upstream key or the token."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llm_proxy_db import DatabaseError, ProjectExistsError
from llm_proxy_db.cli._changes import failure_reason

from .conftest import API_KEY, Cli


def _corrupt(path: Path, table: str, column: str, value: str) -> None:
    raw = (value.encode() + b"\xff").hex()
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {table} SET {column} = CAST(x'{raw}' AS TEXT)")
    conn.close()


def _reasons(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        rows = conn.execute("SELECT reason FROM audit_events WHERE outcome = 'failure'")
        reasons = [row[0] for row in rows]
    conn.close()
    return reasons


def test_no_output_or_audit_reason_quotes_a_secret(
    cli: Cli, cli_env: dict[str, str], project: dict[str, Any]
) -> None:
    if cli_env["DB_DRIVER"] != "sqlite":
        pytest.skip("writes a SQLite row with sqlite3")
    path = Path(cli_env["DATABASE_PATH"])
    token = cli("token", "create", "--project", project["id"], "--quiet").out.strip()
    _corrupt(path, "tokens", "token", token)
    _corrupt(path, "projects", "openai_api_key", API_KEY)
    key_env = {"NEW_KEY": "sk-new-upstream-key-0123456789"}
    runs = [
        ("project", "list"),
        ("project", "show", project["id"]),
        ("project", "show", project["name"]),
        ("token", "list"),
        ("token", "list", "--project", project["id"]),
        ("token", "show", token[:12]),
        ("token", "revoke", token[:12]),
        ("token", "create", "--project", project["name"]),
        ("project", "update", project["name"], "--name", "renamed"),
        ("project", "update", project["id"], "--api-key-env", "NEW_KEY"),
        ("project", "deactivate", project["id"]),
    ]
    outputs: list[str] = []
    for args in runs:
        for json_flag in ((), ("--json",)):
            result = cli(*json_flag, *args, env=key_env, code=1)
            outputs += [result.out, result.err]
            assert "not valid UTF-8" in result.err, result.err
    outputs += [cli(*args).out for args in (("--json", "audit", "list"), ("audit", "list"))]
    outputs += [cli("stats").out]
    reasons = _reasons(path)
    assert reasons  # the refused changes wrote their failure events
    for text in [*outputs, *reasons]:
        for secret in (API_KEY, token, API_KEY[:16], token[:16]):
            assert secret not in text, text


class ForeignError(DatabaseError):
    """A backend's own error class: its message is not the library's."""


def test_failure_reason_keeps_library_messages_and_masks_secret_shapes() -> None:
    exists = ProjectExistsError("a project named 'x' already exists", key="x")
    assert failure_reason(exists) == "a project named 'x' already exists"
    leaky = DatabaseError(f"SQLite error: with text '{API_KEY}' and sk-{'A' * 43}")
    assert API_KEY not in failure_reason(leaky) and "A" * 20 not in failure_reason(leaky)
    assert failure_reason(leaky).startswith("SQLite error: with text 'sk-up...")
    assert failure_reason(ForeignError(API_KEY)) == (
        "DatabaseError (the backend's message is not stored)"
    )
