"""The MySQL backend's own traps, on a real server: FOUND_ROWS, the session time zone, the
strict sql_mode, error mapping without driver text, the pool's lifetime and lost
connections, and the exactness of the LAST_INSERT_ID increment across processes."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest

from llm_proxy_db import (
    DB,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    TokenExistsError,
    TokenLimitReachedError,
    TransientError,
    new_from_full_config,
)
from llm_proxy_db.sql import IntegrityViolation
from llm_proxy_db_mysql import MySQLBackend
from llm_proxy_db_mysql._backend import translate_error
from tests.fixtures.mysql import connect_kwargs


def backend_of(db: DB) -> MySQLBackend:
    backend = db._backend
    assert isinstance(backend, MySQLBackend)
    return backend


def config_for(url: str, **settings: Any) -> FullConfig:
    return FullConfig(driver="mysql", database_url=url, **settings)


@pytest.fixture
def db(mysql_url: str) -> Iterator[DB]:
    database = new_from_full_config(config_for(mysql_url))
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def backend(mysql_url: str) -> Iterator[MySQLBackend]:
    """A backend on an empty database (no migrations), for statements of the tests' own."""
    opened = MySQLBackend(config_for(mysql_url))
    try:
        yield opened
    finally:
        opened.close()


def run(backend: MySQLBackend, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    """``sql`` on a connection of the backend's pool (its session settings applied)."""
    with backend.executor.connection() as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def raw(url: str, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(**{**connect_kwargs(url), **kwargs})


def _discard(conn: object) -> None:
    raise pymysql.err.InterfaceError("discarded by the test")


def fresh_connection(backend: MySQLBackend) -> pymysql.connections.Connection[Any]:
    """A connection the pool opens now (never one opened earlier)."""
    backend._held.drain()
    backend._pool.check(_discard)  # every idle one is closed: a new one opens
    conn = backend._pool.acquire()
    assert backend._pool.expires(conn) > 0
    return conn


# -- FOUND_ROWS ------------------------------------------------------------------------------


def test_revoking_an_already_revoked_token_is_not_a_not_found(db: DB) -> None:
    # Without CLIENT.FOUND_ROWS the second UPDATE changes no row and counts 0.
    project = db.create_project(Project(name="rows", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id))
    db.revoke_token(token.token)
    db.revoke_token(token.token)
    assert db.get_token_by_id(token.token).is_active is False


def test_updating_a_token_to_the_same_values_returns_it(db: DB) -> None:
    project = db.create_project(Project(name="same", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id, max_requests=3))
    assert db.update_token(token).max_requests == 3
    assert db.update_token(token).max_requests == 3


# -- the session's time zone -----------------------------------------------------------------


def test_a_session_started_at_plus_two_hours_still_writes_utc(backend: MySQLBackend) -> None:
    # The server's (or an init_command's) zone comes first; the backend's SET follows it on
    # every new connection, so NOW() and ON UPDATE CURRENT_TIMESTAMP write UTC.
    control = raw(_url_of(backend), init_command=_PLUS_TWO)
    try:
        with control.cursor() as cursor:
            cursor.execute("SELECT @@session.time_zone, NOW(6)")
            ((zone, local_now),) = cursor.fetchall()
        assert zone == "+02:00"
        assert abs(local_now - _utc_now() - timedelta(hours=2)) < timedelta(minutes=1)
    finally:
        control.close()

    backend.connect_kwargs["init_command"] = _PLUS_TWO
    conn = fresh_connection(backend)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE stamped (id INT PRIMARY KEY, n INT, at DATETIME(6) "
                "NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))"
            )
            cursor.execute("SELECT @@session.time_zone")
            assert cursor.fetchall() == (("+00:00",),)
            cursor.execute("INSERT INTO stamped (id, n) VALUES (1, 0)")
            cursor.execute("UPDATE stamped SET n = 1 WHERE id = 1")
            cursor.execute("SELECT at FROM stamped")
            ((written,),) = cursor.fetchall()
    finally:
        backend._pool.release(conn)
    assert abs(written - _utc_now()) < timedelta(minutes=1)


_PLUS_TWO = "SET time_zone = '+02:00'"


def _url_of(backend: MySQLBackend) -> str:
    kw = backend.connect_kwargs
    return f"mysql://{kw['user']}@{kw['host']}:{kw['port']}/{kw['database']}"


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_every_new_connection_gets_the_session_settings(backend: MySQLBackend) -> None:
    # Several at once: each one the pool opens runs the backend's SET.
    backend.connect_kwargs["init_command"] = "SET time_zone = '+05:00', sql_mode = ''"
    conns = [fresh_connection(backend)]
    conns += [backend._pool.acquire() for _ in range(2)]
    try:
        for conn in conns:
            with conn.cursor() as cursor:
                cursor.execute("SELECT @@session.time_zone, @@session.sql_mode")
                ((zone, mode),) = cursor.fetchall()
            assert zone == "+00:00"
            assert "STRICT_ALL_TABLES" in mode and "NO_BACKSLASH_ESCAPES" not in mode
    finally:
        for conn in conns:
            backend._pool.release(conn)


# -- strict sql_mode -------------------------------------------------------------------------


def test_an_over_long_value_is_refused_never_truncated(backend: MySQLBackend) -> None:
    backend.connect_kwargs["init_command"] = "SET sql_mode = ''"  # a lax server default
    fresh = fresh_connection(backend)
    backend._pool.release(fresh)
    run(backend, "CREATE TABLE short_text (v VARCHAR(3)) ENGINE=InnoDB")
    with pytest.raises(DatabaseError, match="Data too long") as caught:
        backend.executor.run(_insert_step("abcd"))
    assert not isinstance(caught.value, IntegrityViolation)
    assert run(backend, "SELECT COUNT(*) FROM short_text") == ((0,),)

    # The control: the same insert on a lax session is truncated with a warning only.
    lax = raw(_url_of(backend), init_command="SET sql_mode = ''")
    try:
        with lax.cursor() as cursor:
            cursor.execute("INSERT INTO short_text (v) VALUES ('abcd')")
            cursor.execute("SELECT v FROM short_text")
            assert cursor.fetchall() == (("abc",),)
    finally:
        lax.close()


def _insert_step(value: str) -> Any:
    from llm_proxy_db.sql import Step

    return Step("INSERT INTO short_text (v) VALUES (%s)", (value,), rows=False)


# -- errors ----------------------------------------------------------------------------------

SECRET = "sk-secret-token-value-0123456789"


def test_a_duplicate_key_names_the_key_and_never_the_value(backend: MySQLBackend) -> None:
    from llm_proxy_db.sql import Step

    run(backend, "CREATE TABLE keyed (token VARCHAR(64) PRIMARY KEY, name VARCHAR(64) UNIQUE)")
    insert: Step[Any] = Step(
        "INSERT INTO keyed (token, name) VALUES (%s, %s)", (SECRET, "n"), rows=False
    )
    backend.executor.run(insert)
    with pytest.raises(IntegrityViolation) as by_token:
        backend.executor.run(insert)
    other: Step[Any] = Step(
        "INSERT INTO keyed (token, name) VALUES (%s, %s)", ("x", "n"), rows=False
    )
    with pytest.raises(IntegrityViolation) as by_name:
        backend.executor.run(other)
    assert by_token.value.kind == "unique" and by_token.value.constraint == "PRIMARY"
    assert by_name.value.kind == "unique" and by_name.value.constraint == "name"
    for error in (by_token.value, by_name.value):
        shown = f"{error} {error!r} {error.args} {error.__cause__} {error.__context__}"
        assert SECRET not in shown and "Duplicate entry" not in shown


def test_a_value_cannot_forge_the_key_name() -> None:
    text = f"Duplicate entry '{SECRET}' for key 'PRIMARY' x' for key 'name'"
    error = translate_error(pymysql.err.IntegrityError(1062, text))
    assert isinstance(error, IntegrityViolation) and error.constraint == "name"
    assert SECRET not in str(error)


def test_a_duplicate_token_through_the_store_is_token_exists(db: DB) -> None:
    project = db.create_project(Project(name="dup", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id))
    with pytest.raises(TokenExistsError) as caught:
        db.create_token(Token(project_id=project.id, token=token.token))
    assert token.token not in str(caught.value)


@pytest.mark.parametrize(
    ("number", "kind"),
    [(1451, "foreign_key"), (1452, "foreign_key"), (3819, "other"), (4025, "other")],
)
def test_constraint_errors_map_to_their_kind(number: int, kind: str) -> None:
    text = f"CONSTRAINT `audit_events.outcome` failed for `db`.`t` '{SECRET}'"
    error = translate_error(pymysql.err.IntegrityError(number, text))
    assert isinstance(error, IntegrityViolation) and error.kind == kind
    assert SECRET not in str(error)


@pytest.mark.parametrize("number", [1205, 1213, 1040, 2006, 2013, 2055, 1969])
def test_retryable_errors_are_transient(number: int) -> None:
    error = translate_error(pymysql.err.OperationalError(number, f"boom '{SECRET}'"))
    assert isinstance(error, TransientError)
    assert SECRET not in str(error) and f"error {number}" in str(error)


def test_a_syntax_error_never_quotes_the_statement() -> None:
    text = f"You have an error in your SQL syntax near '{SECRET}' at line 1"
    error = translate_error(pymysql.err.ProgrammingError(1064, text))
    assert SECRET not in str(error) and "1064" in str(error)


def test_a_lock_wait_past_busy_timeout_is_transient(mysql_url: str) -> None:
    opened = MySQLBackend(config_for(mysql_url, busy_timeout=timedelta(seconds=1)))
    from llm_proxy_db.sql import Step

    try:
        run(opened, "CREATE TABLE locked (id INT PRIMARY KEY, n INT) ENGINE=InnoDB")
        run(opened, "INSERT INTO locked VALUES (1, 0)")
        holder = raw(mysql_url)
        try:
            with holder.cursor() as cursor:
                cursor.execute("START TRANSACTION")
                cursor.execute("UPDATE locked SET n = 1 WHERE id = 1")
            with pytest.raises(TransientError, match="lock wait"):
                opened.executor.run(Step("UPDATE locked SET n = 2 WHERE id = 1", rows=False))
        finally:
            holder.close()
    finally:
        opened.close()


# -- the pool --------------------------------------------------------------------------------


def test_connection_lifetime_stays_below_the_servers_wait_timeout(backend: MySQLBackend) -> None:
    backend.connect_kwargs["init_command"] = "SET SESSION wait_timeout = 20"
    backend._pool.release(fresh_connection(backend))
    assert backend._pool.max_lifetime == pytest.approx(18.0)


def test_after_a_killed_connection_the_idle_ones_are_tested(mysql_url: str) -> None:
    db = new_from_full_config(config_for(mysql_url, max_open_conns=4, max_idle_conns=4))
    try:
        backend = backend_of(db)
        backend._held.drain()
        conns = [backend._pool.acquire() for _ in range(3)]
        ids = [conn.thread_id() for conn in conns]  # type: ignore[no-untyped-call]
        for conn in conns:
            backend._pool.release(conn)
        admin = raw(mysql_url)
        try:
            with admin.cursor() as cursor:
                for thread_id in ids:
                    cursor.execute(f"KILL {int(thread_id)}")
        finally:
            admin.close()
        with pytest.raises(TransientError, match="connection was lost"):
            db.list_projects()
        assert db.list_projects() == []  # the dead idle ones were closed, not lent
    finally:
        db.close()


# -- exactness across processes --------------------------------------------------------------

_PROCESSES, _THREADS, _ATTEMPTS, _LIMIT = 8, 8, 5000, 1000


def _count_in_process(url: str, token: str, attempts: int, results: Any) -> None:
    db = new_from_full_config(config_for(url, auto_migrate=False, max_open_conns=_THREADS))
    counts: list[int] = []
    refused = 0
    lock = threading.Lock()

    def attempt(_: int) -> None:
        nonlocal refused
        try:
            counted = db.increment_token_usage(token)
        except TokenLimitReachedError:
            with lock:
                refused += 1
        else:
            with lock:
                counts.append(counted.request_count)

    try:
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(attempt, range(attempts)))
    finally:
        db.close()
    results.put((counts, refused))


def test_concurrent_increments_across_processes_are_exact(db: DB, mysql_url: str) -> None:
    project = db.create_project(Project(name="exact", openai_api_key="sk-upstream"))
    token = db.create_token(Token(project_id=project.id, max_requests=_LIMIT))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(
            target=_count_in_process,
            args=(mysql_url, token.token, _ATTEMPTS // _PROCESSES, results),
        )
        for _ in range(_PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[tuple[list[int], int]] = []
    deadline = time.monotonic() + 300
    while len(outcomes) < len(workers):
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not failed, f"a counting process failed (exit codes {failed})"
            assert time.monotonic() < deadline, "the counting processes took over 300 s"
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    counts = [count for done, _ in outcomes for count in done]
    refused = sum(refused for _, refused in outcomes)
    assert len(counts) == _LIMIT and refused == _ATTEMPTS - _LIMIT
    # Each success got the count its own increment set: 1 to 1000, each once.
    assert sorted(counts) == list(range(1, _LIMIT + 1))
    assert db.get_token_by_id(token.token).request_count == _LIMIT
