"""PostgreSQL connections: killed connections, pool exhaustion, configuration errors, error
mapping of psycopg's DETAIL line, and prepared statements on the hot path."""

from __future__ import annotations

import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from llm_proxy_db import (
    DB,
    ConfigError,
    DatabaseError,
    FullConfig,
    ProjectExistsError,
    ProjectNotFoundError,
    Token,
    TokenExistsError,
    TransientError,
    config_from_env,
    new_from_full_config,
)
from llm_proxy_db import Project as _Project
from llm_proxy_db.sql import IntegrityViolation
from llm_proxy_db_postgres import _backend

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer

PASSWORD = "s3cretpw"


def _open(url: str, *, max_open: int = 3, max_idle: int = 2) -> DB:
    return new_from_full_config(
        FullConfig(
            driver="postgres", database_url=url, max_open_conns=max_open, max_idle_conns=max_idle
        )
    )


def _project(name: str) -> _Project:
    return _Project(name=name, openai_api_key="sk-test")


def _full_text(exc: BaseException) -> str:
    """Everything a logger would print for ``exc``: message, repr and the shown chain."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- killed connections -------------------------------------------------------------------


@pytest.fixture
def tagged_url(postgres_url: str) -> str:
    """``postgres_url`` with an application_name that only this test's connections carry."""
    return conninfo.make_conninfo(postgres_url, application_name=f"pgt_{secrets.token_hex(6)}")


def _terminate(admin_url: str, url: str) -> int:
    """pg_terminate_backend every server connection opened with ``url``'s application_name."""
    name = conninfo.conninfo_to_dict(url)["application_name"]
    query = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()"
    )
    with psycopg.connect(admin_url, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(query, (name,)).fetchall()]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _wait_until(lambda: not admin.execute(query, (name,)).fetchall(), "the backends to exit")
    return len(pids)


def _pool(db: DB) -> ConnectionPool[Any]:
    backend = db._backend
    assert isinstance(backend, _backend.PostgresBackend)
    return backend._pool


@contextmanager
def _lent(db: DB) -> Iterator[psycopg.Connection[Any]]:
    """A connection lent as the executor gets one: this thread's held one, or the pool's."""
    backend = db._backend
    assert isinstance(backend, _backend.PostgresBackend)
    conn = backend._held.acquire()
    try:
        yield conn
    finally:
        backend._held.release(conn)


def _idle_pool_size(db: DB) -> int:
    return int(_pool(db).get_stats()["pool_available"])


def _fill_pool(db: DB, count: int) -> None:
    """Make the pool open ``count`` connections (it keeps only one while idle) and wait
    until all of them are idle."""
    pool = _pool(db)
    lent = [pool.getconn() for _ in range(count)]
    for conn in lent:
        pool.putconn(conn)
    _wait_until(lambda: _idle_pool_size(db) >= count, "the pool to fill")


def test_killed_connections_fail_one_call_with_database_error_then_recover(
    tagged_url: str, postgres_server: PostgresServer
) -> None:
    with _open(tagged_url, max_open=4, max_idle=3) as db:
        db.create_project(_project("before"))
        _fill_pool(db, 3)
        assert _terminate(postgres_server.admin_url, tagged_url) >= 3

        started = time.monotonic()
        with pytest.raises(DatabaseError) as caught:
            db.list_projects()
        assert time.monotonic() - started < 5
        assert not isinstance(caught.value, psycopg.Error)
        assert "terminating connection" in str(caught.value)

        # All idle connections died; the next call still gets a working one.
        assert [p.name for p in db.list_projects()] == ["before"]
        db.create_project(_project("after"))
        assert len(db.list_projects()) == 2


def test_a_killed_connection_inside_a_transaction_fails_then_recovers(
    tagged_url: str, postgres_server: PostgresServer
) -> None:
    with _open(tagged_url, max_open=2, max_idle=2) as db:
        _fill_pool(db, 2)
        _terminate(postgres_server.admin_url, tagged_url)

        with pytest.raises(DatabaseError) as caught, db.transaction() as tx:
            tx.create_project(_project("lost"))
        assert not isinstance(caught.value, psycopg.Error)

        with db.transaction() as tx:
            tx.create_project(_project("kept"))
        assert [p.name for p in db.list_projects()] == ["kept"]


def test_the_pool_pays_no_round_trip_per_checkout(tagged_url: str) -> None:
    with _open(tagged_url) as db:
        pool = _pool(db)
        assert pool._check is None  # no check= callback: nothing runs per checkout
        # The test above shows the behaviour: a dead idle connection is handed out once.


# -- pool exhaustion ----------------------------------------------------------------------


def test_pool_exhaustion_waits_pool_timeout_then_raises_a_transient_error(
    postgres_url: str,
) -> None:
    with new_from_full_config(
        FullConfig(
            driver="postgres",
            database_url=postgres_url,
            max_open_conns=2,
            max_idle_conns=2,
            pool_timeout=timedelta(milliseconds=500),
        )
    ) as db:
        inside = threading.Barrier(3, timeout=10)
        release = threading.Event()
        failures: list[BaseException] = []

        def hold() -> None:
            try:
                with db.transaction() as tx:
                    tx.list_projects()
                    inside.wait()
                    release.wait(timeout=30)
            except BaseException as exc:
                failures.append(exc)

        holders = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        for holder in holders:
            holder.start()
        try:
            inside.wait()
            for call in (db.list_projects, db.transaction().__enter__):
                started = time.monotonic()
                with pytest.raises(TransientError, match=r"no connection free within 0.5 s: 2 in"):
                    call()
                elapsed = time.monotonic() - started
                assert 0.4 <= elapsed < 5
        finally:
            release.set()
            for holder in holders:
                holder.join(timeout=10)
        assert failures == []
        assert db.list_projects() == []


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "   "])
def test_missing_database_url_is_a_config_error(url: str | None) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        new_from_full_config(FullConfig(driver="postgres", database_url=url))


def test_missing_database_url_from_the_environment_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        new_from_full_config(config_from_env({"DB_DRIVER": "postgres"}))


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@host:notaport/db",
        f"postgresql://u:{PASSWORD}@host:5432,other:x/db",
        f"postgresql://u:{PASSWORD}@host/db?sslmode",
        f"host=h password={PASSWORD} port=abc",
    ],
)
def test_malformed_url_is_a_config_error_without_the_password(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        new_from_full_config(FullConfig(driver="postgres", database_url=url))
    assert time.monotonic() - started < 2
    assert PASSWORD not in _full_text(caught.value)


def test_unreachable_server_fails_fast_without_the_password() -> None:
    url = f"postgresql://someone:{PASSWORD}@127.0.0.1:1/db"
    started = time.monotonic()
    with pytest.raises(DatabaseError) as caught:
        new_from_full_config(FullConfig(driver="postgres", database_url=url))
    assert time.monotonic() - started < 5
    assert not isinstance(caught.value, ConfigError | psycopg.Error)
    assert "127.0.0.1" in str(caught.value)
    assert PASSWORD not in _full_text(caught.value)


def test_a_refused_login_fails_fast_with_the_servers_reason(
    postgres_server: PostgresServer,
) -> None:
    url = conninfo.make_conninfo(postgres_server.url, dbname="no_such_db_llm_proxy")
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="no_such_db_llm_proxy"):
        new_from_full_config(FullConfig(driver="postgres", database_url=url))
    assert time.monotonic() - started < 5


# -- error mapping ------------------------------------------------------------------------


def test_unique_violation_never_carries_psycopgs_detail_line(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        project = db.create_project(_project("dup"))
        token = db.create_token(Token(project_id=project.id)).token

        # The raw driver error quotes the key in its DETAIL line ...
        with (
            psycopg.connect(postgres_url) as conn,
            pytest.raises(psycopg.errors.UniqueViolation) as raw,
        ):
            conn.execute(
                "INSERT INTO tokens (token, project_id) VALUES (%s, %s)", (token, project.id)
            )
        assert token in (raw.value.diag.message_detail or "")

        # ... which neither the translation nor the store error repeats.
        translated = _backend.translate_error(raw.value)
        assert isinstance(translated, IntegrityViolation) and translated.kind == "unique"
        assert token not in _full_text(translated)

        with pytest.raises(TokenExistsError) as caught:
            db.create_token(Token(project_id=project.id, token=token))
        assert token not in _full_text(caught.value)
        assert "DETAIL" not in _full_text(caught.value)
        with pytest.raises(TokenExistsError) as in_tx, db.transaction() as tx:
            tx.create_token(Token(project_id=project.id, token=token))
        assert token not in _full_text(in_tx.value)


def test_constraint_violations_map_to_the_store_errors(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        db.create_project(_project("taken"))
        with pytest.raises(ProjectExistsError):
            db.create_project(_project("taken"))
        with pytest.raises(ProjectNotFoundError):
            db.create_token(Token(project_id="no-such-project"))


# -- prepared statements ------------------------------------------------------------------


@pytest.fixture
def single_connection_db(postgres_url: str) -> Iterator[DB]:
    with _open(postgres_url, max_open=1, max_idle=1) as db:
        yield db


def test_hot_path_increment_is_a_server_side_prepared_statement(
    single_connection_db: DB,
) -> None:
    db = single_connection_db
    project = db.create_project(_project("prepared"))
    token = db.create_token(Token(project_id=project.id)).token
    with _lent(db) as conn:
        threshold = conn.prepare_threshold
    assert threshold is not None
    for _ in range(threshold + 2):
        db.increment_token_usage(token)

    # One pooled connection: the statement is prepared on the one we check out here.
    with _lent(db) as conn:
        rows: list[Any] = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    statements = [row[0] for row in rows]
    increments = [s for s in statements if s.startswith("UPDATE tokens SET request_count")]
    assert len(increments) == 1, statements
    assert "RETURNING" in increments[0] and "$1" in increments[0]  # server-side binding
    assert db.get_token_by_id(token).request_count == threshold + 2
