"""``AsyncDB``: the ``DB`` facade's contract on an event loop.

Every store method of ``DB`` is here as a coroutine with the same name, parameters,
result and errors (generated from the same protocol, so the two cannot drift), the same
argument checks, closed behaviour and transaction rule: a call on the ``AsyncDB`` from
inside its own open ``transaction()`` block, in the task that opened it or a task started
inside the block, raises ``DatabaseError`` at once. An ``AsyncDB`` belongs to the loop
that opened it; a call from another loop raises ``DatabaseError`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from . import _transaction_rule
from ._aio_audit_writer import AsyncAuditWriter
from ._audit_queue import check_settings
from ._audit_writer import AuditSpool
from ._config import Config, FullConfig, config_from_env
from ._db import open_backend
from ._delegation import AsyncForwardedStores, forwarding
from ._encrypting import AsyncEncryptingBackend
from ._encryption import Cipher
from ._errors import DatabaseError
from ._facade import CHECKED_CALL, FacadeState
from ._offload import OffloadBackend
from ._protocols import AsyncBackend, AsyncStores, Stores
from ._registry import BackendSpec, get_backend_spec

__all__ = ["AsyncDB", "AsyncStoreFacade", "new", "new_from_full_config"]


@forwarding(CHECKED_CALL, protocol=Stores, checked=True, awaiting=True)
class AsyncStoreFacade(AsyncForwardedStores):
    """The store methods as coroutines, checked for argument types, then handed to the
    backend: the object an ``AsyncDB.transaction()`` block yields."""

    __slots__ = ("_stores",)

    def __init__(self, stores: AsyncStores) -> None:
        self._stores = stores


def _wrong_loop(db: AsyncDB) -> DatabaseError:
    return DatabaseError(
        f"{db!r} was opened on another event loop: an AsyncDB belongs to the loop that "
        "opened it (open one per loop, e.g. per thread running asyncio.run)"
    )


@forwarding(
    CHECKED_CALL,
    checked=True,
    guarded=True,
    awaiting=True,
    prelude="if _running_loop() is not self._loop: raise _wrong_loop(self)",
    namespace={"_running_loop": asyncio.get_running_loop, "_wrong_loop": _wrong_loop},
)
class AsyncDB(AsyncStoreFacade, FacadeState[AsyncAuditWriter]):
    """An open database on an event loop: the three stores as coroutines, transactions
    and the health check.

    Open one with ``await aio.new(...)`` or ``await aio.new_from_full_config(...)``; close
    it with ``await db.close()`` or use it as ``async with db:``. Safe to share between the
    tasks of its loop.
    """

    __slots__ = ("__weakref__", "_audit_writers", "_backend", "_loop", "backend_spec", "config")
    _kind = "AsyncDB"
    _blocking = False

    def __init__(
        self,
        backend: AsyncBackend,
        *,
        config: FullConfig,
        backend_spec: BackendSpec,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(backend)
        self._opened(backend, config, backend_spec)
        self._loop = loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._is_closed()

    def _check(self, call: str) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise _wrong_loop(self)
        _transaction_rule.refuse(self, call, blocking=False)

    async def audit_writer(
        self,
        *,
        max_batch: int = 500,
        max_delay: float = 0.05,
        max_pending: int = 10_000,
        spool_path: str | os.PathLike[str] | None = None,
    ) -> AsyncAuditWriter:
        """A new :class:`AsyncAuditWriter` on this database, with a task of its own on
        its loop: as ``DB.audit_writer`` (the spool opened and read in a worker thread).
        ``close()`` closes every writer still open."""
        self._check("audit_writer")
        self._refuse_closed()
        check_settings(max_batch, max_delay, max_pending)
        spool = None if spool_path is None else await asyncio.to_thread(AuditSpool, spool_path)
        if self.closed and spool is not None:  # closed while the spool opened
            spool.close()
        self._refuse_closed()
        return self._track_writer(
            AsyncAuditWriter(
                self,
                max_batch=max_batch,
                max_delay=max_delay,
                max_pending=max_pending,
                spool=spool,
                on_close=self._forget_writer,
            )
        )

    async def close(self) -> None:
        """Store what every open audit writer holds and stop it, then release every
        connection and thread. Idempotent; later calls raise ``DatabaseError``."""
        self._check("close")
        failure: Exception | None = None
        for writer in self._open_writers():
            try:
                await writer.close()
            except Exception as exc:  # close the rest and the backend first
                failure = failure or exc
        if (backend := self._stand_in_closed()) is not None:
            await backend.close()
        if failure is not None:
            raise failure

    async def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the storage answers."""
        self._check("health_check")
        await self._backend.health_check()

    async def check_integrity(self) -> bool:
        """As ``DB.check_integrity``: the backend's deep integrity check, if it has one
        (an optional ``async check_integrity()``). True when it ran and passed; False when
        the backend has none; ``DatabaseError`` when it fails."""
        self._check("check_integrity")
        check = getattr(self._backend, "check_integrity", None)
        if check is None:
            return False
        return await check() is not False  # the offload adapter tells "none" with False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncStoreFacade]:
        """A unit of work: commits on normal exit, rolls back everything on an exception
        or a cancellation. Inside the block use the object it yields."""
        self._check("transaction")
        async with self._backend.transaction() as stores:
            facade = AsyncStoreFacade(stores)
            with self._block(facade):
                yield facade

    async def __aenter__(self) -> AsyncDB:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if not self.closed:
            warnings.warn(
                f"{self!r} was garbage-collected while open: await db.close() (or use "
                "async with) to release its connections",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )


async def new(config: Config | None = None) -> AsyncDB:
    """Open the default SQLite database on the running loop (``data/llm-proxy.db`` unless
    ``config`` says)."""
    return await new_from_full_config(FullConfig.from_config(config or Config()))


async def new_from_full_config(config: FullConfig | None = None) -> AsyncDB:
    """Open the backend named by ``config.driver`` (default: :func:`config_from_env`) on
    the running loop, pending migrations first (run in a worker thread, off the loop).

    A backend with an ``async_factory`` runs natively; any other runs in worker threads of
    the ``AsyncDB``'s own (``max_open_conns`` of them).
    """
    loop = asyncio.get_running_loop()
    config = config_from_env() if config is None else config
    spec = get_backend_spec(config.driver)
    backend: AsyncBackend
    async_factory = spec.async_factory
    if async_factory is None:
        opened, spec, _ = await asyncio.to_thread(open_backend, config)
        backend = OffloadBackend(opened, threads=config.max_open_conns)
    else:
        cipher = Cipher.from_config(config)  # a bad key fails before anything opens
        migrated, spec, _ = await asyncio.to_thread(open_backend, config)  # migrations
        await asyncio.to_thread(migrated.close)
        backend = await async_factory(config)
        if cipher is not None:
            backend = AsyncEncryptingBackend(backend, cipher)
    return AsyncDB(backend, config=config, backend_spec=spec, loop=loop)
