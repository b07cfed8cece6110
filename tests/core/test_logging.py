"""The library's logging: which loggers exist, what they say, and that no secret is said.

The session-wide guard (``tests/fixtures/log_secrets.py``) checks every message of every
test; these tests check its matcher on planted secrets and the messages themselves.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llm_proxy_db
from llm_proxy_db import FullConfig, MigrationError, generate_token, mask_token
from llm_proxy_db.sql._migrate import Migrations
from tests.fixtures.log_secrets import SecretLogGuard, find_secrets, url_passwords

REPO = Path(__file__).resolve().parents[2]
SQLITE_FILES = REPO / "backends/sqlite/src/llm_proxy_db_sqlite/migrations"
MIGRATE_LOGGER = "llm_proxy_db.sql._migrate"
PLUGIN_ONLY = ("-p", "tests.fixtures.log_secrets", "-p", "no:cacheprovider")
_VERSION = re.compile(r"\(version (\d+), (up|down)\)")


def _planted_key() -> str:
    # Built here rather than imported: the same form as llm_proxy_db.testing's secret_key().
    return "sk-proj-" + "0123456789abcdef" * 3


# -- the guard's matcher ------------------------------------------------------------------


def test_matcher_catches_a_full_token_but_not_a_masked_one() -> None:
    token = generate_token()
    assert find_secrets(f"counted {token} once") == ["a full token"]
    assert find_secrets(f"counted {mask_token(token)} once") == []
    assert find_secrets(f"token={token!r}") == ["a full token"]


def test_matcher_catches_an_upstream_key() -> None:
    key = _planted_key()
    assert len(key) == len("sk-proj-") + 48
    assert find_secrets(f"project key is {key}") == ["an upstream key"]
    assert find_secrets(f"{key} and {generate_token()}") == ["an upstream key", "a full token"]


def test_matcher_catches_a_url_password() -> None:
    assert find_secrets("connecting to postgresql://app:hunter22@db:5432/x") == ["a URL password"]
    assert find_secrets("dsn host=db user=app password=hunter22") == ["a URL password"]
    assert find_secrets("postgresql://app:***@db:5432/x") == []
    assert find_secrets("cannot reach PostgreSQL at app@db:5432/x") == []
    passwords = url_passwords(["postgresql://app:p%40ss%3Aword@db/x", "host=db password='s3cr3t'"])
    assert passwords == {"p%40ss%3Aword", "p@ss:word", "s3cr3t"}
    assert find_secrets("the login for p@ss:word failed", passwords) == ["a DATABASE_URL password"]
    assert url_passwords(["postgresql://127.0.0.1:5432/test", "", "not a url"]) == set()


def test_guard_records_the_offending_line() -> None:
    # Handed a record directly: logging a secret for real would fail this very session.
    guard = SecretLogGuard()
    token = generate_token()
    for message, args in (("refused %s", (token,)), ("refused %s", (mask_token(token),))):
        guard.handle(
            logging.LogRecord("llm_proxy_db.x", logging.DEBUG, __file__, 1, message, args, None)
        )
    assert guard.seen == 2
    assert len(guard.offences) == 1
    assert guard.offences[0].startswith("[a full token] DEBUG llm_proxy_db.x: refused sk-")


def test_guard_fails_the_session(tmp_path: Path) -> None:
    # In a subprocess: the planted token must not reach this session's own guard.
    (tmp_path / "test_leak.py").write_text(
        textwrap.dedent(
            """
            import logging

            def test_logs_a_token():
                logging.getLogger("llm_proxy_db.leaky").debug("token sk-%s", "A" * 43)

            def test_logs_a_masked_token():
                logging.getLogger("llm_proxy_db.leaky").warning("token sk-AA...AAAA")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *PLUGIN_ONLY, "--rootdir", str(tmp_path), "test_leak.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "secrets in log messages" in result.stdout
    assert re.search(r"\[a full token\] DEBUG llm_proxy_db\.leaky: token sk-A{43}", result.stdout)
    assert "sk-AA...AAAA" not in result.stdout
    assert "1 of 2 log messages showed a secret" in result.stdout
    assert "2 passed" in result.stdout


# -- the loggers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "llm_proxy_db.sql._migrate",
        "llm_proxy_db.sql._logic",
        "llm_proxy_db_sqlite._pool",
        "llm_proxy_db_sqlite._backend",
        "llm_proxy_db_postgres._backend",
    ],
)
def test_each_module_logs_under_its_own_name(module: str) -> None:
    pytest.importorskip(module.split(".")[0])
    logger = importlib.import_module(module)._log
    assert isinstance(logger, logging.Logger)
    assert logger.name == module


def _migration_records(caplog: pytest.LogCaptureFixture, level: int) -> list[tuple[int, str]]:
    found = []
    for record in caplog.records:
        if record.name == MIGRATE_LOGGER and record.levelno == level:
            match = _VERSION.search(record.getMessage())
            if match:
                found.append((int(match[1]), match[2]))
    return found


def test_migration_runner_logs_each_applied_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("llm_proxy_db_sqlite")
    path = str(tmp_path / "x.db")
    with caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER):
        llm_proxy_db.new(llm_proxy_db.Config(path=path)).close()
    assert _migration_records(caplog, logging.INFO) == [(v, "up") for v in (1, 2, 3, 100)]
    applied = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert re.fullmatch(
        r"applied migration 00001_initial_schema\.sql \(version 1, up\) in \d+ ms", applied[0]
    )

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER):
        db = llm_proxy_db.new(llm_proxy_db.Config(path=path))
    assert _migration_records(caplog, logging.INFO) == []
    assert [r.getMessage() for r in caplog.records if r.name == MIGRATE_LOGGER] == [
        "migrate up: nothing pending up to version 100"
    ]

    caplog.clear()
    with db, caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER):
        assert db.migrations.down() == 100
    assert _migration_records(caplog, logging.INFO) == [(100, "down")]
    assert "rolled back migration 00100_" in caplog.records[0].getMessage()


def _sqlite_backend(path: Path) -> object:
    backend_class = pytest.importorskip("llm_proxy_db_sqlite").SQLiteBackend
    return backend_class(FullConfig(driver="sqlite", path=str(path)))


def test_migration_failure_is_logged_at_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _sqlite_backend(tmp_path / "x.db")
    source = tmp_path / "migrations"
    shutil.copytree(SQLITE_FILES, source)
    (source / "00101_broken.sql").write_text(
        "-- +goose Up\nINSERT INTO no_such_table VALUES (1);\n"
    )
    try:
        with (
            caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER),
            pytest.raises(MigrationError) as info,
        ):
            Migrations(source, backend).up()  # type: ignore[arg-type]
    finally:
        backend.close()  # type: ignore[attr-defined]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [str(info.value)]
    assert "00101_broken.sql (version 101, up) failed" in errors[0].getMessage()
    assert _migration_records(caplog, logging.INFO) == [(v, "up") for v in (1, 2, 3, 100)]


def _skipped(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == MIGRATE_LOGGER and r.getMessage().startswith("skipped")
    ]


def test_version_applied_by_another_process_is_skipped_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _sqlite_backend(tmp_path / "x.db")
    try:
        mine = Migrations(SQLITE_FILES, backend)  # type: ignore[arg-type]
        theirs = Migrations(SQLITE_FILES, backend)  # type: ignore[arg-type]
        pending = mine._pending

        def then_they_apply_version_1(limit: int) -> set[int]:
            found = pending(limit)  # read before the exclusive connection is taken
            theirs.up(target=1)
            return found

        mine._pending = then_they_apply_version_1  # type: ignore[method-assign]
        with caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER):
            assert mine.up() == [2, 3, 100]
    finally:
        backend.close()  # type: ignore[attr-defined]
    assert _skipped(caplog) == [
        (
            logging.DEBUG,
            "skipped migration 00001_initial_schema.sql (version 1, up): another process "
            "applied it meanwhile",
        )
    ]


def test_version_applied_inside_the_files_transaction_is_skipped_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process applying version 1 between the runner's read and the file's own
    # transaction (SQLite takes no lock for the whole run): simulated in the re-read.
    backend = _sqlite_backend(tmp_path / "x.db")
    try:
        mine = Migrations(SQLITE_FILES, backend)  # type: ignore[arg-type]
        applied = mine._applied
        calls = 0

        def version_1_applied_on_the_third_read(conn: Any) -> dict[int, Any]:
            nonlocal calls
            calls += 1
            found = applied(conn)
            return {**found, 1: None} if calls == 3 else found

        mine._applied = version_1_applied_on_the_third_read  # type: ignore[method-assign]
        with caplog.at_level(logging.DEBUG, logger=MIGRATE_LOGGER):
            assert mine.up(target=1) == []
    finally:
        backend.close()  # type: ignore[attr-defined]
    assert calls == 3
    assert _skipped(caplog) == [
        (
            logging.DEBUG,
            "skipped migration 00001_initial_schema.sql (version 1, up): another process "
            "applied it meanwhile",
        )
    ]
    assert _migration_records(caplog, logging.INFO) == []


# -- the SQLite pool ----------------------------------------------------------------------


def test_sqlite_pool_logs_opening_and_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    pool_module = pytest.importorskip("llm_proxy_db_sqlite._pool")
    import sqlite3

    def connect() -> object:
        return sqlite3.connect(":memory:", factory=pool_module.Connection, check_same_thread=False)

    pool = pool_module.ConnectionPool(
        connect, max_open=1, max_idle=1, max_lifetime=0.0, timeout=0.05
    )
    with caplog.at_level(logging.DEBUG, logger="llm_proxy_db_sqlite._pool"):
        first = pool.acquire()
        with pytest.raises(llm_proxy_db.TransientError, match="no SQLite connection free"):
            pool.acquire()
        pool.release(first)  # past max_lifetime (0s): closed, not kept
        pool.close()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("DEBUG", "opened a SQLite connection (1 of at most 1 open)"),
        ("DEBUG", "all 1 SQLite connections are busy: waiting up to 0.05s for one"),
        ("WARNING", "all 1 SQLite connections stayed busy for 0.05s: giving up"),
        ("DEBUG", "retiring a released SQLite connection past max_lifetime"),
    ]
