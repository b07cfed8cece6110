"""Shared by the migration fault tests of SQLite and PostgreSQL: the shipped migration
folders, a file failing at its last statement after four changes, and what the next ``up``
after a SIGKILL mid-way must do. (The big migration set and the killed child are in
``migration_support``.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_proxy_db import MigrationError
from llm_proxy_db.sql import Migrations, MigrationTarget
from tests.faults.migration_support import MIGRATION_FILES, REPO

SQLITE_FILES = REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations"
POSTGRES_FILES = REPO / "backends/postgres/src/llm_proxy_db_postgres/migrations"
LATEST = 100 + MIGRATION_FILES
"""The last version of ``big_migration_source``."""

FAILS_AT_ITS_LAST_STATEMENT = (
    "-- +goose Up\n"
    "CREATE TABLE half_done (x INTEGER);\n"
    "ALTER TABLE tokens ADD COLUMN half_column TEXT;\n"
    "CREATE INDEX idx_half ON projects (created_at);\n"
    "UPDATE projects SET name = 'changed';\n"
    "INSERT INTO no_such_table VALUES (1);\n"
    "-- +goose Down\n"
    "DROP TABLE half_done;\n"
)
"""Four changes (a table, a column, an index, rows), then a statement that fails."""


def assert_up_fails_at_the_last_statement(
    target: MigrationTarget, shipped: Path, tmp_path: Path
) -> None:
    """``up`` of the ``shipped`` files plus ``00101_half.sql``
    (:data:`FAILS_AT_ITS_LAST_STATEMENT`) on ``target`` raises a ``MigrationError`` naming
    the file and its failing statement."""
    source = tmp_path / "half"
    shutil.copytree(shipped, source)
    (source / "00101_half.sql").write_text(FAILS_AT_ITS_LAST_STATEMENT)
    with pytest.raises(MigrationError) as info:
        Migrations(source, target).up()
    assert "00101_half.sql" in str(info.value) and "statement 5 of 5" in str(info.value)


def assert_the_next_up_completes(target: MigrationTarget, source: Path, at: int) -> list[int]:
    """After ``up`` of ``source`` was killed at version ``at``: the next ``up`` applies the
    versions after ``at`` and ends at :data:`LATEST`. The versions it applied."""
    applied = Migrations(source, target).up()
    assert applied == list(range(at + 1, LATEST + 1))
    assert Migrations(source, target).version() == LATEST
    return applied


def each_version_once() -> list[tuple[int, int]]:
    """``(version, rows)`` of goose's table once every version of the big set is applied:
    its version 0 row, the shipped versions, then the big set's, one row each."""
    return [(version, 1) for version in (0, 1, 2, 3, *range(100, LATEST + 1))]


def filled_tables(at: int) -> tuple[str, ...]:
    """Tables of the big set to count (2,000 rows each) after the resumed ``up``: the first,
    the one killed at, the one after it and the last."""
    return tuple(f"t_{n}" for n in (101, at, at + 1, LATEST))
