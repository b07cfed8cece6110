"""A small thread-safe pool of sqlite3 connections, bounded by ``max_open_conns``.

Fork-safe: in a child of ``os.fork()`` the pool forgets the parent's connections (never
using or closing them: closing a SQLite connection inherited across ``fork()`` may
checkpoint or delete the parent's WAL) and opens fresh ones on the child's first call.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType

from llm_proxy_db import DatabaseError, TransientError

__all__ = ["Connection", "ConnectionPool"]

_log = logging.getLogger(__name__)


class Connection(sqlite3.Connection):
    """A sqlite3 connection that remembers when it was opened, and by which process
    generation of its pool (see :meth:`ConnectionPool.after_fork`)."""

    opened_at: float = 0.0
    generation: int = 0
    deadline: float = math.inf
    """When the running statement passes ``statement_timeout`` (``inf``: no statement
    running under one)."""

    def past_deadline(self) -> bool:
        """The progress handler: a true value makes SQLite interrupt the statement."""
        return time.monotonic() > self.deadline


_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_INHERITED: list[Connection] = []
"""The parent's connections, in a forked child: kept referenced, so that the garbage
collector never closes them there."""


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionPool:
    """Hands out at most ``max_open`` connections, keeps at most ``max_idle`` idle ones
    (newest first), and retires connections older than ``max_lifetime`` seconds."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        max_open: int,
        max_idle: int,
        max_lifetime: float,
        timeout: float,
        shared: bool = False,
    ) -> None:
        self._connect = connect
        self._max_open = max_open
        self._max_idle = max_idle
        self._max_lifetime = max_lifetime
        self._timeout = timeout
        self._shared = shared  # connect() returns one connection (:memory:): keep it
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._idle: list[Connection] = []
        self._open = 0  # connections lent out or idle
        self._waiting = 0
        self._closed = False
        self._generation = 0
        _POOLS.add(self)

    def after_fork(self) -> None:
        """In a forked child (called by ``os.register_at_fork``): forget the parent's
        connections, lent or idle, without touching them; the next call opens a new one.

        A ``:memory:`` pool keeps its one connection: the child has its own copy of that
        database, and no file is shared.
        """
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._released = threading.Condition(self._lock)
        self._waiting = 0
        if self._shared:
            self._open = len(self._idle)  # lent by a thread the child does not have: free
            return
        self._generation += 1
        _INHERITED.extend(self._idle)
        self._idle = []
        self._open = 0

    @property
    def max_idle(self) -> int:
        """How many connections may stay open unused."""
        return min(self._max_idle, self._max_open)

    def expires(self, conn: Connection) -> float:
        """When ``conn`` passes ``max_lifetime`` (``time.monotonic()`` seconds)."""
        return conn.opened_at + self._max_lifetime

    def connection(self) -> _Checkout:
        """A context manager lending one connection."""
        return _Checkout(self)

    def acquire(self) -> Connection:
        retired: list[Connection] = []
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
                old.close()
        try:
            conn = self._connect()
        except BaseException:
            self._forget_one()
            raise
        conn.opened_at = time.monotonic()
        conn.generation = self._generation
        _log.debug("opened a SQLite connection (%d of at most %d open)", self._open, self._max_open)
        return conn

    def _take_idle(self, retired: list[Connection]) -> Connection | None:
        # Called with the lock held: the newest idle connection still within max_lifetime;
        # older ones go to ``retired`` (closed by the caller, outside the lock), never lent.
        if not self._idle:
            return None
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.opened_at < self._max_lifetime:
                return conn
            retired.append(conn)
            self._open -= 1
            _log.debug(
                "retiring a SQLite connection open for %.0fs (max_lifetime %gs)",
                now - conn.opened_at,
                self._max_lifetime,
            )
        if self._waiting:
            self._released.notify_all()  # room was made for more than this caller
        return None

    def _wait_for_room(self) -> None:
        # Called with the lock held; returns when a connection is idle or may be opened.
        deadline = time.monotonic() + self._timeout
        self._waiting += 1
        _log.debug(
            "all %d SQLite connections are busy: waiting up to %gs for one",
            self._max_open,
            self._timeout,
        )
        try:
            while not self._idle and self._open >= self._max_open:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._released.wait(remaining):
                    _log.warning(
                        "all %d SQLite connections stayed busy for %gs: giving up",
                        self._max_open,
                        self._timeout,
                    )
                    raise TransientError(
                        f"no SQLite connection free within {self._timeout:g} s: "
                        f"{self._open} in use (max_open_conns {self._max_open}); retry, "
                        "raise DATABASE_POOL_SIZE or shorten transactions"
                    )
                if self._closed:
                    raise DatabaseError("the database is closed")
        finally:
            self._waiting -= 1

    def release(self, conn: Connection) -> None:
        if conn.generation != self._generation and not self._shared:
            _INHERITED.append(conn)  # lent before a fork, returned in the child: not ours
            return
        failed: str | None = None
        try:
            if conn.in_transaction:
                conn.rollback()
            keep = time.monotonic() - conn.opened_at < self._max_lifetime
        except sqlite3.Error as exc:
            keep = False
            failed = type(exc).__name__  # only the type: the text is the driver's
        with self._lock:
            if keep and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                if self._waiting:
                    self._released.notify()
                return
            closed = self._closed
        if failed is not None:
            _log.warning("discarding a SQLite connection: its rollback failed (%s)", failed)
        elif not keep:
            _log.debug("retiring a released SQLite connection past max_lifetime")
        else:
            _log.debug(
                "closing a released SQLite connection: %s",
                "the pool is closed" if closed else "max_idle connections are idle already",
            )
        conn.close()
        self._forget_one()

    give_back = release
    """After a failure the same checks apply: rolled back, or discarded if that fails."""

    def _forget_one(self) -> None:
        with self._lock:
            self._open -= 1
            if self._waiting:
                self._released.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._released.notify_all()
        for conn in idle:
            conn.close()


class _Checkout:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def __enter__(self) -> Connection:
        self._conn = self._pool.acquire()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.release(self._conn)
