"""Connections of the SQLite backend: pragmas, ``:memory:``, the file path, the pool."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlite_support import OpenDB

from llm_proxy_db import (
    DB,
    Config,
    ConfigError,
    DatabaseError,
    Project,
    ProjectExistsError,
    ProjectNotFoundError,
    Token,
    new,
)
from llm_proxy_db_sqlite import SQLiteBackend
from llm_proxy_db_sqlite._pool import Connection, ConnectionPool

PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")


def backend_of(db: DB) -> SQLiteBackend:
    backend = db._backend
    assert isinstance(backend, SQLiteBackend)
    return backend


def pool_of(db: DB) -> ConnectionPool:
    return backend_of(db)._pool


@contextmanager
def lent(db: DB) -> Iterator[Connection]:
    """A connection lent as the backend's executor gets one: a thread's held connection
    first, then the pool."""
    held = backend_of(db)._held
    conn = held.acquire()
    try:
        yield conn
    finally:
        held.release(conn)


def pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}


class ConnectionCounter:
    """Counts the connections every ``SQLiteBackend`` opens, closes and keeps alive
    (install it before opening the database)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self.opened: list[Connection] = []
        self.closed = 0
        self.max_alive = 0
        connect: Callable[[SQLiteBackend], Connection] = SQLiteBackend._connect

        def counting_connect(backend: SQLiteBackend) -> Connection:
            conn = connect(backend)
            close = conn.close

            def counting_close() -> None:
                with self._lock:
                    self.closed += 1
                close()

            conn.close = counting_close  # type: ignore[method-assign]
            with self._lock:
                self.opened.append(conn)
                self.max_alive = max(self.max_alive, self.alive)
            return conn

        monkeypatch.setattr(SQLiteBackend, "_connect", counting_connect)

    @property
    def alive(self) -> int:
        return len(self.opened) - self.closed


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> ConnectionCounter:
    return ConnectionCounter(monkeypatch)


# -- pragmas -------------------------------------------------------------------------------


def test_every_connection_has_wal_normal_sync_foreign_keys_and_busy_timeout(
    open_db: OpenDB,
) -> None:
    threads = 4
    db = open_db(max_open_conns=threads, max_idle_conns=threads)
    pool = pool_of(db)
    # Every thread holds its connection until all have one, so they are distinct.
    barrier = threading.Barrier(threads)

    def check() -> tuple[int, dict[str, Any]]:
        with pool.connection() as conn:
            barrier.wait(timeout=10)
            return id(conn), pragmas(conn)

    with ThreadPoolExecutor(threads) as executor:
        results = list(executor.map(lambda _: check(), range(threads)))
    assert len({conn_id for conn_id, _ in results}) == threads
    for _, values in results:
        assert values["journal_mode"] == "wal"
        assert values["synchronous"] == 1  # NORMAL
        assert values["foreign_keys"] == 1
        assert values["busy_timeout"] > 0
    # ... and so does the connection the migration runner uses.
    with backend_of(db).migration_connection() as migration:
        assert migration.execute("PRAGMA foreign_keys") == [(1,)]
        assert migration.execute("PRAGMA synchronous") == [(1,)]


def test_new_connection_after_retirement_gets_the_pragmas_too(
    open_db: OpenDB, counter: ConnectionCounter
) -> None:
    db = open_db(max_open_conns=1, max_idle_conns=0)  # every checkout opens a fresh one
    before = len(counter.opened)
    for _ in range(3):
        with pool_of(db).connection() as conn:
            values = pragmas(conn)
        assert (values["journal_mode"], values["synchronous"], values["foreign_keys"]) == (
            "wal",
            1,
            1,
        )
        assert values["busy_timeout"] > 0
    assert len(counter.opened) == before + 3
    assert counter.alive == 0


# -- :memory: ------------------------------------------------------------------------------


def test_memory_database_is_one_database_shared_by_every_thread() -> None:
    with new(Config(path=":memory:")) as db:
        project = db.create_project(Project(name="shared", openai_api_key="sk-upstream"))
        token = db.create_token(Token(project_id=project.id))

        # Written here, read in other threads.
        def read(_: int) -> str:
            return db.get_project_by_id(project.id).name

        with ThreadPoolExecutor(4) as executor:
            assert list(executor.map(read, range(4))) == ["shared"] * 4

        # Written in other threads, read here.
        def create(n: int) -> None:
            db.create_project(Project(name=f"from-thread-{n}", openai_api_key="sk-upstream"))

        with ThreadPoolExecutor(4) as executor:
            list(executor.map(create, range(4)))
        assert len(db.list_projects()) == 5

        # 8 threads incrementing at once: exact counts, nothing lost, no "table is locked".
        per_thread = 50

        def increment(_: int) -> None:
            for _ in range(per_thread):
                db.increment_token_usage(token.token)
            db.increment_cache_hit_count(token.token, 2)

        with ThreadPoolExecutor(8) as executor:
            list(executor.map(increment, range(8)))
        stored = db.get_token_by_id(token.token)
        assert stored.request_count == 8 * per_thread
        assert stored.cache_hit_count == 8 * 2


def test_memory_database_enforces_foreign_keys_and_supports_transactions() -> None:
    with new(Config(path=":memory:")) as db:
        with pool_of(db).connection() as conn:
            values = pragmas(conn)
        assert values["foreign_keys"] == 1
        assert values["busy_timeout"] > 0
        with pytest.raises(ProjectNotFoundError):
            db.create_token(Token(project_id="no-such-project"))
        with pytest.raises(RuntimeError), db.transaction() as tx:
            tx.create_project(Project(name="rolled-back", openai_api_key="sk-upstream"))
            raise RuntimeError("abort")
        assert db.list_projects() == []
        assert db.migrations.version() == db.migrations.latest


def test_two_memory_databases_are_separate() -> None:
    with new(Config(path=":memory:")) as first, new(Config(path=":memory:")) as second:
        first.create_project(Project(name="only-in-first", openai_api_key="sk-upstream"))
        assert second.list_projects() == []


# -- the file path -------------------------------------------------------------------------


def test_new_without_arguments_creates_data_llm_proxy_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with new() as db:
        project = db.create_project(Project(name="default", openai_api_key="sk-upstream"))
        assert db.get_project_by_id(project.id) == project
    assert (tmp_path / "data" / "llm-proxy.db").is_file()
    with new() as db:  # reopened: the same file, the row is still there
        assert [p.name for p in db.list_projects()] == ["default"]


def test_missing_nested_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "proxy.db"
    with new(Config(path=str(path))) as db:
        db.create_project(Project(name="nested", openai_api_key="sk-upstream"))
    assert path.is_file()


def test_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        new(Config(path=str(folder)))


@pytest.mark.parametrize("below", ["db.sqlite", "sub/db.sqlite"])
def test_path_below_a_file_is_a_clear_error(tmp_path: Path, below: str) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseError) as caught:
        new(Config(path=str(blocker / below)))
    assert isinstance(caught.value, ConfigError | DatabaseError)
    assert not isinstance(caught.value, OSError | sqlite3.Error)
    assert "plain-file" in str(caught.value)
    assert caught.value.__cause__ is None or not isinstance(caught.value.__cause__, sqlite3.Error)


def test_file_that_is_not_a_database_is_a_database_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database, not even a little" * 100)
    with pytest.raises(DatabaseError) as caught:
        new(Config(path=str(path)))
    assert not isinstance(caught.value, sqlite3.Error)


# -- the pool ------------------------------------------------------------------------------


def test_pool_never_has_more_than_max_open_conns_connections(
    open_db: OpenDB, counter: ConnectionCounter
) -> None:
    db = open_db(max_open_conns=2, max_idle_conns=2)
    project = db.create_project(Project(name="pooled", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id))

    def work(n: int) -> None:
        for i in range(20):
            db.increment_token_usage(token.token)
            db.get_project_by_id(project.id)
            if i % 5 == 0:
                with db.transaction() as tx:
                    tx.create_token(Token(project_id=project.id))

    with ThreadPoolExecutor(8) as executor:
        list(executor.map(work, range(8)))
    assert db.get_token_by_id(token.token).request_count == 8 * 20
    assert 1 <= counter.max_alive <= 2
    assert counter.alive <= 2

    # With both connections lent out (the worker threads' held ones included: they are
    # counted as lent), a third user waits until one comes back.
    held = backend_of(db)._held
    done = threading.Event()
    first, second = held.acquire(), held.acquire()
    try:

        def use_the_database() -> None:
            db.list_projects()
            done.set()

        worker = threading.Thread(target=use_the_database)
        worker.start()
        assert not done.wait(0.3)
    finally:
        held.release(first)
        held.release(second)
    worker.join(timeout=10)
    assert done.is_set()
    assert counter.max_alive <= 2


def test_failed_transaction_rolls_back_and_its_connection_is_reused(
    open_db: OpenDB, counter: ConnectionCounter
) -> None:
    db = open_db(max_open_conns=1, max_idle_conns=1)
    existing = db.create_project(Project(name="existing", openai_api_key="sk-upstream"))

    with pytest.raises(RuntimeError, match="boom"), db.transaction() as tx:
        tx.create_project(Project(name="ghost", openai_api_key="sk-upstream"))
        tx.create_token(Token(project_id=existing.id))
        raise RuntimeError("boom")
    # A database error inside the block rolls back the earlier writes too.
    with pytest.raises(ProjectExistsError), db.transaction() as tx:
        tx.create_project(Project(name="ghost-2", openai_api_key="sk-upstream"))
        tx.create_project(Project(name="existing", openai_api_key="sk-upstream"))

    assert [p.name for p in db.list_projects()] == ["existing"]
    assert db.list_tokens() == []
    with lent(db) as conn:
        assert not conn.in_transaction
    with db.transaction() as tx:  # the same (only) connection works for the next unit
        tx.create_project(Project(name="after", openai_api_key="sk-upstream"))
    assert [p.name for p in db.list_projects()] == ["after", "existing"]
    assert len(counter.opened) == 1
    assert counter.closed == 0


def test_conn_max_lifetime_retires_old_connections(
    open_db: OpenDB, counter: ConnectionCounter
) -> None:
    db = open_db(max_open_conns=2, max_idle_conns=2, conn_max_lifetime=0.2)
    time.sleep(0.3)  # the connection that ran the migrations is now too old
    opened_before = len(counter.opened)
    with lent(db) as first:
        pass
    with lent(db) as again:
        assert again is first  # young: reused
    time.sleep(0.3)
    with lent(db) as later:
        assert later is not first  # too old: never handed out again
        assert later.execute("SELECT 1").fetchone() == (1,)
    assert len(counter.opened) == opened_before + 2
    with pytest.raises(sqlite3.ProgrammingError):
        first.execute("SELECT 1")  # retired connections are closed
    # Retired while in use: closed on return, not put back.
    with lent(db) as in_use:
        time.sleep(0.3)
    with lent(db) as fresh:
        assert fresh is not in_use
    assert len(counter.opened) == opened_before + 3
    assert counter.alive == 1


def test_closed_database_refuses_work(open_db: OpenDB) -> None:
    db = open_db()
    db.create_project(Project(name="before-close", openai_api_key="sk-upstream"))
    pool = pool_of(db)
    db.close()
    with pytest.raises(DatabaseError, match="closed"):
        db.list_projects()
    with pytest.raises(DatabaseError, match="closed"), pool.connection():
        pass


def test_pool_exhausted_for_its_timeout_raises_a_clear_database_error() -> None:
    def connect() -> Connection:
        conn = sqlite3.connect(":memory:", factory=Connection, check_same_thread=False)
        assert isinstance(conn, Connection)
        return conn

    pool = ConnectionPool(connect, max_open=1, max_idle=1, max_lifetime=60.0, timeout=0.2)
    try:
        with pool.connection():
            started = time.monotonic()
            with pytest.raises(DatabaseError, match="max_open_conns"), pool.connection():
                pass
            assert time.monotonic() - started < 5
        with pool.connection() as conn:  # usable again once the first came back
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()
