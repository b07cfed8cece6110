"""SQLite reliability: fork safety, read-only databases, and the health check of a
corrupted file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_support import OpenDB, raw_rows

from llm_proxy_db import DatabaseError, Project, Token
from llm_proxy_db.testing._forking import fork_children
from llm_proxy_db_sqlite import SQLiteBackend
from llm_proxy_db_sqlite._pool import Connection

# -- fork safety -------------------------------------------------------------------------


def unused_connections(backend: SQLiteBackend) -> list[Connection]:
    """The backend's open connections not in use: idle in its pool, or held for a thread."""
    held = [slot.conn for slot in backend._held._slots if slot.parked]
    return [*backend._pool._idle, *held]


def test_forked_children_open_their_own_connections(open_db: OpenDB, db_path: Path) -> None:
    db = open_db(max_open_conns=4, max_idle_conns=4)
    project = db.create_project(Project(name="parent", openai_api_key="sk-test"))
    token = db.create_token(Token(project_id=project.id))
    for _ in range(10):
        db.increment_token_usage(token.token)
    backend = db._backend
    assert isinstance(backend, SQLiteBackend)
    parent_idle = unused_connections(backend)
    assert parent_idle, "the parent keeps an idle connection"
    reports = fork_children(db, children=4, tokens_each=100)
    # The parent's own connections are still its own, and still work.
    assert set(parent_idle) <= set(unused_connections(backend))
    assert db.increment_token_usage(token.token).request_count == 11
    for report in reports:
        assert {t.token for t in db.list_tokens(report["project"])} == set(report["tokens"])
    assert raw_rows(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_a_forked_child_never_uses_or_closes_the_parents_connections(
    open_db: OpenDB, db_path: Path
) -> None:
    db = open_db(max_open_conns=2, max_idle_conns=2)
    project = db.create_project(Project(name="parent", openai_api_key="sk-test"))
    backend = db._backend
    assert isinstance(backend, SQLiteBackend)
    inherited = {id(conn) for conn in unused_connections(backend)}
    assert inherited
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when all is well
        code = 1
        try:
            db.create_project(Project(name="child", openai_api_key="sk-test"))
            fresh = {id(conn) for conn in unused_connections(backend)}
            if fresh and not fresh & inherited:
                code = 0
            db.close()  # must leave the parent's connections (and its WAL) alone
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child used an inherited connection"
    assert {id(conn) for conn in unused_connections(backend)} == inherited
    assert [p.name for p in db.list_projects()] == ["child", "parent"]
    assert db.get_project_by_id(project.id) == project


def test_a_fork_inside_a_transaction_leaves_the_parents_connection(open_db: OpenDB) -> None:
    """The connection lent to the parent's open block is never returned to the child's
    pool (the child forgets it) and the parent's block still commits."""
    db = open_db()
    project = Project(name="in-block", openai_api_key="sk-test")
    with db.transaction() as tx:
        tx.create_project(project)
        pid = os.fork()
        if pid == 0:  # the child: leaves the block by exiting, touches nothing
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert db.get_project_by_id(project.id) == project


# -- a corrupted file: health reads every table -------------------------------------------


def _zero_table_root_page(path: Path, table: str) -> None:
    conn = sqlite3.connect(path)
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.execute("PRAGMA journal_mode = DELETE")  # no -wal left beside the file
    finally:
        conn.close()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\0" * page_size)


@pytest.mark.parametrize("table", ["projects", "tokens", "audit_events"])
def test_health_check_fails_on_a_zeroed_table_page(
    open_db: OpenDB, db_path: Path, table: str
) -> None:
    db = open_db()
    project = db.create_project(Project(name="p", openai_api_key="sk-test"))
    db.create_token(Token(project_id=project.id))
    db.health_check()
    db.close()
    _zero_table_root_page(db_path, table)
    reopened = open_db()
    with pytest.raises(DatabaseError, match="malformed"):
        reopened.health_check()
    with pytest.raises(DatabaseError):
        assert reopened.check_integrity()


def test_health_cli_exits_1_on_a_corrupted_database(open_db: OpenDB, db_path: Path) -> None:
    db = open_db()
    db.create_project(Project(name="p", openai_api_key="sk-test"))
    db.close()
    env = {**os.environ, "DB_DRIVER": "sqlite", "DATABASE_PATH": str(db_path)}
    command = [sys.executable, "-m", "llm_proxy_db.cli", "health", "--deep"]
    healthy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    assert "integrity: ok" in healthy.stdout
    _zero_table_root_page(db_path, "tokens")
    for args in ([], ["--deep"]):
        broken = subprocess.run(
            command[:-1] + args, env=env, capture_output=True, text=True, timeout=60
        )
        assert broken.returncode == 1, (args, broken.stdout, broken.stderr)
        assert "malformed" in broken.stderr


def test_deep_check_reports_a_zeroed_index_page(open_db: OpenDB, db_path: Path) -> None:
    """quick_check reads every page: a zeroed index page the bounded reads never touch."""
    db = open_db()
    db.create_project(Project(name="p", openai_api_key="sk-test"))
    db.close()
    conn = sqlite3.connect(db_path)
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'idx_audit_request_id'"
    ).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    with open(db_path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\0" * page_size)
    reopened = open_db()
    reopened.health_check()  # the bounded reads do not reach that page
    with pytest.raises(DatabaseError, match="quick_check"):
        reopened.check_integrity()


# -- read-only databases -------------------------------------------------------------------


def _up_to_date_database(open_db: OpenDB, path: Path) -> Project:
    db = open_db(path=str(path))
    project = db.create_project(Project(name="stored", openai_api_key="sk-test"))
    db.close()  # the last connection checkpoints and removes -wal and -shm
    assert not Path(f"{path}-wal").exists()
    return project


def _can_mount() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) on Linux"
    return None


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs at ``tmp_path/ro``; remount it read-only with ``remount_ro()``."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    point = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)


def test_database_in_a_read_only_mount_can_be_read(open_db: OpenDB, read_only_mount: Path) -> None:
    path = read_only_mount / "llm-proxy.db"
    project = _up_to_date_database(open_db, path)
    _remount_read_only(read_only_mount)
    db = open_db(path=str(path))  # auto_migrate: up to date, nothing to write
    assert db.get_project_by_id(project.id) == project
    assert db.list_projects() == [project]
    db.health_check()
    assert db.check_integrity()
    with pytest.raises(DatabaseError) as refused:
        db.create_project(Project(name="new", openai_api_key="sk-test"))
    assert str(path) in str(refused.value)
    assert "read-only" in str(refused.value)
    assert sorted(os.listdir(read_only_mount)) == ["llm-proxy.db"]


def test_read_only_file_can_be_read(open_db: OpenDB, tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    path = tmp_path / "immutable.db"
    project = _up_to_date_database(open_db, path)
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
    try:
        db = open_db(path=str(path))
        assert db.list_projects() == [project]
        with pytest.raises(DatabaseError, match="read-only") as refused:
            db.create_project(Project(name="new", openai_api_key="sk-test"))
        assert str(path) in str(refused.value)
        db.close()
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
