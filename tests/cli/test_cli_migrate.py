"""``migrate``: down sticks, status shows pending versions, up applies them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .conftest import Cli


def test_migrate_down_status_up(cli: Cli, cli_env: dict[str, str]) -> None:
    assert cli("--json", "migrate", "version").json() == {"version": 0, "latest": 100}
    assert cli("--json", "migrate", "up").json() == {"applied": [1, 2, 3, 100], "version": 100}
    cli("migrate", "down")
    cli("migrate", "down")
    status: list[dict[str, Any]] = cli("--json", "migrate", "status").json()
    assert [(s["version"], s["applied"]) for s in status] == [
        (1, True),
        (2, True),
        (3, False),
        (100, False),
    ]
    assert status[0]["applied_at"].endswith("+00:00") and status[3]["applied_at"] is None
    text = cli("migrate", "status").out.splitlines()
    assert text[3].split() == ["3", "add_cache_hit_count", "pending", "-"]
    assert cli("migrate", "up").out == "Applied 3, 100; now at version 100.\n"
    assert cli("migrate", "up").out == "Nothing to apply; at version 100.\n"

    # A schema newer than the files this package ships: refused, whatever the command.
    with sqlite3.connect(Path(cli_env["DATABASE_PATH"])) as conn:
        conn.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (199, 1)")
    newer = cli("migrate", "status", code=1)
    assert "newer than the newest migration" in newer.err
    cli("project", "list", code=1)


def test_a_backend_without_migrations_says_so(cli: Cli) -> None:
    result = cli("--driver", "memory", "migrate", "up", code=1)
    assert "the memory backend has no schema migrations" in result.err
