"""A blocking backend on an event loop: every call in a worker thread of its own.

``llm_proxy_db.aio`` uses :class:`OffloadBackend` for a backend whose ``BackendSpec`` has
no ``async_factory`` (the jsonfile example, a third party's): every plugin works with
``AsyncDB`` from day one. Each store call is one hop to a thread of the adapter's own
pool (never the loop's default executor, which the application shares), sized like the
backend's connection pool.

A transaction runs on a thread of its own (a blocking transaction belongs to the thread
that opened it), its calls one after another: the next call (and the block's end) waits
until the previous one has finished in its thread, also when the task awaiting it was
cancelled, so the backend never sees two calls of one transaction at once. A cancelled
block rolls back, after its in-flight call finished.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar

from ._delegation import AsyncForwardedStores, forwarding
from ._errors import DatabaseError
from ._protocols import AsyncStores, Backend, Stores

__all__ = ["OffloadBackend"]

T = TypeVar("T")


async def _finish(future: asyncio.Future[T]) -> T:
    """``await future``, and if this task is cancelled meanwhile, still wait for it to
    finish before the cancellation goes on (the thread's work cannot be taken back)."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


@forwarding("self._call(self._stores.{name}, {args})", protocol=Stores, awaiting=True)
class _OffloadStores(AsyncForwardedStores):
    """Blocking stores, every call in a worker thread."""

    __slots__ = ("_pool", "_stores")

    def __init__(self, stores: Stores, pool: ThreadPoolExecutor) -> None:
        self._stores = stores
        self._pool = pool

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))


@forwarding("self._call(self._stores.{name}, {args})", protocol=Stores, awaiting=True)
class _TransactionStores(_OffloadStores):
    """A transaction's stores: one call at a time, in order."""

    __slots__ = ("_last",)

    def __init__(self, stores: Stores, pool: ThreadPoolExecutor) -> None:
        super().__init__(stores, pool)
        self._last: asyncio.Future[Any] | None = None

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:  # type: ignore[override]
        await self.settle()
        future = super()._call(function, *args, **kwargs)
        self._last = future
        return await future

    async def settle(self) -> None:
        """Wait until the last call has finished in its thread (cancelled or not)."""
        last = self._last
        if last is not None and not last.done():
            await _finish(last)


class OffloadBackend(_OffloadStores):
    """``backend`` (blocking) as an ``AsyncBackend``, on ``threads`` worker threads."""

    __slots__ = ("_backend", "_blocks", "_closed")

    def __init__(self, backend: Backend, *, threads: int) -> None:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llm-proxy-db-offload")
        super().__init__(backend, pool)
        self._backend = backend
        self._closed = False
        self._blocks = asyncio.Semaphore(threads)

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        if self._closed:  # its threads are gone: say so, as a closed backend does
            raise DatabaseError("the database is closed")
        return super()._call(function, *args, **kwargs)

    @property
    def backend(self) -> Backend:
        """The blocking backend behind this adapter."""
        return self._backend

    async def health_check(self) -> None:
        await self._call(self._backend.health_check)

    async def check_integrity(self) -> bool:
        """The blocking backend's deep check in a worker thread; False when it has none."""
        check = getattr(self._backend, "check_integrity", None)
        if check is None:
            return False
        await self._call(check)
        return True

    async def close(self) -> None:
        """Close the backend in a worker thread, then end every worker thread.
        Idempotent."""
        if self._closed:
            return
        future = self._call(self._backend.close)
        self._closed = True
        try:
            await _finish(future)
        finally:
            await asyncio.to_thread(self._pool.shutdown)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncStores]:
        """The backend's transaction, every step of it (enter, calls, exit) on a thread of
        its own: a blocking transaction belongs to the thread that opened it, and a block
        waiting for a pool thread while the pool's threads wait for the block's lock
        would never end. At most ``threads`` blocks at once; the others wait on the loop."""
        if self._closed:
            raise DatabaseError("the database is closed")
        async with self._blocks:
            own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-proxy-db-offload-tx")
            try:
                async with _entered(self._backend.transaction(), own) as stores:
                    bound = _TransactionStores(stores, own)
                    try:
                        yield bound
                    finally:
                        await bound.settle()  # the in-flight call first: then end the block
            finally:
                own.shutdown(wait=False)  # its thread ends once idle (it is, by now)


def _run(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args))


@asynccontextmanager
async def _entered(
    manager: AbstractContextManager[T], pool: ThreadPoolExecutor
) -> AsyncIterator[T]:
    """``manager`` entered and left in ``pool``'s thread; a cancellation while it is being
    entered still leaves it, once entering has finished."""
    entering = _run(pool, manager.__enter__)
    try:
        value = await asyncio.shield(entering)
    except asyncio.CancelledError as exc:
        await asyncio.wait([entering])
        if not entering.cancelled() and entering.exception() is None:
            await _finish(_run(pool, manager.__exit__, type(exc), exc, exc.__traceback__))
        raise
    try:
        yield value
    except BaseException as exc:
        await _finish(_run(pool, manager.__exit__, type(exc), exc, exc.__traceback__))
        raise
    await _finish(_run(pool, manager.__exit__, None, None, None))
