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
    async def scenario() -> tuple[object, object]:
        async def list_projects() -> object:
            try:
                return db.list_projects()
            except DatabaseError as exc:
                return exc

        before = asyncio.get_running_loop().create_future()

        async def started_before() -> object:
            await before
            return "outside"

        early = asyncio.create_task(started_before())
        with db.transaction() as tx:
            tx.create_project(Project(name="p", openai_api_key="sk-k"))
            inner = await asyncio.create_task(list_projects())
            before.set_result(None)
            outer = await early  # its context was copied before the block opened
        return inner, outer

    inner, outer = asyncio.run(scenario())
    assert isinstance(inner, DatabaseError) and "transaction" in str(inner)
    assert outer == "outside"


def test_the_block_ends_for_its_context_even_on_an_error(db: DB) -> None:
    with pytest.raises(ZeroDivisionError), db.transaction():
        1 / 0  # noqa: B018
    assert db.list_projects() == []
    with db.transaction() as tx:  # a new block may open
        tx.create_project(Project(name="after", openai_api_key="sk-k"))
    assert [p.name for p in db.list_projects()] == ["after"]
