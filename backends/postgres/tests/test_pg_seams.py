"""PostgreSQL: opening without the migration lock, pool sizes that hold, migration errors
without driver text, and the shared store logic on an awaiting executor."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from llm_proxy_db import (
    DB,
    FullConfig,
    MigrationError,
    Project,
    ProjectExistsError,
    Token,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    generate_token,
    new_from_full_config,
)
from llm_proxy_db.sql import AsyncDbApiExecutor, AsyncSqlStores, Migrations, Statements, StoreLogic
from llm_proxy_db_postgres import POSTGRES, _backend


def _open(url: str, **changes: Any) -> DB:
    return new_from_full_config(FullConfig(driver="postgres", database_url=url, **changes))


def _server_connections(admin_url: str, application_name: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def named_url(postgres_url: str, request: pytest.FixtureRequest) -> str:
    """``postgres_url`` whose connections carry an application_name of this test only."""
    name = f"seams_{abs(hash(request.node.nodeid)) % 10**10}_{time.monotonic_ns() % 10**6}"
    return conninfo.make_conninfo(postgres_url, application_name=name)


def _name(url: str) -> str:
    return str(conninfo.conninfo_to_dict(url)["application_name"])


# -- opening without waiting ---------------------------------------------------------------


def test_opening_an_up_to_date_database_takes_no_lock(postgres_url: str) -> None:
    _open(postgres_url).close()  # migrated
    holder = psycopg.connect(postgres_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (_backend.MIGRATION_LOCK_ID,))
        started = time.monotonic()
        with _open(postgres_url) as db:
            db.list_projects()
        assert time.monotonic() - started < 2, "opening waited for the migration lock"
    finally:
        holder.close()


def test_opening_with_a_pending_file_waits_for_the_lock(postgres_url: str) -> None:
    with _open(postgres_url) as db:
        db.migrations.down()  # version 100 pending again
    holder = psycopg.connect(postgres_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (_backend.MIGRATION_LOCK_ID,))
    opened: list[float] = []
    try:
        started = time.monotonic()

        def release_later() -> None:
            time.sleep(1.0)
            holder.execute("SELECT pg_advisory_unlock(%s)", (_backend.MIGRATION_LOCK_ID,))

        import threading

        releaser = threading.Thread(target=release_later)
        releaser.start()
        with _open(postgres_url) as db:
            opened.append(time.monotonic() - started)
            assert db.migrations.version() == db.migrations.latest
        releaser.join()
    finally:
        holder.close()
    assert opened[0] >= 0.9, "a pending file must be applied under the lock"


# -- pool sizes ----------------------------------------------------------------------------


def test_open_and_one_query_leave_at_most_two_connections(
    named_url: str, postgres_server: Any
) -> None:
    with _open(named_url) as db:  # defaults: max_open_conns 10, max_idle_conns 5
        db.list_projects()
        time.sleep(0.3)  # let the pool settle
        assert _server_connections(postgres_server.admin_url, _name(named_url)) <= 2
    # Closed: every session ends (the server process exits a moment after the client hangs
    # up, later on a loaded machine).
    assert _settles_to_zero(
        lambda: _server_connections(postgres_server.admin_url, _name(named_url))
    )


def _settles_to_zero(count: Callable[[], int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while count() != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_max_open_conns_bounds_every_connection(named_url: str, postgres_server: Any) -> None:
    peak = 0
    admin_url = postgres_server.admin_url
    with _open(named_url, max_open_conns=2) as db:  # probe and migrations included
        token = db.create_token(Token(project_id=db.create_project(_project()).id))

        def work() -> None:
            for _ in range(20):
                db.increment_token_usage(token.token)

        import threading

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, _server_connections(admin_url, _name(named_url)))
            time.sleep(0.005)
        for thread in threads:
            thread.join()
        assert db.get_token_by_id(token.token).request_count == 120
    assert 1 <= peak <= 2


def test_unset_idle_connections_follow_a_small_pool(postgres_url: str) -> None:
    config = FullConfig(driver="postgres", database_url=postgres_url, max_open_conns=2)
    assert config.max_idle_conns == 2
    with new_from_full_config(config) as db:
        db.health_check()


# -- migration errors carry no driver text -------------------------------------------------


def test_a_failing_migration_never_shows_the_duplicated_token(
    postgres_url: str, tmp_path: Path
) -> None:
    secret = generate_token()
    with _open(postgres_url) as db:
        project = db.create_project(_project())
        db.create_token(Token(project_id=project.id, token=secret))
        source = tmp_path / "migrations"
        source.mkdir()
        for shipped in files("llm_proxy_db_postgres").joinpath("migrations").iterdir():
            (source / shipped.name).write_text(shipped.read_text())
        (source / "00101_duplicate_tokens.sql").write_text(
            "-- +goose Up\n"
            "INSERT INTO tokens (token, project_id) SELECT token, project_id FROM tokens;\n"
            "-- +goose Down\n"
            "SELECT 1;\n"
        )
        target: Any = db._backend
        with pytest.raises(MigrationError) as caught:
            Migrations(source, target).up()
    error = caught.value
    assert error.version == 101
    text = "".join(traceback.format_exception(error)) + repr(error.args)
    chain: BaseException | None = error
    while chain is not None:
        text += str(chain) + repr(chain)
        assert not isinstance(chain, psycopg.Error), "a driver exception is attached"
        chain = chain.__cause__ or chain.__context__
    assert secret not in text
    assert "duplicate key" in str(error)  # the primary message is kept


# -- the store logic on an awaiting executor -------------------------------------------------


def _project(name: str | None = None) -> Project:
    return Project(name=name or f"p-{time.monotonic_ns()}", openai_api_key="sk-test-upstream")


@pytest.fixture
def migrated_url(postgres_url: str) -> Iterator[str]:
    _open(postgres_url).close()
    yield postgres_url


def test_the_same_store_logic_runs_on_an_awaiting_executor(migrated_url: str) -> None:
    async def scenario() -> None:
        async with AsyncConnectionPool(
            migrated_url, kwargs={"autocommit": True}, min_size=1, max_size=4, open=False
        ) as pool:
            executor = AsyncDbApiExecutor(
                pool.connection,
                dialect=POSTGRES,
                driver_error=psycopg.Error,
                translate=_backend.translate_error,
            )
            logic = StoreLogic(Statements(POSTGRES))
            stores = AsyncSqlStores(executor, logic)
            project = await stores.create_project(_project("async"))
            with pytest.raises(ProjectExistsError) as taken:
                await stores.create_project(_project("async"))
            assert taken.value.key == "async"
            token = await stores.create_token(Token(project_id=project.id, max_requests=5))
            results = await asyncio.gather(
                *(stores.increment_token_usage(token.token) for _ in range(20)),
                return_exceptions=True,
            )
            counted = [r for r in results if isinstance(r, Token)]
            refused = [r for r in results if isinstance(r, TokenLimitReachedError)]
            assert (len(counted), len(refused)) == (5, 15)
            assert refused[0].max_requests == 5
            assert (await stores.get_token_by_id(token.token)).request_count == 5

            async with executor.transaction() as bound:
                tx = AsyncSqlStores(bound, logic)
                await tx.revoke_token(token.token)
                assert not (await tx.get_token_by_id(token.token)).is_active
            with pytest.raises(TokenInactiveError):
                await stores.increment_token_usage(token.token)

            class Boom(Exception):
                pass

            with pytest.raises(Boom):
                async with executor.transaction() as bound:
                    await AsyncSqlStores(bound, logic).delete_project(project.id)
                    raise Boom
            assert (await stores.get_project_by_id(project.id)) == project
            with pytest.raises(TokenNotFoundError):
                await stores.reset_token_usage(generate_token())
            stats = await stores.stats()
            assert (stats.projects, stats.tokens, stats.total_requests) == (1, 1, 5)

    asyncio.run(scenario())


def test_the_dialects_insert_or_ignore_skips_an_existing_key(migrated_url: str) -> None:
    statement = POSTGRES.insert_ignoring_duplicates("projects", "id, name, openai_api_key")
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        first = conn.execute(statement, ("p-1", "one", "sk-a")).rowcount
        again = conn.execute(statement, ("p-1", "other", "sk-b")).rowcount
        rows = conn.execute("SELECT id, name FROM projects").fetchall()
    assert (first, again, rows) == (1, 0, [("p-1", "one")])
