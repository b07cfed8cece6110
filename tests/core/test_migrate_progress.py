"""Per-statement migration progress where DDL is not transactional, on SQLite.

MySQL and MariaDB commit every DDL statement on its own, so a file that fails or is
killed halfway has partly run. The runner's answer (progress rows, resuming, the
``status`` report, ``down`` refusing to cross) is tested here on SQLite through a variant
of its dialect that says ``transactional_ddl=False``, so it runs without a MySQL server;
backends/mysql/tests/test_mysql_migrations.py runs the same cases on MariaDB.
"""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from llm_proxy_db._errors import DatabaseError, MigrationError
from llm_proxy_db.sql import Dialect
from llm_proxy_db.sql._migrate import (
    PROGRESS_TABLE,
    DbApiMigrationConnection,
    MigrationConnection,
    Migrations,
)
from tests.fixtures.goose import source_with

REPO = Path(__file__).resolve().parents[2]
SQLITE_FILES = REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations"
SHIPPED = [1, 2, 3, 100]

FAILS_AT_ITS_SECOND_STATEMENT = (
    "-- +goose Up\n"
    "CREATE TABLE half_done (x INTEGER);\n"  # not safe to repeat: a re-run must skip it
    "INSERT INTO no_such_table VALUES (1);\n"
    "CREATE INDEX idx_half_done ON half_done (x);\n"
    "-- +goose Down\n"
    "DROP INDEX idx_half_done;\n"
    "DROP TABLE half_done;\n"
)
FIXED = FAILS_AT_ITS_SECOND_STATEMENT.replace(
    "INSERT INTO no_such_table VALUES (1);", "INSERT INTO half_done VALUES (1);"
)


def _variant() -> Dialect:
    sqlite_dialect: Dialect = pytest.importorskip("llm_proxy_db_sqlite").SQLITE
    return attrs.evolve(sqlite_dialect, transactional_ddl=False)


def _translate(exc: Exception) -> DatabaseError:
    return DatabaseError(f"SQLite error: {exc}")


class Target:
    """A ``MigrationTarget`` over a file, with the non-transactional-DDL dialect."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dialect = _variant()

    @contextmanager
    def _connection(self) -> Iterator[MigrationConnection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            yield DbApiMigrationConnection(
                conn, self.dialect, driver_error=sqlite3.Error, translate=_translate
            )
        finally:
            conn.close()

    def migration_connection(
        self, *, exclusive: bool = True
    ) -> AbstractContextManager[MigrationConnection]:
        return self._connection()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    _variant()
    return tmp_path / "llm-proxy.db"


def _source(tmp_path: Path, files: dict[str, str]) -> Path:
    return source_with(SQLITE_FILES, tmp_path, files)


def _rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def _tables(path: Path) -> set[str]:
    return {row[0] for row in _rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}


def _progress(path: Path) -> list[tuple[Any, ...]]:
    return _rows(path, f"SELECT * FROM {PROGRESS_TABLE} ORDER BY version_id")


def _goose(path: Path) -> list[tuple[int, int]]:
    return [
        (row[0], row[1])
        for row in _rows(path, "SELECT version_id, is_applied FROM goose_db_version ORDER BY id")
    ]


def _fail_at_second_statement(tmp_path: Path, db_path: Path) -> tuple[Path, MigrationError]:
    source = _source(tmp_path, {"00101_half.sql": FAILS_AT_ITS_SECOND_STATEMENT})
    with pytest.raises(MigrationError) as info:
        Migrations(source, Target(db_path)).up()
    return source, info.value


def test_a_clean_run_leaves_no_progress_and_goose_rows_as_goose_writes(db_path: Path) -> None:
    migrations = Migrations(SQLITE_FILES, Target(db_path))
    assert migrations.up() == SHIPPED
    assert _progress(db_path) == []
    assert _goose(db_path) == [(0, 1), *((v, 1) for v in SHIPPED)]
    assert all(item.progress is None for item in migrations.status())
    assert migrations.down() == 100
    assert _progress(db_path) == []


def test_a_file_failing_at_its_second_statement_resumes_after_the_first(
    tmp_path: Path, db_path: Path
) -> None:
    source, error = _fail_at_second_statement(tmp_path, db_path)
    message = str(error)
    assert "00101_half.sql (version 101, up) failed at statement 2 of 3" in message
    assert "no_such_table" in message
    assert "its first 1 statement stay applied" in message
    assert "version 101 stopped after statement 1" in message
    assert "migrate up resumes at statement 2" in message
    assert error.version == 101
    assert error.__cause__ is None and error.__context__ is None
    assert _progress(db_path) == [(101, "up", 1, 3)]
    assert "half_done" in _tables(db_path)  # statement 1 committed on its own
    assert (101, 1) not in _goose(db_path)

    migrations = Migrations(source, Target(db_path))
    status = {item.version: item for item in migrations.status()}
    assert not status[101].applied
    assert (status[101].stopped_in, status[101].statements_done) == ("up", 1)
    assert status[101].statements_total == 3
    assert status[101].progress == "version 101 stopped after statement 1 of 3"
    assert status[100].progress is None
    assert migrations.version() == 100

    # The cause fixed (same number of statements): the re-run starts at statement 2; a
    # second CREATE TABLE half_done would fail.
    source.joinpath("00101_half.sql").write_text(FIXED)
    migrations = Migrations(source, Target(db_path))
    assert migrations.up() == [101]
    assert _rows(db_path, "SELECT x FROM half_done") == [(1,)]
    assert _progress(db_path) == []
    assert _goose(db_path)[-1] == (101, 1)
    assert all(item.progress is None for item in migrations.status())


def test_a_failing_first_statement_leaves_nothing_to_resume(tmp_path: Path, db_path: Path) -> None:
    source = _source(tmp_path, {"00101_bad.sql": "-- +goose Up\nINSERT INTO nope VALUES (1);\n"})
    with pytest.raises(MigrationError) as info:
        Migrations(source, Target(db_path)).up()
    assert "none of its statements stay applied" in str(info.value)
    assert _progress(db_path) == []


def test_down_refuses_to_cross_a_partly_applied_file_unless_forced(
    tmp_path: Path, db_path: Path
) -> None:
    source, _ = _fail_at_second_statement(tmp_path, db_path)
    migrations = Migrations(source, Target(db_path))
    with pytest.raises(MigrationError) as info:
        migrations.down()
    message = str(info.value)
    assert "version 101 stopped after statement 1 of 3" in message
    assert "rolling back version 100 would cross it" in message
    assert "migrate down --force" in message
    assert migrations.version() == 100  # nothing rolled back
    assert migrations.down(force=True) == 100
    assert migrations.version() == 3
    # The partial file's record is kept (its statement 1 is still applied): up applies
    # 100 again, then resumes 101 after statement 1.
    assert _progress(db_path) == [(101, "up", 1, 3)]
    source.joinpath("00101_half.sql").write_text(FIXED)
    assert Migrations(source, Target(db_path)).up() == [100, 101]
    assert _progress(db_path) == []


def test_a_roll_back_stopped_partway_resumes_and_blocks_up(tmp_path: Path, db_path: Path) -> None:
    body = (
        "-- +goose Up\nCREATE TABLE a (x INTEGER);\nCREATE TABLE b (x INTEGER);\n"
        "CREATE TABLE c (x INTEGER);\n"
        "-- +goose Down\nDROP TABLE c;\nDROP TABLE no_such_table;\nDROP TABLE a;\n"
    )
    source = _source(tmp_path, {"00101_abc.sql": body})
    migrations = Migrations(source, Target(db_path))
    assert migrations.up() == [*SHIPPED, 101]
    with pytest.raises(MigrationError, match=r"version 101, down\) failed at statement 2 of 3"):
        migrations.down()
    assert _progress(db_path) == [(101, "down", 1, 3)]
    status = {item.version: item for item in migrations.status()}
    assert status[101].applied and status[101].stopped_in == "down"
    assert status[101].progress == "version 101 stopped after statement 1 of 3 of its Down"
    assert migrations.version() == 101

    # up will not build on a half rolled back version, even with nothing pending.
    with pytest.raises(MigrationError, match="run migrate down again to finish"):
        migrations.up()
    # Fixed: down resumes at statement 2 (a second DROP TABLE c would fail).
    source.joinpath("00101_abc.sql").write_text(
        body.replace("DROP TABLE no_such_table;", "DROP TABLE b;")
    )
    migrations = Migrations(source, Target(db_path))
    assert migrations.down() == 101
    assert {"a", "b", "c"}.isdisjoint(_tables(db_path))
    assert migrations.version() == 100
    assert _progress(db_path) == []


def test_a_file_changed_since_its_partial_run_is_refused(tmp_path: Path, db_path: Path) -> None:
    source, _ = _fail_at_second_statement(tmp_path, db_path)
    source.joinpath("00101_half.sql").write_text(
        "-- +goose Up\nCREATE TABLE half_done (x INTEGER);\nSELECT 1;\n"
    )
    with pytest.raises(MigrationError) as info:
        Migrations(source, Target(db_path)).up()
    message = str(info.value)
    assert "version 101 stopped after statement 1 of 3" in message
    assert "the file now has 2 statements" in message
    assert _progress(db_path) == [(101, "up", 1, 3)]


def test_left_over_progress_rows_are_ignored_then_removed(tmp_path: Path, db_path: Path) -> None:
    """A row whose run did finish (the version is applied, or rolled back): not partial."""
    migrations = Migrations(SQLITE_FILES, Target(db_path))
    migrations.up(target=3)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"INSERT INTO {PROGRESS_TABLE} VALUES (3, 'up', 1, 1)")
        conn.execute(f"INSERT INTO {PROGRESS_TABLE} VALUES (100, 'down', 1, 3)")
    assert all(item.progress is None for item in migrations.status())
    assert migrations.up() == [100]
    assert _progress(db_path) == []


def test_databases_with_transactional_ddl_get_no_progress_table(db_path: Path) -> None:
    sqlite_dialect: Dialect = pytest.importorskip("llm_proxy_db_sqlite").SQLITE
    target = Target(db_path)
    target.dialect = sqlite_dialect
    assert Migrations(SQLITE_FILES, target).up() == SHIPPED
    assert PROGRESS_TABLE not in _tables(db_path)


# -- kill -9 during up -------------------------------------------------------------------

BIG_FILES = 40


def _big_source(tmp_path: Path) -> Path:
    files = {}
    for n in range(101, 101 + BIG_FILES):
        files[f"{n:05d}_big_{n}.sql"] = (
            f"-- +goose Up\nCREATE TABLE t_{n} (id INTEGER PRIMARY KEY, v TEXT);\n"
            f"INSERT INTO t_{n} (v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
            f"SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c;\n"
            f"CREATE INDEX idx_t_{n} ON t_{n} (v);\n"
            f"-- +goose Down\nDROP TABLE t_{n};\n"
        )
    return _source(tmp_path, files)


def _up_in_child(path: str, source: str) -> None:
    Migrations(Path(source), Target(Path(path))).up()


def test_kill_9_during_up_then_up_resumes(tmp_path: Path, db_path: Path) -> None:
    source = _big_source(tmp_path)
    Migrations(SQLITE_FILES, Target(db_path)).up()  # the progress table exists from here
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_up_in_child, args=(str(db_path), str(source)), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                rows = _progress(db_path)
            except sqlite3.OperationalError:  # busy: the child is writing
                rows = []
            if any(row[0] > 105 for row in rows):
                break
            assert child.is_alive(), "the child finished before it could be killed"
            time.sleep(0.001)
        child.kill()  # SIGKILL, mid-file: a progress row says which statement completed
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    migrations = Migrations(source, Target(db_path))
    at = migrations.version()
    assert 100 < at < 100 + BIG_FILES
    partial = [item for item in migrations.status() if item.progress]
    assert len(partial) <= 1
    if partial:
        assert partial[0].version == at + 1 and not partial[0].applied
        assert 1 <= partial[0].statements_done <= 3
    # The re-run resumes: every statement ran once (a repeated CREATE TABLE would fail,
    # a repeated INSERT would double the rows).
    assert migrations.up() == list(range(at + 1, 101 + BIG_FILES))
    for n in range(101, 101 + BIG_FILES):
        assert _rows(db_path, f"SELECT COUNT(*) FROM t_{n}") == [(20000,)]
    versions = [v for v, applied in _goose(db_path) if applied]
    assert versions == [0, *SHIPPED, *range(101, 101 + BIG_FILES)]
    assert _progress(db_path) == []
