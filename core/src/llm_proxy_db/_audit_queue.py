"""What both audit writers share, sans I/O: the queue and its counts, when a batch is due,
and how a batch is retried. The writers add the waiting and the storing (a thread and a
condition for ``AuditWriter``, a task and events for ``AsyncAuditWriter``)."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from typing import Final

from ._errors import DatabaseError, TransientError
from ._models import AuditEvent

__all__ = [
    "Attempts",
    "Queued",
    "WriterQueue",
    "check_event",
    "check_settings",
    "log_rejected",
    "spool_keys",
    "timeout",
]

_log = logging.getLogger("llm_proxy_db._audit_writer")  # where rejections have always been logged

BACKOFF_FIRST: Final = 0.02
"""Seconds before the first retry of a write that failed with ``TransientError``."""
BACKOFF_MAX: Final = 1.0
"""The longest wait between retries (the wait doubles from ``BACKOFF_FIRST``)."""


def check_settings(max_batch: int, max_delay: float, max_pending: int) -> None:
    """Raise ``ValueError`` (or ``TypeError``) for settings a writer cannot work with."""
    for name, value in (("max_batch", max_batch), ("max_pending", max_pending)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not isinstance(max_delay, int | float) or isinstance(max_delay, bool):
        raise TypeError(f"max_delay must be a number of seconds, got {type(max_delay).__name__}")
    if not 0 <= max_delay < float("inf"):
        raise ValueError(f"max_delay must be a finite number of seconds >= 0, got {max_delay}")


def check_event(event: object) -> AuditEvent:
    """``event`` if it is an ``AuditEvent``, else ``TypeError``."""
    if not isinstance(event, AuditEvent):
        raise TypeError(f"submit() takes an AuditEvent, got {type(event).__name__}")
    return event


def log_rejected(event: AuditEvent, exc: BaseException) -> None:
    """Log a rejected event by id: a library error's message (which never shows a
    secret), only the class of any other exception (whose text might)."""
    why = f"{type(exc).__name__}: {exc}" if isinstance(exc, DatabaseError) else type(exc).__name__
    _log.error("audit event %s rejected by the database, not stored: %s", event.id, why)


class Queued:
    """One submitted event waiting in a writer's queue."""

    __slots__ = ("event", "number", "seq", "submitted")

    def __init__(self, event: AuditEvent, number: int, seq: int | None, submitted: float) -> None:
        self.event = event
        self.number = number  # the writer's running count of submissions: for flush()
        self.seq = seq  # its key in the spool, if any
        self.submitted = submitted  # time.monotonic() at submission


def spool_keys(batch: Iterable[Queued]) -> list[int]:
    """The spool keys of the spooled events of ``batch``."""
    return [q.seq for q in batch if q.seq is not None]


def timeout(wait: float) -> float | None:
    """A wait of :meth:`WriterQueue._due` as a timeout argument (``inf``: None)."""
    return None if wait == math.inf else wait


class WriterQueue:
    """The queue and counts of an audit writer and the decisions on them; the writer
    holds its lock (if it has one) around every call."""

    def __init__(self, max_batch: int, max_delay: float, max_pending: int) -> None:
        check_settings(max_batch, max_delay, max_pending)
        self._max_batch = max_batch
        self._max_delay = float(max_delay)
        self._max_pending = max_pending
        self._queue: deque[Queued] = deque()
        self._in_flight: list[Queued] = []
        self._reserved = 0  # submits between their room check and their queueing
        self._submitted = 0  # numbers given to events (replayed ones included)
        self._done = 0  # every event numbered up to this one is stored or rejected
        self._urgent = 0  # flushes waiting: write without waiting for max_delay
        self._closing = False
        self._written = 0
        self._rejected = 0
        self._failed_batches = 0

    def _replay(self, spooled: Iterable[tuple[int, AuditEvent]]) -> None:
        """Queue what a spool held when opened, oldest first."""
        now = time.monotonic()
        for seq, event in spooled:
            self._submitted += 1
            self._queue.append(Queued(event, self._submitted, seq, now))

    def _queued(self, event: AuditEvent, seq: int | None) -> bool:
        """Queue ``event``; whether the queue reached a length the writer may wait for."""
        self._submitted += 1
        queue = self._queue
        queue.append(Queued(event, self._submitted, seq, time.monotonic()))
        return len(queue) in (1, self._max_batch)

    def _backlog(self) -> int:
        return len(self._queue) + len(self._in_flight) + self._reserved

    def _due(self, now: float) -> list[Queued] | float | None:
        """The batch to store now (taken off the queue, in flight from now on); else how
        many seconds to wait for a change (``inf``: no limit); None when the writer is
        closing and has nothing left to store. A batch is due when the oldest event has
        waited ``max_delay``, when ``max_batch`` are queued, when a flush waits, or when
        the writer is closing."""
        queue = self._queue
        if not queue:
            return None if self._closing and not self._reserved else math.inf
        wait = queue[0].submitted + self._max_delay - now
        if wait > 0 and len(queue) < self._max_batch and not self._urgent and not self._closing:
            return wait
        count = min(len(queue), self._max_batch)
        self._in_flight = [queue.popleft() for _ in range(count)]
        return self._in_flight

    def _settle(self, batch: list[Queued], written: int, rejected: int) -> None:
        """Count what the store of ``batch`` did; what it did not reach stays pending."""
        self._written += written
        self._rejected += rejected
        if written + rejected == len(batch):
            self._done = batch[-1].number
            self._in_flight = []
        else:  # abandoned mid-batch
            self._in_flight = self._in_flight[written + rejected :]

    @property
    def written(self) -> int:
        """Events the database stored (ids it already had included)."""
        return self._written

    @property
    def rejected(self) -> int:
        """Events the database refused even alone, logged by id and dropped."""
        return self._rejected

    @property
    def failed_batches(self) -> int:
        """Batch writes that raised (each attempt counted, transient failures included)."""
        return self._failed_batches

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

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<{type(self).__name__} {state} pending={self.pending} written={self._written}>"


Attempt = tuple[float, list[AuditEvent]]
"""Seconds to wait first, then the events to write."""


class Attempts:
    """The retry policy of one batch, sans I/O. Iterate for the attempts to make; report
    each write that raised with :meth:`failed` before the next. The whole batch first,
    retried (with a backoff doubling up to ``BACKOFF_MAX``) while it fails with
    ``TransientError``; after any other error, event by event (each retried likewise),
    an event failing otherwise rejected and logged by id. :attr:`written` and
    :attr:`rejected` count the outcome; ``queue.failed_batches`` counts each failed
    write of the whole batch."""

    def __init__(self, batch: list[Queued], queue: WriterQueue) -> None:
        self.written = 0
        self.rejected = 0
        self._events = [q.event for q in batch]
        self._queue = queue
        self._error: Exception | None = None

    def failed(self, exc: Exception) -> None:
        """The last attempt's write raised ``exc``."""
        self._error = exc

    def __iter__(self) -> Iterator[Attempt]:
        events = self._events
        if (yield from self._until_settled(events, whole=True)) is None:
            self.written = len(events)
            return
        for event in events:  # one bad event must not block the others
            if (error := (yield from self._until_settled([event], whole=False))) is None:
                self.written += 1
            else:
                log_rejected(event, error)
                self.rejected += 1

    def _until_settled(
        self, events: list[AuditEvent], *, whole: bool
    ) -> Generator[Attempt, None, Exception | None]:
        """Attempts at ``events`` until one does not fail transiently; its error, if any."""
        wait = 0.0
        while True:
            yield wait, events
            error, self._error = self._error, None
            if error is not None and whole:
                self._queue._failed_batches += 1
            if not isinstance(error, TransientError):
                return error
            wait = min(wait * 2, BACKOFF_MAX) if wait else BACKOFF_FIRST
