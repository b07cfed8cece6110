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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ._audit_queue import Attempts, Queued, WriterQueue, check_event, spool_keys, timeout
from ._converter import converter
from ._errors import DatabaseError, TransientError
from ._models import AuditEvent

if TYPE_CHECKING:
    from ._db import DB

__all__ = ["AuditSpool", "AuditWriter"]

_log = logging.getLogger(__name__)

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


class AuditWriter(WriterQueue):
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
        super().__init__(max_batch, max_delay, max_pending)
        self._db = db
        self._on_close = on_close
        self._cond = threading.Condition()
        self._abandon = False  # stop without waiting for the backlog
        self._stopped = False
        self._spool = None if spool_path is None else AuditSpool(spool_path)
        if self._spool is not None:
            self._replay(self._spool.replayed)
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
        if self._queued(event, seq) or (not self._reserved and (self._urgent or self._closing)):
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

    @property
    def pending(self) -> int:
        """Events submitted (or replayed from the spool) and not yet stored or rejected."""
        with self._cond:
            return super().pending

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event was submitted; None when none is."""
        with self._cond:
            return super().oldest_pending_age

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the thread ----------------------------------------------------------------------

    def _next_batch(self) -> list[Queued] | None:
        with self._cond:
            while not self._abandon:
                due = self._due(time.monotonic())
                if not isinstance(due, float):
                    return due
                self._cond.wait(timeout(due))  # a full batch, a flush or close wakes it early
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
                self._spool.delete(spool_keys(batch[: written + rejected]))
            with self._cond:
                self._settle(batch, written, rejected)
                self._cond.notify_all()

    def _store(self, batch: list[Queued]) -> tuple[int, int]:
        """Store ``batch``; how many events were stored and rejected (fewer than the batch
        only if the writer was abandoned meanwhile)."""
        attempts = Attempts(batch, self)
        for wait, events in attempts:
            if wait and not self._pause(wait):
                break
            try:
                self._db.create_audit_events(events)
            except Exception as exc:
                attempts.failed(exc)
        return attempts.written, attempts.rejected
