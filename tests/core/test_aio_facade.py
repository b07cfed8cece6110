"""``AsyncDB`` keeps ``DB``'s interface: the parity test of issue 12.

For every public method of ``DB``, ``AsyncDB`` has a coroutine function of the same name
with an equal ``inspect.signature``; exempt are ``transaction`` (an async context manager
on ``AsyncDB``) and members that are properties. The same holds between the objects a
transaction yields, ``StoreFacade`` and ``AsyncStoreFacade``.
"""

from __future__ import annotations

import inspect

import pytest

from llm_proxy_db import DB
from llm_proxy_db._db import StoreFacade
from llm_proxy_db.aio import AsyncDB, AsyncStoreFacade

EXEMPT = frozenset({"audit_writer", "transaction"})  # audit_writer: returns the async twin

MISSING: dict[str, str] = {}
"""Public ``DB`` methods ``AsyncDB`` still lacks: strict xfails, so adding one fails here
until its entry goes."""


def public_methods(cls: type) -> list[str]:
    """Public members of ``cls`` that are methods (not properties, not attributes)."""
    names = []
    for name, value in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), property):
            continue
        if inspect.isfunction(value):
            names.append(name)
    return sorted(names)


def _cases(sync: type, exempt: frozenset[str]) -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=MISSING[name]))
        if name in MISSING
        else name
        for name in public_methods(sync)
        if name not in exempt
    ]


def assert_same_coroutine(sync: type, async_: type, name: str) -> None:
    method = getattr(async_, name, None)
    assert method is not None, f"{async_.__name__} lacks {name}() of {sync.__name__}"
    assert inspect.iscoroutinefunction(method), f"{async_.__name__}.{name} is not a coroutine"
    expected = inspect.signature(getattr(sync, name), eval_str=True)
    assert inspect.signature(method, eval_str=True) == expected, (
        f"{async_.__name__}.{name}{inspect.signature(method)} != {sync.__name__}.{name}{expected}"
    )


@pytest.mark.parametrize("name", _cases(DB, EXEMPT))
def test_async_db_has_every_method_of_db(name: str) -> None:
    assert_same_coroutine(DB, AsyncDB, name)


@pytest.mark.parametrize("name", _cases(StoreFacade, frozenset()))
def test_transaction_objects_have_the_same_methods(name: str) -> None:
    assert_same_coroutine(StoreFacade, AsyncStoreFacade, name)


def test_parity_covers_the_store_methods() -> None:
    """The comparison sees what it should: every store method, close and health_check."""
    names = set(public_methods(DB))
    assert {"create_project", "increment_token_usage", "stats", "close", "health_check"} <= names
    assert "capabilities" not in names and "migrations" not in names  # properties
    assert not set(public_methods(AsyncDB)) - names - {"transaction"}, (
        "AsyncDB has public methods DB lacks"
    )


def test_exempt_members_exist_on_both() -> None:
    for name in ("transaction", "capabilities", "backend_spec", "config"):
        assert hasattr(DB, name) or name in DB.__slots__, name
        assert hasattr(AsyncDB, name) or name in AsyncDB.__slots__, name
