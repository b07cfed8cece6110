"""SQLite under faults: concurrent writer processes, writers SIGKILLed mid-write, bad files,
a full disk, migrations failing halfway or killed mid-way. Real files in ``tmp_path``."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_proxy_db import (
    DB,
    AuditEvent,
    AuditEventFilter,
    ConfigError,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    new_from_full_config,
)
from tests.faults.fault_workers import sqlite_killed_writer, sqlite_mixed_writer
from tests.faults.migration_checks import (
    LATEST,
    SQLITE_FILES,
    assert_the_next_up_completes,
    assert_up_fails_at_the_last_statement,
    each_version_once,
    filled_tables,
)
from tests.faults.migration_support import MIGRATION_FILES, big_migration_source, kill_during_up
from tests.fixtures.processes import run_processes

pytest.importorskip("llm_proxy_db_sqlite")

WRITERS = 4
ROUNDS = 150
"""Rounds per writer process: a token, an increment, an event and a two-write transaction."""
KILLS = 50
_JOIN_S = 120.0


def _open(path: Path | str, **settings: Any) -> DB:
    return new_from_full_config(FullConfig(path=str(path), **settings))


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def _integrity(path: Path) -> list[tuple[Any, ...]]:
    return _rows(path, "PRAGMA integrity_check")


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A migrated database with one project and one unlimited token: (path, project id,
    token)."""
    path = tmp_path / "faults.db"
    with _open(path) as db:
        project = db.create_project(Project(name="faults", openai_api_key="sk-k"))
        token = db.create_token(Token(project_id=project.id)).token
    yield path, project.id, token


def test_four_processes_writing_at_once_never_see_a_lock_error(
    seeded: tuple[Path, str, str],
) -> None:
    path, project_id, shared = seeded
    started = time.perf_counter()
    collected: list[tuple[int, list[str]]] = run_processes(
        sqlite_mixed_writer,
        [(str(path), project_id, shared, ROUNDS)] * WRITERS,
        within_s=_JOIN_S,
    )
    elapsed = time.perf_counter() - started
    errors = [error for _, found in collected for error in found]
    locked = [error for error in errors if "locked" in error.lower()]
    print(
        f"\n{WRITERS} processes x {ROUNDS} rounds (5 writes each) in {elapsed:.1f}s: "
        f"{len(errors)} errors, {len(locked)} 'database is locked'"
    )
    assert locked == []
    assert errors == []
    assert [done for done, _ in collected] == [ROUNDS] * WRITERS
    with _open(path) as db:
        assert db.get_token_by_id(shared).request_count == WRITERS * ROUNDS
        assert len(db.list_tokens(project_id)) == 1 + 2 * WRITERS * ROUNDS
        assert db.count_audit_events(AuditEventFilter(action="fault.write")) == WRITERS * ROUNDS
        assert db.count_audit_events(AuditEventFilter(action="fault.block")) == WRITERS * ROUNDS
    assert _integrity(path) == [("ok",)]


def _kill_one(ctx: Any, path: Path, project_id: str, shared: str, delay: float) -> list[str]:
    """Start a writer, SIGKILL it ``delay`` seconds after it opened the database; what it
    reported through the pipe."""
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=sqlite_killed_writer, args=(str(path), project_id, shared, writer), daemon=True
    )
    child.start()
    writer.close()
    messages: list[str] = []
    try:
        assert reader.poll(30), "the writer did not open the database within 30s"
        assert reader.recv_bytes() == b"ready"
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:  # read meanwhile: the pipe never fills
            if reader.poll(left):
                try:
                    messages.append(reader.recv_bytes().decode())
                except EOFError:
                    break
        child.kill()  # SIGKILL
        child.join(timeout=10)
        assert child.exitcode == -9, f"the writer ended with {child.exitcode}, not SIGKILL"
        while reader.poll(0):
            try:
                messages.append(reader.recv_bytes().decode())
            except EOFError:
                break
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        reader.close()
    return messages


def test_writers_killed_mid_write_lose_nothing_acknowledged(
    seeded: tuple[Path, str, str],
) -> None:
    path, project_id, shared = seeded
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["llm_proxy_db", "llm_proxy_db_sqlite", "tests.faults.fault_workers"]
    )
    rng = random.Random(10)
    began: dict[str, set[str]] = {kind: set() for kind in ("token", "inc", "event", "block")}
    acked: dict[str, set[str]] = {kind: set() for kind in began}
    errors: list[str] = []
    started = time.perf_counter()
    for _ in range(KILLS):
        for message in _kill_one(ctx, path, project_id, shared, rng.uniform(0.0, 0.05)):
            state, kind, rest = message.split(" ", 2)
            key = rest.split(" ", 1)[0]
            if state == "b":
                began[kind].add(key)
            elif state == "a":
                acked[kind].add(key)
            else:
                errors.append(message)
    elapsed = time.perf_counter() - started
    assert errors == [], "writers saw errors before the kill"
    in_flight = {kind: began[kind] - acked[kind] for kind in began}

    # The database opens, is intact, and holds everything acknowledged.
    assert _integrity(path) == [("ok",)]
    with _open(path) as db:
        tokens = {t.token for t in db.list_tokens(project_id)} - {shared}
        counted = db.get_token_by_id(shared).request_count
        events = {e.id for e in db.list_audit_events(AuditEventFilter(action="fault.kill"))}
        db.create_audit_event(AuditEvent(action="after", actor="fault", outcome="success"))
    block_tokens = {key.split(",")[0]: key.split(",")[1] for key in began["block"]}
    acked_tokens = acked["token"] | {key.split(",")[0] for key in acked["block"]}
    acked_events = acked["event"] | {key.split(",")[1] for key in acked["block"]}
    print(
        f"\n{KILLS} writers SIGKILLed in {elapsed:.1f}s: "
        + ", ".join(
            f"{kind} {len(acked[kind])} acked/{len(in_flight[kind])} in flight" for kind in began
        )
        + f"; {counted} increments counted"
    )
    assert sum(len(a) for a in acked.values()) > KILLS, "the writers hardly wrote anything"
    assert acked_tokens <= tokens, "acknowledged tokens lost"
    assert acked_events <= events, "acknowledged audit events lost"
    assert len(acked["inc"]) <= counted <= len(acked["inc"]) + len(in_flight["inc"])
    # Nothing appears that was never attempted; a transaction is all or nothing.
    assert tokens <= began["token"] | set(block_tokens)
    assert events <= began["event"] | set(block_tokens.values())
    for token, event in block_tokens.items():
        assert (token in tokens) == (event in events), "a transaction stored in part"


# -- files --------------------------------------------------------------------------------


def _assert_names(error: BaseException, path: Path, *causes: str) -> None:
    message = str(error)
    assert str(path) in message, f"the error does not name the path: {message}"
    assert any(cause in message.lower() for cause in causes), f"no cause in: {message}"


def test_a_path_that_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError) as info:
        _open(folder)
    _assert_names(info.value, folder, "directory")
    assert list(folder.iterdir()) == []


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True, timeout=10)


def test_a_read_only_file(seeded: tuple[Path, str, str]) -> None:
    path, project_id, _ = seeded
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
    elif shutil.which("chattr") is None:
        pytest.skip("running as root (modes are ignored) and chattr is not installed")
    else:
        try:
            _chattr("+i", path)
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"chattr +i failed here (root ignores modes): {exc}")
    try:
        before = path.read_bytes()
        error: DatabaseError | None = None
        try:
            with _open(path) as db:
                assert [p.id for p in db.list_projects()] == [project_id]  # reads work
                db.create_project(Project(name="refused", openai_api_key="sk-k"))
        except DatabaseError as exc:
            error = exc
        assert error is not None, "a write to a read-only file succeeded"
        print(f"\nread-only file: {type(error).__name__}: {error}")
        _assert_names(error, path, "read-only", "readonly", "read only")
        assert path.read_bytes() == before
    finally:
        if os.geteuid() == 0:
            _chattr("-i", path)
        else:
            os.chmod(path, 0o644)


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not a database\n" * 200)
    before = path.read_bytes()
    with pytest.raises(DatabaseError) as info:
        _open(path)
    _assert_names(info.value, path, "not a database")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_a_truncated_database(seeded: tuple[Path, str, str]) -> None:
    path, _, _ = seeded
    with _open(path) as db:
        project = db.list_projects()[0]
        for _ in range(300):
            db.create_token(Token(project_id=project.id))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    before = path.read_bytes()
    with pytest.raises(DatabaseError) as info, _open(path) as db:
        db.list_tokens()
    print(f"\ntruncated: {type(info.value).__name__}: {info.value}")
    _assert_names(info.value, path, "malformed", "corrupt", "truncated")
    assert path.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for the test (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        reason = getattr(exc, "stderr", b"") or str(exc)
        pytest.skip(f"cannot mount a small tmpfs here: {reason!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)


def test_a_full_disk(small_disk: Path) -> None:
    path = small_disk / "full.db"
    acked: list[str] = []
    error: DatabaseError | None = None
    with _open(path) as db:
        project = db.create_project(Project(name="full", openai_api_key="sk-k"))
        for number in range(10_000):  # 2 MB fill up long before
            event = AuditEvent(
                action="fill",
                actor="fault",
                outcome="success",
                reason=f"{number}:" + "x" * 4000,
                project_id=project.id,
            )
            try:
                db.create_audit_event(event)
            except DatabaseError as exc:
                error = exc
                break
            acked.append(event.id)
    assert error is not None, "2 MB never filled up"
    print(f"\nfull disk after {len(acked)} events: {type(error).__name__}: {error}")
    _assert_names(error, path, "full", "no space")
    # Nothing half-written: everything acknowledged is there, the database is intact.
    assert _integrity(path) == [("ok",)]
    stored = {row[0] for row in _rows(path, "SELECT id FROM audit_events WHERE action = 'fill'")}
    assert set(acked) <= stored <= set(acked) | {event.id}


# -- migrations ---------------------------------------------------------------------------


def _schema(path: Path) -> list[tuple[Any, ...]]:
    return _rows(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")


def test_migration_failing_halfway_leaves_schema_and_version_as_before(
    seeded: tuple[Path, str, str], tmp_path: Path
) -> None:
    from llm_proxy_db_sqlite import SQLiteBackend

    path, _, _ = seeded
    before = (_schema(path), _rows(path, "SELECT * FROM goose_db_version ORDER BY id"))
    data = _rows(path, "SELECT id, name FROM projects")
    backend = SQLiteBackend(FullConfig(path=str(path), auto_migrate=False))
    try:
        assert_up_fails_at_the_last_statement(backend, SQLITE_FILES, tmp_path)
    finally:
        backend.close()
    assert (_schema(path), _rows(path, "SELECT * FROM goose_db_version ORDER BY id")) == before
    assert _rows(path, "SELECT id, name FROM projects") == data


def test_sigkill_during_up_leaves_a_database_the_next_up_completes(tmp_path: Path) -> None:
    from llm_proxy_db_sqlite import SQLiteBackend

    path = tmp_path / "killed-up.db"
    source = big_migration_source(tmp_path, MIGRATION_FILES, "sqlite")

    def read_version() -> int:
        if not path.exists():
            return 0
        try:
            row = _rows(path, "SELECT MAX(version_id) FROM goose_db_version")
        except sqlite3.OperationalError:  # no table yet
            return 0
        return int(row[0][0] or 0)

    at, _ = kill_during_up("sqlite", str(path), source, read_version, LATEST)
    assert _integrity(path) == [("ok",)]
    backend = SQLiteBackend(FullConfig(path=str(path), auto_migrate=False))
    try:
        applied = assert_the_next_up_completes(backend, source, at)
    finally:
        backend.close()
    print(f"\nkilled at version {at} of {LATEST}; the next up applied {len(applied)}")
    versions = _rows(path, "SELECT version_id, COUNT(*) FROM goose_db_version GROUP BY 1")
    assert sorted(versions) == each_version_once()
    for table in filled_tables(at):
        assert _rows(path, f"SELECT COUNT(*) FROM {table}") == [(2000,)]
    assert _integrity(path) == [("ok",)]
