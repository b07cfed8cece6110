"""``AuditWriter``: audit events stored in batches by a background thread, off the hot path.

``submit`` queues an event and returns; a thread of the writer's own stores the queue in
batches (``create_audit_events``, which skips ids already stored). Back-pressure, never
silent loss: a full backlog makes ``submit`` wait, then raise ``TransientError``. A batch
failing with ``TransientError`` is retried in order; one failing otherwise is retried
event by event, and an event that still fails is counted in ``rejected`` and logged by
id. With ``spool_path``, each event is first appended to a local SQLite file (durably) and
deleted from it only once the database has stored it; a writer opened on the same file
replays what a killed process left there.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ._converter import converter
from ._errors import DatabaseError, TransientError
from ._models import AuditEvent

if TYPE_CHECKING:
    from ._db import DB

__all__ = ["AuditSpool", "AuditWriter", "Queued", "check_settings", "log_rejected"]

_log = logging.getLogger(__name__)

BACKOFF_FIRST: Final = 0.02
"""Seconds before the first retry of a batch that failed with ``TransientError``."""
BACKOFF_MAX: Final = 1.0
"""The longest wait between retries (the wait doubles from ``BACKOFF_FIRST``)."""

ABANDON_JOIN: Final = 1.0
"""Seconds ``close(timeout)`` waits for the thread after giving up on the backlog."""
AT_EXIT_TIMEOUT: Final = 10.0
"""Seconds each writer still open at interpreter exit gets to store its backlog."""

_open_spools: set[str] = set()
_open_spools_lock: Final = threading.Lock()
_open_writers: set[AuditWriter] = set()
_open_writers_lock: Final = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """Store what writers nobody closed still hold (their threads are daemons)."""
    with _open_writers_lock:
        writers = list(_open_writers)
    for writer in writers:
        try:
            writer.close(AT_EXIT_TIMEOUT)
        except DatabaseError as exc:
            _log.error("at exit, %r: %s", writer, exc)


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


def log_rejected(event: AuditEvent, exc: BaseException) -> None:
    """Log a rejected event by id: a library error's message (which never shows a
    secret), only the class of any other exception (whose text might)."""
    why = f"{type(exc).__name__}: {exc}" if isinstance(exc, DatabaseError) else type(exc).__name__
    _log.error("audit event %s rejected by the database, not stored: %s", event.id, why)


class AuditSpool:
    """The local SQLite file a spooled writer appends to first (WAL, ``synchronous=FULL``:
    an append that returned survives a crash of the process and of the machine)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import sqlite3  # here: importing the package must stay cheap (no driver loaded)

        self._error = sqlite3.Error
        self.path = os.path.abspath(os.fspath(path))
        with _open_spools_lock:
            if self.path in _open_spools:
                raise DatabaseError(
                    f"the audit spool {self.path} is already used by an open writer of this "
                    "process: one writer per spool file"
                )
            _open_spools.add(self.path)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS spooled_audit_events "
                "(seq INTEGER PRIMARY KEY, event TEXT NOT NULL)"
            )
        except sqlite3.Error as exc:
            self._release()
            raise DatabaseError(f"cannot open the audit spool {self.path}: {exc}") from None
        except BaseException:
            self._release()
            raise
        self._lock = threading.Lock()
        self.replayed = self.replay()
        """What the spool held when opened: events a previous writer did not store."""

    def _release(self) -> None:
        with _open_spools_lock:
            _open_spools.discard(self.path)

    def replay(self) -> list[tuple[int, AuditEvent]]:
        """What the spool holds, oldest first (events a previous writer did not store)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, event FROM spooled_audit_events ORDER BY seq"
            ).fetchall()
        return [(seq, converter.structure(json.loads(text), AuditEvent)) for seq, text in rows]

    def append(self, event: AuditEvent) -> int:
        """Append ``event`` durably; its key in the spool."""
        text = json.dumps(converter.unstructure(event), separators=(",", ":"))
        try:
            with self._lock:
                cursor = self._conn.execute(
                    "INSERT INTO spooled_audit_events (event) VALUES (?)", (text,)
                )
        except self._error as exc:
            raise TransientError(f"cannot append to the audit spool {self.path}: {exc}") from None
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget the events stored in the database (a failure leaves them to replay)."""
        rows = [(seq,) for seq in seqs]
        if not rows:
            return
        try:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany("DELETE FROM spooled_audit_events WHERE seq = ?", rows)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
        except self._error as exc:  # stored anyway: a replay skips their ids
            _log.warning("cannot delete stored events from the audit spool %s: %s", self.path, exc)

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._conn.close()
        self._release()


class Queued:
    """One submitted event waiting in a writer's queue."""

    __slots__ = ("event", "number", "seq", "submitted")

    def __init__(self, event: AuditEvent, number: int, seq: int | None, submitted: float) -> None:
        self.event = event
        self.number = number  # the writer's running count of submissions: for flush()
        self.seq = seq  # its key in the spool, if any
        self.submitted = submitted  # time.monotonic() at submission


def check_event(event: object) -> AuditEvent:
    """``event`` if it is an ``AuditEvent``, else ``TypeError``."""
    if not isinstance(event, AuditEvent):
        raise TypeError(f"submit() takes an AuditEvent, got {type(event).__name__}")
    return event


class WriterCounts:
    """What both audit writers count (their ``written``, ``rejected``, ``failed_batches``)."""

    _written: int
    _rejected: int
    _failed_batches: int

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


class AuditWriter(WriterCounts):
    """Stores submitted audit events in batches from a background thread of its own.

    Made by :meth:`DB.audit_writer`; :meth:`submit` returns at once while the backlog is
    under ``max_pending``; events are stored in batches of at most ``max_batch``, at most
    ``max_delay`` seconds after submission. :meth:`flush` waits until everything submitted
    is stored, :meth:`close` flushes and stops; ``DB.close()`` closes every writer still
    open first. Safe to share between threads.
    """

    def __init__(
        self,
        db: DB,
        *,
        max_batch: int = 500,
        max_delay: float = 0.05,
        max_pending: int = 10_000,
        spool_path: str | os.PathLike[str] | None = None,
        on_close: Callable[[AuditWriter], None] | None = None,
    ) -> None:
        check_settings(max_batch, max_delay, max_pending)
        self._db = db
        self._max_batch = max_batch
        self._max_delay = float(max_delay)
        self._max_pending = max_pending
        self._on_close = on_close
        self._cond = threading.Condition()
        self._queue: deque[Queued] = deque()
        self._in_flight: list[Queued] = []
        self._reserved = 0  # submits between their room check and their queueing
        self._submitted = 0  # numbers given to events (replayed ones included)
        self._done = 0  # every event numbered up to this one is stored or rejected
        self._urgent = 0  # flushes waiting: write without waiting for max_delay
        self._closing = False
        self._abandon = False  # stop without waiting for the backlog
        self._stopped = False
        self._written = 0
        self._rejected = 0
        self._failed_batches = 0
        self._spool = None if spool_path is None else AuditSpool(spool_path)
        if self._spool is not None:
            now = time.monotonic()
            for seq, event in self._spool.replayed:
                self._submitted += 1
                self._queue.append(Queued(event, self._submitted, seq, now))
        self._thread = threading.Thread(
            target=self._run, name=f"llm-proxy-db audit writer {id(self):x}", daemon=True
        )
        with _open_writers_lock:
            _open_writers.add(self)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------

    def submit(self, event: AuditEvent, timeout: float | None = None) -> None:
        """Queue ``event`` for storage and return; with a spool, once it is durably
        appended there. With the backlog at ``max_pending``, wait up to ``timeout``
        seconds (None: as long as it takes) for room, then raise ``TransientError``."""
        check_event(event)
        if self._spool is None:  # the common case: room checked and event queued at once
            with self._cond:
                if not self._closing and self._backlog() < self._max_pending:
                    self._enqueue(event, None)
                    return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closing:
                    raise DatabaseError("the audit writer is closed")
                if self._backlog() < self._max_pending:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TransientError(
                        f"the audit writer's backlog is full ({self._max_pending} events "
                        f"pending) and did not drain within {timeout} s; the event was not "
                        "queued"
                    )
                self._cond.wait(left)
            self._reserved += 1
        seq = None
        try:
            if self._spool is not None:
                seq = self._spool.append(event)
        finally:
            with self._cond:
                self._reserved -= 1
                if seq is not None or self._spool is None:
                    self._enqueue(event, seq)
                elif not self._reserved and (self._urgent or self._closing):
                    self._cond.notify_all()  # a flush may wait for this reservation

    def _enqueue(self, event: AuditEvent, seq: int | None) -> None:
        """Queue ``event`` (the condition held) and wake the thread if it may wait for it."""
        self._submitted += 1
        queue = self._queue
        queue.append(Queued(event, self._submitted, seq, time.monotonic()))
        if (
            len(queue) in (1, self._max_batch)  # the thread may wait for either
            or (not self._reserved and (self._urgent or self._closing))
        ):
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event submitted so far is stored (or rejected); after
        ``timeout`` seconds (None: as long as it takes) raise ``TransientError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._reserved:  # a submit in the middle of its spool append
                    self._cond.wait()
                target = self._submitted
                while self._done < target:
                    if self._abandon:
                        raise DatabaseError("the audit writer was stopped before storing all")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TransientError(
                            f"the audit writer has {target - self._done} events not stored "
                            f"after {timeout} s (the database is slow or failing)"
                        )
                    self._cond.wait(left)
            finally:
                self._urgent -= 1

    def close(self, timeout: float | None = None) -> None:
        """Refuse further submits, store everything pending and stop the thread.
        Idempotent. After ``timeout`` seconds (None: as long as it takes) it stops anyway
        and raises ``TransientError`` naming how many events were not stored (with a spool,
        they stay there for the next writer on it)."""
        with self._cond:
            if self._stopped:
                return
            self._closing = True
            self._cond.notify_all()
        try:
            if self._thread.is_alive():
                self.flush(timeout)
        except TransientError as exc:
            with self._cond:
                self._abandon = True
                left = self._backlog()
                self._cond.notify_all()
            self._stop(ABANDON_JOIN)
            kept = "kept in the spool" if self._spool is not None else "lost"
            raise TransientError(f"{exc}: writer stopped, {left} events {kept}") from None
        self._stop(None)

    def _stop(self, join: float | None) -> None:
        with self._cond:
            if self._stopped:
                return
            self._stopped = self._abandon = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(join)  # abandoned: a call hung in the database is left behind
        with _open_writers_lock:
            _open_writers.discard(self)
        if self._spool is not None:
            self._spool.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def _backlog(self) -> int:
        return len(self._queue) + len(self._in_flight) + self._reserved

    @property
    def pending(self) -> int:
        """Events submitted (or replayed from the spool) and not yet stored or rejected."""
        with self._cond:
            return len(self._queue) + len(self._in_flight)

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event was submitted; None when none is."""
        with self._cond:
            first = self._in_flight[0] if self._in_flight else (self._queue or [None])[0]
            return None if first is None else time.monotonic() - first.submitted

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<AuditWriter {state} pending={self.pending} written={self._written}>"

    # -- the thread ----------------------------------------------------------------------

    def _next_batch(self) -> list[Queued] | None:
        with self._cond:
            while not self._abandon:
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
                    self._cond.wait(wait)
                elif self._closing and not self._reserved:
                    return None
                else:
                    self._cond.wait()
            return None

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless abandoned; whether to go on."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._abandon and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return not self._abandon

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            written, rejected = self._store(batch)
            if self._spool is not None:
                self._spool.delete(q.seq for q in batch[: written + rejected] if q.seq is not None)
            with self._cond:
                self._written += written
                self._rejected += rejected
                if written + rejected == len(batch):
                    self._done = batch[-1].number
                    self._in_flight = []
                else:  # abandoned mid-batch: what is left stays pending
                    self._in_flight = self._in_flight[written + rejected :]
                self._cond.notify_all()

    def _store(self, batch: list[Queued]) -> tuple[int, int]:
        """Store ``batch``; how many events were stored and rejected (fewer than the batch
        only if the writer was abandoned meanwhile)."""
        events = [q.event for q in batch]
        backoff = BACKOFF_FIRST
        while True:
            try:
                self._db.create_audit_events(events)
                return len(events), 0
            except TransientError:
                self._failed_batches += 1
                if not self._pause(backoff):
                    return 0, 0
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # one bad event must not block the others
                self._failed_batches += 1
                break
        written = rejected = 0
        for event in events:
            backoff = BACKOFF_FIRST
            while True:
                try:
                    self._db.create_audit_events([event])
                    written += 1
                    break
                except TransientError:
                    if not self._pause(backoff):
                        return written, rejected
                    backoff = min(backoff * 2, BACKOFF_MAX)
                except Exception as exc:
                    log_rejected(event, exc)
                    rejected += 1
                    break
        return written, rejected
