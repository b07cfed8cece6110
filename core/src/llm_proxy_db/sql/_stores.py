"""The SQL stores: every store method, as the store logic's operation run by an executor.

Nothing here decides anything: each method is generated (:mod:`.._delegation`) as
``executor.run(logic.<method>(...))``, blocking in :class:`SqlStores`, awaiting in
:class:`AsyncSqlStores`. :class:`SqlBackend` adds what a blocking SQL ``Backend`` needs
besides its connections: transactions and the health check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._delegation import ForwardedStores, forwarding
from .._protocols import Stores
from ._execute import AsyncExecutor, DbApiExecutor, Executor
from ._logic import StoreLogic
from ._operation import Step
from ._statements import Statements

__all__ = ["AsyncSqlStores", "SqlBackend", "SqlStores"]

_CALL = "self._executor.run(self._logic.{name}({args}))"


@forwarding(_CALL, protocol=Stores)
class SqlStores(ForwardedStores):
    """``Stores`` over a blocking :class:`Executor` and the :class:`StoreLogic`."""

    def __init__(self, executor: Executor, logic: StoreLogic) -> None:
        self._executor = executor
        self._logic = logic


@forwarding(_CALL, protocol=Stores, awaiting=True)
class AsyncSqlStores:
    """The awaiting twin of :class:`SqlStores`: every method of ``Stores`` as a coroutine
    (same name, parameters and errors) over an :class:`AsyncExecutor` and the same
    :class:`StoreLogic`."""

    def __init__(self, executor: AsyncExecutor, logic: StoreLogic) -> None:
        self._executor = executor
        self._logic = logic

    if TYPE_CHECKING:  # the methods are generated from Stores, as coroutines

        def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]: ...


class SqlBackend(SqlStores):
    """A blocking SQL ``Backend`` but for ``close()``: the stores, ``transaction()`` and
    ``health_check()`` over a :class:`DbApiExecutor`.

    A backend subclasses it, builds its executor and statements, and adds ``close()`` and
    (for migrations) ``migration_connection()``.
    """

    def __init__(self, executor: DbApiExecutor[Any], statements: Statements) -> None:
        super().__init__(executor, StoreLogic(statements))
        self.executor = executor
        """The executor: :meth:`DbApiExecutor.connection` lends a connection."""

    def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the database answers a trivial query."""
        self._executor.run(Step("SELECT 1"))

    @contextmanager
    def transaction(self) -> Iterator[SqlStores]:
        """The store methods on one connection, in one transaction."""
        with self.executor.transaction() as bound:
            yield SqlStores(bound, self._logic)
