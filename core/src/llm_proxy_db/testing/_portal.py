"""An ``AsyncDB`` driven from blocking code: the sync conformance suite's way in.

:class:`PortalDB` has the interface of ``DB`` (every store method, ``transaction()`` as a
blocking context manager, ``close``, ``health_check``, ``capabilities``, ``backend_spec``,
``config``, ``migrations``) and runs each call on an ``AsyncDB`` through an anyio blocking
portal: the ``AsyncDB`` lives on the portal's event loop, in the portal's thread, and each
call is a fresh task there. ``transaction()`` enters and leaves the ``AsyncDB``'s block in
one task of its own; the calls on the object it yields are tasks of their own too.

So what depends on task identity (the transaction rule, cancellation) cannot be seen
through a portal: :mod:`._async_only` tests it natively. The proxy keeps ``DB``'s blocking
transaction rule for its own callers' thread, so that a call on it from inside its own
block raises at once instead of waiting on the block's lock forever.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import _transaction_rule
from .._config import FullConfig
from .._db import DB, new_from_full_config
from .._delegation import ForwardedStores, forwarding
from .._errors import DatabaseError
from .._protocols import AsyncBackend, AsyncStores, Stores
from .._registry import BackendSpec, Capabilities

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from .._aio import AsyncDB
    from ..sql import Migrations

__all__ = ["PortalBackend", "PortalDB", "PortalStores"]

_PORTAL_CALL = "self._portal.call(_partial(self._target.{name}, {args}))"
_NAMESPACE = {"_partial": functools.partial}


@forwarding(_PORTAL_CALL, protocol=Stores, namespace=_NAMESPACE)
class PortalStores(ForwardedStores):
    """Awaiting stores (``target``) as blocking ones, each call a task on ``portal``."""

    __slots__ = ("_portal", "_target")

    def __init__(self, target: AsyncStores, portal: BlockingPortal) -> None:
        self._target: Any = target
        self._portal = portal


class PortalBackend(PortalStores):
    """An ``AsyncBackend`` as a blocking ``Backend``: what the suite's backend-level tests
    (its second ``close()``, ``health_check()`` after it, its ``transaction()``) drive."""

    __slots__ = ()

    def __init__(self, target: AsyncBackend, portal: BlockingPortal) -> None:
        super().__init__(target, portal)

    def close(self) -> None:
        self._portal.call(self._target.close)

    def health_check(self) -> None:
        self._portal.call(self._target.health_check)

    @contextmanager
    def transaction(self) -> Iterator[Stores]:
        with self._portal.wrap_async_context_manager(self._target.transaction()) as stores:
            yield PortalStores(stores, self._portal)


@forwarding(_PORTAL_CALL, guarded=True, namespace=_NAMESPACE)
class PortalDB(PortalStores):
    """An ``AsyncDB`` with the interface of ``DB``, each call a task on ``portal``."""

    __slots__ = ("_portal_db", "_twin")

    def __init__(self, db: AsyncDB, portal: BlockingPortal) -> None:
        super().__init__(db, portal)
        self._portal_db = db
        self._twin: DB | None = None

    @property
    def async_db(self) -> AsyncDB:
        """The ``AsyncDB`` behind this proxy."""
        return self._portal_db

    @property
    def _backend(self) -> PortalBackend:
        """The ``AsyncDB``'s backend, blocking (what ``_raw_backend`` hands the suite)."""
        return PortalBackend(self._portal_db._backend, self._portal)

    @property
    def config(self) -> FullConfig:
        return self._portal_db.config

    @property
    def backend_spec(self) -> BackendSpec:
        return self._portal_db.backend_spec

    @property
    def capabilities(self) -> Capabilities:
        return self._portal_db.capabilities

    @property
    def closed(self) -> bool:
        return self._portal_db.closed

    def blocking_twin(self) -> DB:
        """A blocking ``DB`` on the same storage (opened on first use, closed with this
        one): for what only ``DB`` offers, migrations and the tables' renaming."""
        _transaction_rule.refuse(self, "blocking_twin")
        if self._twin is None:
            self._twin = new_from_full_config(self.config)
        return self._twin

    @property
    def migrations(self) -> Migrations:
        """The migration runner of a blocking ``DB`` on the same storage (``AsyncDB`` has
        none: it migrates when it opens)."""
        if self.closed:
            raise DatabaseError("the database is closed")
        return self.blocking_twin().migrations

    def close(self) -> None:
        _transaction_rule.refuse(self, "close")
        try:
            self._portal.call(self._portal_db.close)
        finally:
            twin, self._twin = self._twin, None
            if twin is not None:
                twin.close()

    def health_check(self) -> None:
        _transaction_rule.refuse(self, "health_check")
        self._portal.call(self._portal_db.health_check)

    @contextmanager
    def transaction(self) -> Iterator[Stores]:
        _transaction_rule.refuse(self, "transaction")
        manager = self._portal.wrap_async_context_manager(self._portal_db.transaction())
        with manager as facade:
            block = _transaction_rule.enter(self, blocking=True)
            try:
                yield PortalStores(facade, self._portal)
            finally:
                _transaction_rule.leave(block)

    def __enter__(self) -> PortalDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._portal_db)
