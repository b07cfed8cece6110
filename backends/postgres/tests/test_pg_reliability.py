"""PostgreSQL reliability: COMMIT of an aborted transaction, fork safety, and the server
connections bounded by ``max_open_conns`` (the open probe included)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import conninfo

from llm_proxy_db import (
    DB,
    DatabaseError,
    FullConfig,
    Project,
    ProjectNotFoundError,
    Token,
    TransientError,
    new_from_full_config,
)
from llm_proxy_db.testing._forking import fork_children
from llm_proxy_db_postgres import _backend

if TYPE_CHECKING:
    from tests.fixtures.postgres import PostgresServer


def _open(url: str, *, max_open: int = 3, max_idle: int = 2) -> DB:
    return new_from_full_config(
        FullConfig(
            driver="postgres", database_url=url, max_open_conns=max_open, max_idle_conns=max_idle
        )
    )


def _project(name: str) -> Project:
    return Project(name=name, openai_api_key="sk-test")


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _backend_of(db: DB) -> _backend.PostgresBackend:
    backend = db._backend
    assert isinstance(backend, _backend.PostgresBackend)
    return backend


@pytest.fixture
def tagged_url(postgres_url: str) -> str:
    """``postgres_url`` with an application_name that only this test's connections carry."""
    return conninfo.make_conninfo(postgres_url, application_name=f"pgr_{secrets.token_hex(6)}")


def _server_pids(admin_url: str, url: str) -> set[int]:
    name = conninfo.conninfo_to_dict(url)["application_name"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    return {row[0] for row in rows}


# -- COMMIT of a transaction the server aborted ---------------------------------------------


def test_commit_after_a_lost_connection_raises(
    tagged_url: str, postgres_server: PostgresServer
) -> None:
    with _open(tagged_url) as db:
        kept = db.create_project(_project("kept"))
        lost = _project("lost")
        aborted = pytest.raises(TransientError, match=r"aborted.*nothing of it was stored")
        with aborted, db.transaction() as tx:
            tx.create_project(lost)
            with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
                for pid in _server_pids(postgres_server.admin_url, tagged_url):
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(DatabaseError):
                tx.create_project(_project("after-the-kill"))  # caught, as a block may
        for _attempt in range(5):  # the pool replaces its dead connections
            try:
                assert db.get_project_by_id(kept.id) == kept
                break
            except TransientError:
                time.sleep(0.1)
        with pytest.raises(ProjectNotFoundError):
            db.get_project_by_id(lost.id)


def test_commit_of_a_transaction_in_error_raises(postgres_url: str) -> None:
    """A failed statement left without ROLLBACK TO SAVEPOINT: COMMIT would be a silent
    ROLLBACK on PostgreSQL; the executor refuses to call that a commit."""
    with _open(postgres_url) as db:
        executor = _backend_of(db).executor
        aborted = pytest.raises(TransientError, match="server aborted the transaction")
        with aborted, executor.transaction() as bound:
            conn: Any = bound._conn  # type: ignore[attr-defined]
            with pytest.raises(psycopg.errors.NotNullViolation):
                conn.execute("INSERT INTO projects (id) VALUES ('x')")
        db.health_check()


def test_a_failed_call_in_a_block_is_undone_alone(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        taken = db.create_project(_project("taken"))
        fresh = _project("fresh")
        with db.transaction() as tx:
            tx.create_project(fresh)
            with pytest.raises(DatabaseError):
                tx.create_project(_project(taken.name))
            token = tx.create_token(Token(project_id=fresh.id))
        assert db.get_project_by_id(fresh.id) == fresh
        assert db.get_token_by_id(token.token) == token


# -- fork safety -------------------------------------------------------------------------


def test_forked_children_open_their_own_pools(
    tagged_url: str, postgres_server: PostgresServer
) -> None:
    with _open(tagged_url, max_open=4, max_idle=2) as db:
        project = db.create_project(_project("parent"))
        token = db.create_token(Token(project_id=project.id))
        for _ in range(10):
            db.increment_token_usage(token.token)
        parent_pids = _server_pids(postgres_server.admin_url, tagged_url)
        assert parent_pids
        reports = fork_children(db, children=4, tokens_each=100)
        assert all(report["pid"] for report in reports)
        # The parent's sessions survived the children (none was closed or shared).
        assert db.increment_token_usage(token.token).request_count == 11
        assert parent_pids <= _server_pids(postgres_server.admin_url, tagged_url)
        for report in reports:
            assert {t.token for t in db.list_tokens(report["project"])} == set(report["tokens"])


# -- max_open_conns bounds the server connections ------------------------------------------


@pytest.fixture
def limited_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL for a scratch role with ``CONNECTION LIMIT 2``, owning a fresh schema of the
    session's scratch database; role and schema are dropped afterwards."""
    role = f"llm_proxy_db_limited_{secrets.token_hex(4)}"
    schema = f"s_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    try:
        with psycopg.connect(postgres_server.url, autocommit=True) as scratch:
            scratch.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
        yield conninfo.make_conninfo(
            postgres_server.url, user=role, options=f"-csearch_path={schema}"
        )
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as scratch:
            scratch.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            scratch.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            scratch.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def _role_connections(admin_url: str, url: str) -> int:
    role = conninfo.conninfo_to_dict(url)["user"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("max_idle", [0, 2])
def test_opens_within_a_server_limit_equal_to_the_pool_size(
    limited_url: str, postgres_server: PostgresServer, max_idle: int
) -> None:
    for round_ in range(5):
        # The server counts a closed session until its process exits: start each round
        # from none, as a restarted proxy would.
        _wait_until(
            lambda: _role_connections(postgres_server.admin_url, limited_url) == 0,
            "the role's sessions to end",
        )
        with _open(limited_url, max_open=2, max_idle=max_idle) as db:
            project = db.create_project(_project(f"round-{round_}"))
            token = db.create_token(Token(project_id=project.id))
            errors: list[BaseException] = []

            def work(db: DB, token: str, errors: list[BaseException]) -> None:
                try:
                    for _ in range(20):
                        db.increment_token_usage(token)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [
                threading.Thread(target=work, args=(db, token.token, errors)) for _ in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not errors, f"round {round_}: {errors[0]!r}"
            assert db.get_token_by_id(token.token).request_count == 80
            used = _role_connections(postgres_server.admin_url, limited_url)
            assert used <= 2, f"round {round_}: {used} server connections for max_open_conns=2"


# -- health ------------------------------------------------------------------------------


def test_health_reads_every_table_and_the_deep_check_counts_them(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        db.create_project(_project("p"))
        db.health_check()
        assert db.check_integrity() is True
        with _backend_of(db).executor.connection() as conn:
            conn.execute("ALTER TABLE audit_events RENAME TO audit_events_gone")
        with pytest.raises(DatabaseError, match="audit_events"):
            db.health_check()
        with pytest.raises(DatabaseError):
            db.check_integrity()
