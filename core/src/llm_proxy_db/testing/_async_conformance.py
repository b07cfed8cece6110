"""``AsyncStoreConformance``: the whole suite, run against a backend's async stack."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, cast

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._db import DB
from ._async_only import AsyncBackendFactory, AsyncOnlyTests
from ._base import BackendFactory
from ._conformance import StoreConformance
from ._failures import renamed_tables
from ._portal import PortalDB

__all__ = ["AsyncStoreConformance"]

_NATIVE = "tested natively on the loop instead"


def _not_through_a_portal(reason: str) -> Any:
    """A test of ``StoreConformance`` that cannot run through a portal: it skips, saying
    why (a portal runs each call in a fresh task)."""

    def test(self: object) -> None:
        pytest.skip(f"not through the blocking portal: {reason}")

    return test


class AsyncStoreConformance(AsyncOnlyTests, StoreConformance):
    """Every behaviour of the store contract, for one backend's ``AsyncDB``.

    Subclass it like :class:`StoreConformance`, overriding one fixture,
    ``async_backend_factory``, returning an :class:`AsyncBackendFactory`::

        class TestMyBackendAsync(AsyncStoreConformance):
            @pytest.fixture
            def async_backend_factory(self, tmp_path):
                async def factory(*, reopen=None):
                    if reopen is not None:  # the same storage, opened again
                        return await aio.new_from_full_config(reopen.config)
                    path = tmp_path / f"db-{uuid.uuid4().hex}"  # a new, empty one
                    config = FullConfig(driver="mine", path=str(path))
                    return await aio.new_from_full_config(config)
                return factory

    Every test of :class:`StoreConformance` (the Hypothesis state machine included) then
    runs on that ``AsyncDB``, driven through an anyio blocking portal by a proxy with the
    interface of ``DB`` (``db`` in those tests; its ``migrations`` and the default
    ``failing_storage`` use a blocking ``DB`` on the same storage, since ``AsyncDB``
    migrates when it opens). A portal runs each call in a fresh task, so what depends on
    task identity (the transaction rule, cancellation) runs natively instead, in the
    async-only tests (``@pytest.mark.anyio`` on asyncio): the rule for tasks, a cancelled
    block, 200 tasks racing for a limit of 50, threads after ``close()``, use from another
    loop, and the ``ResourceWarning`` of an ``AsyncDB`` collected open.

    ``expected_failures``, ``clock_tolerance``, ``spawn_imports`` and an overridden
    ``failing_storage`` work as in :class:`StoreConformance`.
    """

    @pytest.fixture
    def portal(self) -> Iterator[BlockingPortal]:
        """An event loop in a thread of its own, for one test."""
        with start_blocking_portal("asyncio") as portal:
            yield portal

    @pytest.fixture
    def backend_factory(
        self, async_backend_factory: AsyncBackendFactory, portal: BlockingPortal
    ) -> BackendFactory:
        """The sync suite's factory: ``async_backend_factory`` on the portal's loop, each
        ``AsyncDB`` behind a :class:`PortalDB`."""

        def factory(*, reopen: DB | None = None) -> DB:
            again = None if reopen is None else cast(PortalDB, reopen).async_db
            opened = portal.call(functools.partial(async_backend_factory, reopen=again))
            return cast(DB, PortalDB(opened, portal))

        return factory

    @pytest.fixture
    def failing_storage(self, db: DB) -> AbstractContextManager[None]:
        """As in :class:`StoreConformance`: the tables renamed, here through a blocking
        ``DB`` on the same storage."""
        if "migrations" not in db.capabilities:
            pytest.skip(
                f"backend {db.backend_spec.name!r} has no 'migrations' capability, so the "
                "suite cannot make its storage fail: override the failing_storage fixture "
                "(see StoreConformance)"
            )
        return renamed_tables(cast(PortalDB, db).blocking_twin())

    test_db_call_inside_its_own_transaction_is_refused = _not_through_a_portal(
        "the transaction rule follows tasks; "
        f"test_async_call_inside_its_own_transaction_is_refused: {_NATIVE}"
    )
    test_forked_children_get_their_own_connections = _not_through_a_portal(
        "os.fork() with an event loop running in another thread leaves the child without "
        "it (asyncio is not fork-safe: open an AsyncDB after the fork)"
    )
