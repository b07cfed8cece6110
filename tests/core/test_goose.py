"""Golden tests of the goose-format parser (``llm_proxy_db.sql._goose``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_proxy_db._errors import MigrationError
from llm_proxy_db.sql._goose import Migration, load_migrations, parse_migration

GOLDEN = Path(__file__).parent / "goose_golden"
REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    "sqlite": REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations",
    "postgres": REPO / "backends/postgres/src/llm_proxy_db_postgres/migrations",
}
GOLDEN_FILES = sorted(path.name for path in GOLDEN.glob("*.sql"))


@pytest.mark.parametrize("filename", GOLDEN_FILES)
def test_golden(filename: str) -> None:
    expected = json.loads((GOLDEN / filename.replace(".sql", ".expected.json")).read_text())
    migration = parse_migration((GOLDEN / filename).read_text(), filename)
    assert migration.version == expected["version"]
    assert migration.name == expected["name"]
    assert migration.transactional is expected["transactional"]
    assert list(migration.up) == expected["up"]
    assert list(migration.down) == expected["down"]
    assert migration.filename == filename


def test_golden_files_have_expectations() -> None:
    assert len(GOLDEN_FILES) >= 4
    for name in GOLDEN_FILES:
        assert (GOLDEN / name.replace(".sql", ".expected.json")).is_file()


def test_load_migrations_sorts_and_ignores_other_files() -> None:
    migrations = load_migrations(GOLDEN)  # the .expected.json files are skipped
    assert [m.version for m in migrations] == [1, 2, 3, 4]
    assert all(isinstance(m, Migration) for m in migrations)


def test_crlf_line_endings() -> None:
    text = (
        "-- +goose Up\r\nCREATE TABLE t (\r\n  x INTEGER\r\n);\r\n"
        "-- +goose Down\r\nDROP TABLE t;\r\n"
    )
    migration = parse_migration(text, "00001_t.sql")
    assert migration.up == ("CREATE TABLE t (\n  x INTEGER\n);",)
    assert migration.down == ("DROP TABLE t;",)


def test_annotations_tolerate_case_and_spacing() -> None:
    text = "--  +goose   up\nSELECT 1;\n-- +goose DOWN\nSELECT 2;\n"
    migration = parse_migration(text, "7_x.sql")
    assert (migration.version, migration.up, migration.down) == (7, ("SELECT 1;",), ("SELECT 2;",))


def test_migration_is_frozen() -> None:
    migration = parse_migration("-- +goose Up\nSELECT 1;\n", "00001_a.sql")
    with pytest.raises(AttributeError):
        migration.version = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("filename", "text", "fragments"),
    [
        ("00001_x.sql", "CREATE TABLE t (x INT);\n", ["00001_x.sql", "line 1", "before"]),
        ("00001_x.sql", "-- only a comment\n", ["00001_x.sql", "no '-- +goose Up'"]),
        ("00001_x.sql", "-- +goose Down\nDROP TABLE t;\n", ["00001_x.sql", "no '-- +goose Up'"]),
        (
            "00001_x.sql",
            "-- +goose Up\n-- +goose StatementBegin\nDO $$ BEGIN END $$;\n-- +goose Down\n",
            ["00001_x.sql", "line 2", "StatementBegin without StatementEnd"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\n-- +goose StatementBegin\nDO $$ BEGIN END $$;\n",
            ["00001_x.sql", "line 2", "without StatementEnd"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\nSELECT 1;\nCREATE TABLE t (\n  x INT\n)\n",
            ["00001_x.sql", "line 3", "does not end with ';'"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\nCREATE TABLE t (x INT)\n-- +goose Down\nDROP TABLE t;\n",
            ["00001_x.sql", "line 2", "does not end with ';'"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\nSELECT 1;\n-- +goose StatementEnd\n",
            ["line 3", "StatementEnd without StatementBegin"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\nSELECT 1;\n-- +goose Up\nSELECT 2;\n",
            ["line 3", "a second"],
        ),
        ("00001_x.sql", "-- +goose Up\n-- +goose Statementbegn\n", ["line 2", "unknown"]),
        ("00001_x.sql", "-- +goose Up\n-- +goose ENVSUB ON\nSELECT 1;\n", ["line 2", "unknown"]),
        (
            "00001_x.sql",
            "-- +goose Up\n-- +goose StatementBegin\n-- +goose StatementEnd\n",
            ["line 2", "empty"],
        ),
        (
            "00001_x.sql",
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\n"
            "-- +goose StatementEnd\n",
            ["line 4", "inside the StatementBegin block opened on line 2"],
        ),
        ("initial.sql", "-- +goose Up\nSELECT 1;\n", ["initial.sql", "NNNNN_name.sql"]),
        ("00001.sql", "-- +goose Up\nSELECT 1;\n", ["00001.sql", "NNNNN_name.sql"]),
        ("v1_initial.sql", "-- +goose Up\nSELECT 1;\n", ["v1_initial.sql"]),
        ("00000_zero.sql", "-- +goose Up\nSELECT 1;\n", ["00000_zero.sql", "start at 1"]),
    ],
)
def test_errors_name_the_file_and_line(filename: str, text: str, fragments: list[str]) -> None:
    with pytest.raises(MigrationError) as info:
        parse_migration(text, filename)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_duplicate_versions_rejected(tmp_path: Path) -> None:
    (tmp_path / "00001_a.sql").write_text("-- +goose Up\nSELECT 1;\n")
    (tmp_path / "1_b.sql").write_text("-- +goose Up\nSELECT 2;\n")
    with pytest.raises(MigrationError, match=r"00001_a\.sql and 1_b\.sql.*version 1"):
        load_migrations(tmp_path)


def test_bad_file_name_in_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "00001_a.sql").write_text("-- +goose Up\nSELECT 1;\n")
    (tmp_path / "schema.sql").write_text("-- +goose Up\nSELECT 1;\n")
    (tmp_path / "README.md").write_text("not a migration")
    with pytest.raises(MigrationError, match=r"schema\.sql"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("dialect", sorted(SHIPPED))
def test_shipped_files_parse(dialect: str) -> None:
    migrations = load_migrations(SHIPPED[dialect])
    assert [(m.version, m.name) for m in migrations] == [
        (1, "initial_schema"),
        (2, "add_deactivation_columns"),
        (3, "add_cache_hit_count"),
        (100, "add_hot_path_indexes"),
    ]
    for migration in migrations:
        assert migration.up, migration.source
        assert migration.down, f"{migration.source} needs a working Down"
        assert migration.transactional
    initial = migrations[0]
    assert len(initial.up) == 14  # 3 tables + 11 indexes
    assert len(initial.down) == 14


MYSQL_FILES = REPO / "backends/mysql/src/llm_proxy_db_mysql/migrations"


def test_shipped_mysql_files_parse() -> None:
    """The Go program's MySQL files 1-3, then this package's 100 and 101."""
    migrations = load_migrations(MYSQL_FILES)
    assert [(m.version, m.name) for m in migrations] == [
        (1, "initial_schema"),
        (2, "add_deactivation_columns"),
        (3, "add_cache_hit_count"),
        (100, "add_hot_path_indexes"),
        (101, "exact_text_collation"),
    ]
    for migration in migrations:
        assert migration.up, migration.source
        assert migration.down, f"{migration.source} needs a working Down"
        assert migration.transactional
    assert len(migrations[0].up) == 14  # 3 tables + 11 indexes
    assert [len(m.up) for m in migrations[1:]] == [2, 1, 3, 5]
    # This package's own files are safe to repeat (DDL is not transactional on MySQL).
    for migration in migrations[3:]:
        for statement in migration.up:
            assert (
                "IF NOT EXISTS" in statement
                or "CONVERT TO" in statement
                or ("IF EXISTS" in statement)
            ), statement


@pytest.mark.parametrize("dialect", [*sorted(SHIPPED), "mysql"])
def test_repo_root_symlinks_point_at_package_folders(dialect: str) -> None:
    link = REPO / "migrations" / dialect
    assert link.is_symlink()
    assert link.resolve() == {**SHIPPED, "mysql": MYSQL_FILES}[dialect].resolve()
