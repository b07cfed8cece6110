"""``AsyncAuditWriter``: the ``AuditWriter`` on an event loop, a task instead of a thread.

The same contract as :mod:`._audit_writer` (batches, back-pressure, retries, the spool),
with ``submit``, ``flush`` and ``close`` as coroutines. The spool's blocking appends and
deletes run in one worker thread of the writer's own, never on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING

from ._audit_queue import Attempts, Queued, WriterQueue, check_event, spool_keys, timeout
from ._audit_writer import AuditSpool
from ._errors import DatabaseError, TransientError
from ._models import AuditEvent

if TYPE_CHECKING:
    from ._aio import AsyncDB

__all__ = ["AsyncAuditWriter"]

_log = logging.getLogger(__name__)


class AsyncAuditWriter(WriterQueue):
    """Stores submitted audit events in batches from a task of its own on the loop.

    Made by ``await db.audit_writer(...)``; as :class:`~llm_proxy_db.AuditWriter`, with
    :meth:`submit`, :meth:`flush` and :meth:`close` as coroutines. ``AsyncDB.close()``
    (hence ``aio.lifespan``'s exit) closes every writer still open first. Belongs to the
    loop of its ``AsyncDB``.
    """

    def __init__(
        self,
        db: AsyncDB,
        *,
        max_batch: int = 500,
        max_delay: float = 0.05,
        max_pending: int = 10_000,
        spool: AuditSpool | None = None,
        on_close: Callable[[AsyncAuditWriter], None] | None = None,
    ) -> None:
        super().__init__(max_batch, max_delay, max_pending)
        self._loop = asyncio.get_running_loop()
        self._db = db
        self._on_close = on_close
        self._changed = asyncio.Event()  # set and replaced on every change of state
        self._stopped = False
        self._spool = spool
        self._spool_thread: ThreadPoolExecutor | None = None
        if spool is not None:
            self._spool_thread = ThreadPoolExecutor(1, "llm-proxy-db audit spool")
            self._replay(spool.replayed)
        self._task = self._loop.create_task(self._run(), name="llm-proxy-db audit writer")

    # -- state changes (all on the loop, so no lock) -------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``ready()``; False if ``deadline`` (monotonic) passed first."""
        while not ready():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    def _check_loop(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise DatabaseError(
                "this audit writer belongs to another event loop (that of its AsyncDB)"
            )

    def _enqueue(self, event: AuditEvent, seq: int | None) -> None:
        if self._queued(event, seq) or self._urgent:  # what the task awaits
            self._notify()

    def _spooled(self, event: AuditEvent, future: asyncio.Future[int]) -> None:
        self._reserved -= 1
        if not future.cancelled() and future.exception() is None:
            self._enqueue(event, future.result())
        if not self._reserved and (self._urgent or self._closing):
            self._notify()

    def _in_spool_thread(self, call: Callable[[], object]) -> Awaitable[object]:
        assert self._spool_thread is not None
        return self._loop.run_in_executor(self._spool_thread, call)

    # -- the caller's side ---------------------------------------------------------------

    async def submit(self, event: AuditEvent, timeout: float | None = None) -> None:
        """Queue ``event`` for storage and return; with a spool, once it is durably
        appended there. With the backlog at ``max_pending``, wait up to ``timeout``
        seconds (None: as long as it takes) for room, then raise ``TransientError``."""
        check_event(event)
        self._check_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        room = await self._until(
            lambda: self._closing or self._backlog() < self._max_pending, deadline
        )
        if self._closing:
            raise DatabaseError("the audit writer is closed")
        if not room:
            raise TransientError(
                f"the audit writer's backlog is full ({self._max_pending} events pending) "
                f"and did not drain within {timeout} s; the event was not queued"
            )
        if self._spool is None:
            self._enqueue(event, None)
            return
        self._reserved += 1
        spool = self._spool
        assert self._spool_thread is not None
        future = self._loop.run_in_executor(self._spool_thread, spool.append, event)
        future.add_done_callback(lambda done: self._spooled(event, done))
        await asyncio.shield(future)  # cancelled or not, an appended event is queued

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event submitted so far is stored (or rejected); after
        ``timeout`` seconds (None: as long as it takes) raise ``TransientError``."""
        self._check_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._urgent += 1
        self._notify()
        try:
            await self._until(lambda: not self._reserved, None)  # appends under way: short
            target = self._submitted
            if not await self._until(lambda: self._done >= target or self._task.done(), deadline):
                raise TransientError(
                    f"the audit writer has {target - self._done} events not stored after "
                    f"{timeout} s (the database is slow or failing)"
                )
            if self._done < target:
                raise DatabaseError("the audit writer was stopped before storing all")
        finally:
            self._urgent -= 1

    async def close(self, timeout: float | None = None) -> None:
        """Refuse further submits, store everything pending and stop the task.
        Idempotent. After ``timeout`` seconds (None: as long as it takes) it stops anyway
        and raises ``TransientError`` naming how many events were not stored (with a spool,
        they stay there for the next writer on it)."""
        self._check_loop()
        if self._stopped:
            return
        self._closing = True
        self._notify()
        try:
            if not self._task.done():
                await self.flush(timeout)
        except TransientError as exc:
            left = self._backlog()
            await self._stop()
            kept = "kept in the spool" if self._spool is not None else "lost"
            raise TransientError(f"{exc}: writer stopped, {left} events {kept}") from None
        await self._stop()

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if not self._task.done():
            self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        if self._spool is not None and self._spool_thread is not None:
            await self._in_spool_thread(self._spool.close)
            self._spool_thread.shutdown(wait=True)  # idle by now: returns at once
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    async def __aenter__(self) -> AsyncAuditWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the task ------------------------------------------------------------------------

    async def _next_batch(self) -> list[Queued] | None:
        while isinstance(due := self._due(time.monotonic()), float):
            with suppress(TimeoutError):  # a full batch, a flush or close wakes it early
                await asyncio.wait_for(self._changed.wait(), timeout(due))
        return due

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                written, rejected = await self._store(batch)
                if self._spool is not None:
                    keys = spool_keys(batch)
                    await self._in_spool_thread(functools.partial(self._spool.delete, keys))
                self._settle(batch, written, rejected)
                self._notify()
        except asyncio.CancelledError:
            if self.pending and not self._closing:
                _log.error(
                    "audit writer cancelled with %d events not stored (%s); close() it "
                    "before the loop ends",
                    self.pending,
                    "kept in its spool" if self._spool is not None else "lost",
                )
            raise

    async def _store(self, batch: list[Queued]) -> tuple[int, int]:
        attempts = Attempts(batch, self)
        for wait, events in attempts:
            if wait:
                await asyncio.sleep(wait)
            try:
                await self._db.create_audit_events(events)
            except Exception as exc:
                attempts.failed(exc)
        return attempts.written, attempts.rejected
