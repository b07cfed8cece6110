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
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING

from ._audit_writer import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    AuditSpool,
    Queued,
    WriterCounts,
    check_event,
    check_settings,
    log_rejected,
)
from ._errors import DatabaseError, TransientError
from ._models import AuditEvent

if TYPE_CHECKING:
    from ._aio import AsyncDB

__all__ = ["AsyncAuditWriter"]

_log = logging.getLogger(__name__)


class AsyncAuditWriter(WriterCounts):
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
        check_settings(max_batch, max_delay, max_pending)
        self._loop = asyncio.get_running_loop()
        self._db = db
        self._max_batch = max_batch
        self._max_delay = float(max_delay)
        self._max_pending = max_pending
        self._on_close = on_close
        self._changed = asyncio.Event()  # set and replaced on every change of state
        self._queue: deque[Queued] = deque()
        self._in_flight: list[Queued] = []
        self._reserved = 0
        self._submitted = 0
        self._done = 0
        self._urgent = 0
        self._closing = False
        self._stopped = False
        self._written = 0
        self._rejected = 0
        self._failed_batches = 0
        self._spool = spool
        self._spool_thread: ThreadPoolExecutor | None = None
        if spool is not None:
            self._spool_thread = ThreadPoolExecutor(1, "llm-proxy-db audit spool")
            now = time.monotonic()
            for seq, event in spool.replayed:
                self._submitted += 1
                self._queue.append(Queued(event, self._submitted, seq, now))
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

    def _backlog(self) -> int:
        return len(self._queue) + len(self._in_flight) + self._reserved

    def _enqueue(self, event: AuditEvent, seq: int | None) -> None:
        self._submitted += 1
        self._queue.append(Queued(event, self._submitted, seq, time.monotonic()))
        if len(self._queue) in (1, self._max_batch) or self._urgent:  # what the task awaits
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

    @property
    def pending(self) -> int:
        """Events submitted (or replayed from the spool) and not yet stored or rejected."""
        return len(self._queue) + len(self._in_flight)

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event was submitted; None when none is."""
        first = self._in_flight[0] if self._in_flight else (self._queue or [None])[0]
        return None if first is None else time.monotonic() - first.submitted

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing

    async def __aenter__(self) -> AsyncAuditWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<AsyncAuditWriter {state} pending={self.pending} written={self._written}>"

    # -- the task ------------------------------------------------------------------------

    async def _next_batch(self) -> list[Queued] | None:
        while True:
            if self._queue:
                wait = self._queue[0].submitted + self._max_delay - time.monotonic()
                if (
                    wait <= 0
                    or len(self._queue) >= self._max_batch
                    or self._urgent
                    or self._closing
                ):
                    count = min(len(self._queue), self._max_batch)
                    self._in_flight = [self._queue.popleft() for _ in range(count)]
                    return self._in_flight
                with suppress(TimeoutError):  # a full batch or a flush wakes it early
                    await asyncio.wait_for(self._changed.wait(), wait)
            elif self._closing and not self._reserved:
                return None
            else:
                await self._changed.wait()

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                written, rejected = await self._store(batch)
                if self._spool is not None:
                    seqs = [q.seq for q in batch if q.seq is not None]
                    await self._in_spool_thread(functools.partial(self._spool.delete, seqs))
                self._written += written
                self._rejected += rejected
                self._done = batch[-1].number
                self._in_flight = []
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
        events = [q.event for q in batch]
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._db.create_audit_events(events)
                return len(events), 0
            except TransientError:
                self._failed_batches += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # one bad event must not block the others
                self._failed_batches += 1
                break
        written = rejected = 0
        for event in events:
            backoff = BACKOFF_FIRST
            while True:
                try:
                    await self._db.create_audit_events([event])
                    written += 1
                    break
                except TransientError:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                except Exception as exc:
                    log_rejected(event, exc)
                    rejected += 1
                    break
        return written, rejected
