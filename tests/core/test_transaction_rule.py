"""The transaction rule is kept in a ``ContextVar``: what counts as "inside" a block.

The conformance suite checks the rule on every backend; these tests pin down its scope on
the memory backend: the thread that opened the block, code run in a copy of its context
and asyncio tasks started inside it are inside; other threads, and tasks started before
the block, are not.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest

from llm_proxy_db import DB, DatabaseError, FullConfig, Project, new_from_full_config


@pytest.fixture
def db() -> Iterator[DB]:
    with new_from_full_config(FullConfig(driver="memory")) as database:
        yield database


def test_copied_contexts_inherit_the_block(db: DB) -> None:
    with db.transaction(), pytest.raises(DatabaseError, match="inside its own transaction"):
        contextvars.copy_context().run(db.list_projects)
    assert db.list_projects() == []


def test_the_rule_is_per_database(db: DB) -> None:
    with new_from_full_config(FullConfig(driver="memory")) as other, db.transaction():
        assert other.list_projects() == []  # another DB is not inside this block


def test_a_fresh_thread_is_outside_the_block(db: DB) -> None:
    seen: list[object] = []
    with db.transaction() as tx:
        tx.create_project(Project(name="inside", openai_api_key="sk-k"))
        worker = threading.Thread(target=lambda: seen.append(db.count_audit_events()))
        worker.start()
        worker.join(timeout=0.2)  # the memory backend makes it wait for the block
    worker.join(timeout=10)
    assert seen == [0]


def test_tasks_started_inside_the_block_are_inside_it(db: DB) -> None:
    async def scenario() -> object:
        async def list_projects() -> object:
            try:
                return db.list_projects()
            except DatabaseError as exc:
                return exc

        with db.transaction() as tx:
            tx.create_project(Project(name="p", openai_api_key="sk-k"))
            return await asyncio.create_task(list_projects())

    inner = asyncio.run(scenario())
    assert isinstance(inner, DatabaseError) and "transaction" in str(inner)


def test_a_task_started_before_the_block_on_its_thread_is_refused(db: DB) -> None:
    """Its blocking call would stall the thread the block runs on (a hang on PostgreSQL)."""

    async def scenario() -> tuple[object, int]:
        token_ready = asyncio.Event()
        block_open = asyncio.Event()
        seen: list[object] = []

        async def early() -> None:
            await block_open.wait()
            try:
                seen.append(db.list_projects())
            except DatabaseError as exc:
                seen.append(exc)
            token_ready.set()

        task = asyncio.create_task(early())  # its context is copied before the block
        with db.transaction() as tx:
            tx.create_project(Project(name="p", openai_api_key="sk-k"))
            block_open.set()
            await token_ready.wait()
        await task
        return seen[0], len(db.list_projects())

    seen, stored = asyncio.run(scenario())
    assert isinstance(seen, DatabaseError), f"the early task got {seen!r}"
    assert stored == 1  # the block committed


def test_a_block_left_in_another_context_ends_cleanly(db: DB) -> None:
    # Frameworks may run the enter and the exit of a context manager in different
    # contexts (FastAPI's yield dependencies, pytest-asyncio fixtures).
    manager = db.transaction()
    opened_in = contextvars.copy_context()
    tx = opened_in.run(manager.__enter__)
    tx.create_project(Project(name="kept", openai_api_key="sk-k"))
    manager.__exit__(None, None, None)  # no ValueError from ContextVar.reset
    assert [p.name for p in db.list_projects()] == ["kept"]  # committed
    with pytest.raises(DatabaseError, match="transaction has ended"):
        tx.list_projects()
    assert opened_in.run(db.list_projects)  # that context is free again


def test_blocks_of_two_databases_may_end_in_any_order(db: DB) -> None:
    with new_from_full_config(FullConfig(driver="memory")) as other:
        first = db.transaction()
        second = other.transaction()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert db.list_projects() == []  # free, though the other block is still open
        with pytest.raises(DatabaseError):
            other.list_projects()
        second.__exit__(None, None, None)
        assert other.list_projects() == []


def test_a_task_that_outlives_the_block_is_free_afterwards(db: DB) -> None:
    async def scenario() -> object:
        ended = asyncio.Event()

        async def later() -> object:
            await ended.wait()
            return db.list_projects()

        with db.transaction():
            task = asyncio.create_task(later())
        ended.set()
        return await task

    assert asyncio.run(scenario()) == []


def test_the_refusal_says_what_to_do_instead(db: DB) -> None:
    with db.transaction():
        for call, advice in [
            (db.list_projects, "tx.list_projects(...)"),
            (db.transaction, "blocks do not nest"),
            (db.close, "leave the block first"),
            (db.health_check, "before or after the block"),
        ]:
            with pytest.raises(DatabaseError) as refused:
                call().__enter__() if call == db.transaction else call()
            assert advice in str(refused.value)
        with pytest.raises(DatabaseError, match="migrat"):
            db.migrations  # noqa: B018 - the property refuses


def test_the_block_ends_for_its_context_even_on_an_error(db: DB) -> None:
    with pytest.raises(ZeroDivisionError), db.transaction():
        1 / 0  # noqa: B018
    assert db.list_projects() == []
    with db.transaction() as tx:  # a new block may open
        tx.create_project(Project(name="after", openai_api_key="sk-k"))
    assert [p.name for p in db.list_projects()] == ["after"]
