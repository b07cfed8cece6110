"""A small thread-safe pool of DB-API connections, bounded by ``max_open_conns``.

What differs between drivers is passed in: how to open a connection, the driver's error
class, and ``reset(conn)``, which makes a returned connection ready for the next caller
(rolls back a transaction left open) or says it cannot be reused. SQLite and MySQL use it.

Fork-safe: in a child of ``os.fork()`` the pool forgets the parent's connections (never
using or closing them: closing a SQLite connection inherited across ``fork()`` may
checkpoint or delete the parent's WAL; closing a server connection would end the
parent's session on the shared socket) and opens fresh ones on the child's first call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._errors import DatabaseError, TransientError

__all__ = ["DbApiPool"]

_log = logging.getLogger(__name__)

C = TypeVar("C")

_POOLS: weakref.WeakSet[DbApiPool[Any]] = weakref.WeakSet()
_INHERITED: list[object] = []
"""The parent's connections, in a forked child: kept referenced, so that the garbage
collector never closes them there."""


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reusable(conn: Any) -> bool:
    return True


class DbApiPool(Generic[C]):
    """Hands out at most ``max_open`` connections, keeps at most ``max_idle`` idle ones
        (newest first), and retires connections older than ``max_lifetime`` seconds.

        ``reset(conn)`` runs on every connection returned: it rolls back what a caller left
        open and returns whether ``conn`` may be reused (a ``driver_error`` it raises means
        no). ``name`` names the database in messages (``"SQLite"``); ``log`` is the logger
    (the backend's, so that its records carry its name). ``shared``: ``connect()``
        returns the same single connection every time (SQLite ``:memory:``): it is kept.
    """

    def __init__(
        self,
        connect: Callable[[], C],
        *,
        max_open: int,
        max_idle: int,
        max_lifetime: float,
        timeout: float,
        driver_error: type[Exception],
        reset: Callable[[C], bool] = _reusable,
        name: str = "database",
        shared: bool = False,
        log: logging.Logger | None = None,
    ) -> None:
        self._connect = connect
        self._max_open = max_open
        self._max_idle = max_idle
        self.max_lifetime = max_lifetime
        """Seconds a connection may live; a backend may shorten it once it knows the
        server's own limit (MySQL's ``wait_timeout``)."""
        self._timeout = timeout
        self._driver_error = driver_error
        self._reset = reset
        self._name = name
        self._shared = shared
        self._log = log or _log
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._idle: list[C] = []
        self._opened: dict[int, float] = {}  # id(conn) -> time.monotonic() of its opening
        self._open = 0  # connections lent out or idle
        self._waiting = 0
        self._closed = False
        _POOLS.add(self)

    def after_fork(self) -> None:
        """In a forked child (called by ``os.register_at_fork``): forget the parent's
        connections, lent or idle, without touching them; the next call opens a new one.

        A ``shared`` pool keeps its one connection (SQLite ``:memory:``: the child has its
        own copy of that database, and no file is shared).
        """
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._released = threading.Condition(self._lock)
        self._waiting = 0
        if self._shared:
            self._open = len(self._idle)  # lent by a thread the child does not have: free
            return
        _INHERITED.extend(self._idle)
        self._idle = []
        self._opened = {}  # a connection lent before the fork is not ours when returned
        self._open = 0

    @property
    def max_idle(self) -> int:
        """How many connections may stay open unused."""
        return min(self._max_idle, self._max_open)

    def expires(self, conn: C) -> float:
        """When ``conn`` passes ``max_lifetime`` (``time.monotonic()`` seconds)."""
        return self._opened.get(id(conn), 0.0) + self.max_lifetime

    def connection(self) -> _Checkout[C]:
        """A context manager lending one connection."""
        return _Checkout(self)

    def acquire(self) -> C:
        """A connection: an idle one, or a new one while fewer than ``max_open`` are open;
        else wait up to ``timeout`` for one (then ``TransientError``)."""
        retired: list[C] = []
        try:
            with self._lock:
                if self._closed:
                    raise DatabaseError("the database is closed")
                conn = self._take_idle(retired)
                if conn is not None:
                    return conn
                if self._open >= self._max_open:
                    self._wait_for_room()
                    conn = self._take_idle(retired)
                    if conn is not None:
                        return conn
                self._open += 1
        finally:
            for old in retired:
                self._close(old)
        try:
            conn = self._connect()
        except BaseException:
            self._forget_one()
            raise
        self._opened[id(conn)] = time.monotonic()
        self._log.debug(
            "opened a %s connection (%d of at most %d open)",
            self._name,
            self._open,
            self._max_open,
        )
        return conn

    def _take_idle(self, retired: list[C]) -> C | None:
        # Called with the lock held: the newest idle connection still within max_lifetime;
        # older ones go to ``retired`` (closed by the caller, outside the lock), never lent.
        if not self._idle:
            return None
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            opened = self._opened.get(id(conn), 0.0)
            if now - opened < self.max_lifetime:
                return conn
            retired.append(conn)
            self._open -= 1
            self._log.debug(
                "retiring a %s connection open for %.0fs (max_lifetime %gs)",
                self._name,
                now - opened,
                self.max_lifetime,
            )
        if self._waiting:
            self._released.notify_all()  # room was made for more than this caller
        return None

    def _wait_for_room(self) -> None:
        # Called with the lock held; returns when a connection is idle or may be opened.
        deadline = time.monotonic() + self._timeout
        self._waiting += 1
        self._log.debug(
            "all %d %s connections are busy: waiting up to %gs for one",
            self._max_open,
            self._name,
            self._timeout,
        )
        try:
            while not self._idle and self._open >= self._max_open:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._released.wait(remaining):
                    self._log.warning(
                        "all %d %s connections stayed busy for %gs: giving up",
                        self._max_open,
                        self._name,
                        self._timeout,
                    )
                    raise TransientError(
                        f"no {self._name} connection free within {self._timeout:g} s: "
                        f"{self._open} in use (max_open_conns {self._max_open}); retry, "
                        "raise DATABASE_POOL_SIZE or shorten transactions"
                    )
                if self._closed:
                    raise DatabaseError("the database is closed")
        finally:
            self._waiting -= 1

    def release(self, conn: C) -> None:
        """Take ``conn`` back: reset and kept idle, or closed (past ``max_lifetime``, not
        reusable, enough idle already, or the pool closed)."""
        opened = self._opened.get(id(conn))
        if opened is None and not self._shared:
            _INHERITED.append(conn)  # lent before a fork, returned in the child: not ours
            return
        failed: str | None = None
        try:
            reusable = self._reset(conn)
            keep = reusable and time.monotonic() - (opened or 0.0) < self.max_lifetime
        except self._driver_error as exc:
            reusable = keep = False
            failed = type(exc).__name__  # only the type: the text is the driver's
        with self._lock:
            if keep and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                if self._waiting:
                    self._released.notify()
                return
            closed = self._closed
        if failed is not None:
            self._log.warning(
                "discarding a %s connection: its reset failed (%s)", self._name, failed
            )
        elif not reusable:
            self._log.debug("discarding a %s connection that cannot be reused", self._name)
        elif not keep:
            self._log.debug("retiring a released %s connection past max_lifetime", self._name)
        else:
            self._log.debug(
                "closing a released %s connection: %s",
                self._name,
                "the pool is closed" if closed else "max_idle connections are idle already",
            )
        self._close(conn)
        self._forget_one()

    give_back = release
    """After a failure the same checks apply: reset, or discarded if that fails."""

    def check(self, test: Callable[[C], object]) -> int:
        """Run ``test(conn)`` on every idle connection (outside the lock) and close those
        for which it raises a driver error (after a lost connection: the server may have
        dropped the others too). Returns how many were closed."""
        with self._lock:
            idle, self._idle = self._idle, []
        good: list[C] = []
        bad = 0
        for conn in idle:
            try:
                test(conn)
            except self._driver_error:
                bad += 1
                self._close(conn)
                self._forget_one()
            else:
                good.append(conn)
        with self._lock:
            if self._closed:
                extra, good = good, []
            else:
                extra = []
                self._idle[:0] = good  # older than any released meanwhile
                if self._waiting and good:
                    self._released.notify_all()
        for conn in extra:
            self._close(conn)
            self._forget_one()
        if bad:
            self._log.info("closed %d idle %s connection(s) that failed a check", bad, self._name)
        return bad

    def _close(self, conn: C) -> None:
        self._opened.pop(id(conn), None)
        with suppress(self._driver_error):  # a broken connection may refuse to close
            conn.close()  # type: ignore[attr-defined]

    def _forget_one(self) -> None:
        with self._lock:
            self._open -= 1
            if self._waiting:
                self._released.notify()

    def close(self) -> None:
        """Close the idle connections and refuse new loans; one lent is closed when it
        comes back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._released.notify_all()
        for conn in idle:
            self._close(conn)


class _Checkout(Generic[C]):
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: DbApiPool[C]) -> None:
        self._pool = pool

    def __enter__(self) -> C:
        self._conn = self._pool.acquire()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.release(self._conn)
