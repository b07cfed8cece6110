"""Helpers for the SQLite backend tests: raw reads, and the bodies of spawned processes.

The process bodies live here (not in a test module) so a ``spawn`` child imports only this
small module and the package, never pytest's collection of a test file.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_proxy_db import DB, FullConfig, TokenLimitReachedError, new_from_full_config

OpenDB = Callable[..., DB]
"""The ``open_db`` fixture: opens a ``DB`` with ``FullConfig`` overrides."""

# The stored form: UTC, space separator, fraction trimmed of trailing zeros (none when zero).
STORED_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{0,5}[1-9])?\+00:00$")


def raw_rows(path: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read with a plain sqlite3 connection (closed afterwards)."""
    conn = sqlite3.connect(path)
    try:
        return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]
    finally:
        conn.close()


def race_increments(path: str, token: str, attempts: int, barrier: Any, results: Any) -> None:
    """Spawned: wait for the others, then try ``attempts`` increments; report the tally."""
    successes = refused = 0
    errors: list[str] = []
    try:
        db = new_from_full_config(FullConfig(path=path, auto_migrate=False))
        try:
            barrier.wait()
            for _ in range(attempts):
                try:
                    db.increment_token_usage(token)
                except TokenLimitReachedError:
                    refused += 1
                except Exception as exc:  # anything else fails the test
                    errors.append(repr(exc))
                else:
                    successes += 1
        finally:
            db.close()
    except Exception as exc:  # reported to the parent
        barrier.abort()
        errors.append(repr(exc))
    results.put((successes, refused, errors))


def race_migrate_up(path: str, barrier: Any, results: Any) -> None:
    """Spawned: open the fresh file at the same moment as the others (without migrating),
    then, all together again, run ``up``."""
    try:
        barrier.wait()
        db = new_from_full_config(FullConfig(path=path, auto_migrate=False))
        try:
            barrier.wait()
            results.put(("ok", db.migrations.up()))
        finally:
            db.close()
    except Exception as exc:  # reported to the parent
        barrier.abort()
        results.put(("error", repr(exc)))
