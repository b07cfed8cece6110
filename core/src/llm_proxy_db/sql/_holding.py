"""Thread-affine connections: each thread keeps the connection it used last.

A pool checkout per store call costs more than the statement on SQLite (a lock, a list,
a clock, a rollback check) and, with ``psycopg_pool``'s first-in first-out hand-out, sends
one thread's calls to a different server process each time. :class:`HeldConnections`
puts a thread-affine layer in front of any pool that has ``acquire()`` and
``release(conn)``: a thread's first call takes a connection from the pool and *holds* it;
its next calls find it again with one atomic list operation, no pool round.

The pool's rules still hold:

- **Bound**: a held connection stays counted by the pool as lent, and at most ``hold``
  connections are held (the pool's ``max_idle``: a parked connection is an idle one), so
  the pool never opens more than it would.
- **Nobody starves**: a thread without a parked connection of its own takes one whose
  thread ended, or, when every holding place is taken, another thread's; while any thread
  waits in the pool, every connection released goes back to the pool instead of staying
  held.
- **Lifetime and health**: a connection is held for at most ``hold_seconds`` and never
  past ``expires(conn)``, then goes once through the pool (``release`` then ``acquire``).
  After a failed call the executor calls :meth:`give_back`: the connection returns to the
  pool, whose own checks (rollback, broken connection) decide whether it is reused.
  :meth:`drain` hands every parked connection back at once (after a lost connection, so
  that the pool's check sees them).
- **Fork**: in a child of ``os.fork()`` every held connection is forgotten, never used
  nor closed (the pool's own fork handling applies to the rest).
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Connections", "HeldConnections", "Pool"]

C = TypeVar("C")

HOLD_SECONDS = 1.0
"""How long a thread keeps a connection before it goes back through the pool once (where
the pool's lifetime, idle and health rules apply to it)."""


class Pool(Protocol[C]):
    """What :class:`HeldConnections` needs of a pool."""

    def acquire(self) -> C:
        """A connection, waiting up to the pool's timeout; raises when none comes."""
        ...

    def release(self, conn: C) -> None:
        """Take ``conn`` back: rolled back, retired or discarded as the pool's rules say."""
        ...


class Connections(Protocol[C]):
    """What an executor lends connections from (:class:`HeldConnections`, or a pool
    whose ``give_back`` is its ``release``)."""

    def acquire(self) -> C:
        """A connection for one operation or transaction."""
        ...

    def release(self, conn: C) -> None:
        """``conn`` back after a call that succeeded: as it was lent."""
        ...

    def give_back(self, conn: C) -> None:
        """``conn`` back after a failure (or work outside the store logic): in any state."""
        ...


class _Slot(Generic[C]):
    """One held connection. ``parked`` holds it while no thread uses it: taking it is
    ``parked.pop()`` and parking it ``parked.append(conn)``, each atomic, so two threads
    never take the same connection."""

    __slots__ = ("conn", "expires", "owner", "parked")

    def __init__(self, conn: C, expires: float) -> None:
        self.conn = conn
        self.expires = expires
        self.parked: list[C] = []  # empty: in use by the thread that made it
        self.owner = threading.current_thread()
        """The thread that last took it from another (a parked connection of an ended
        thread is taken first)."""


class _Local(threading.local):
    slot: _Slot[Any] | None = None
    """The slot this thread used last (a hint: whoever pops ``parked`` uses it)."""


_HOLDERS: weakref.WeakSet[HeldConnections[Any]] = weakref.WeakSet()
_INHERITED: list[object] = []
"""The parent's held connections, in a forked child: kept referenced, never closed here."""


def _after_fork_in_child() -> None:
    for holder in list(_HOLDERS):
        holder.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _never(conn: object) -> float:
    return math.inf


class HeldConnections(Generic[C]):
    """Lends each thread the connection it used last, in front of ``pool``.

    ``hold``: how many connections may be held at once (0: every call goes to the pool).
    ``expires(conn)``: the ``time.monotonic()`` after which ``conn`` must go back through
    the pool (its lifetime's end), or ``math.inf``.
    """

    def __init__(
        self,
        pool: Pool[C],
        *,
        hold: int,
        expires: Callable[[C], float] = _never,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self._pool = pool
        self._hold = hold
        self._expires = expires
        self._hold_seconds = hold_seconds
        self._local = _Local()
        self._lock = threading.Lock()  # guards _slots, _by_conn and _in_pool
        self._slots: list[_Slot[C]] = []
        self._by_conn: dict[int, _Slot[C]] = {}  # id(conn) -> its slot, while held
        self._in_pool = 0  # threads in pool.acquire(): released connections go back
        _HOLDERS.add(self)

    @property
    def held(self) -> int:
        """How many connections are held now (in use or parked)."""
        return len(self._slots)

    # -- the hot path ---------------------------------------------------------------------

    def acquire(self) -> C:
        """This thread's held connection if it is parked, else :meth:`_take`."""
        slot = self._local.slot
        if slot is not None and slot.parked:
            try:
                conn: C = slot.parked.pop()
            except IndexError:  # another thread took it since the check
                return self._take()
            if time.monotonic() < slot.expires:
                return conn
            return self._renew(slot)
        return self._take()

    def release(self, conn: C) -> None:
        """Park ``conn``, as it was lent (its call succeeded), for its thread's next call."""
        slot = self._by_conn.get(id(conn))
        if slot is None:
            self._pool.release(conn)
        elif self._in_pool:
            self._unhold(slot)
        else:
            slot.parked.append(conn)
            if self._waiters():  # a thread began to wait for the pool meanwhile
                self._give_back(slot)

    def give_back(self, conn: C) -> None:
        """Return ``conn`` to the pool, in whatever state a failure left it: the pool's
        checks (rollback, broken connection, lifetime) decide whether it is reused."""
        slot = self._by_conn.get(id(conn))
        if slot is None:
            self._pool.release(conn)
        else:
            self._unhold(slot)

    # -- slow paths ---------------------------------------------------------------------

    def _waiters(self) -> int:
        # Read again after parking (a method, so the read is not folded into the first).
        return self._in_pool

    def _take(self) -> C:
        """A connection for a thread without a parked one of its own: a parked one whose
        thread ended, else (when every holding place is taken) another thread's parked
        one, else the pool's (held while fewer than ``hold`` are)."""
        with self._lock:
            # Counted before the scan: a connection parked after it goes back to the pool.
            self._in_pool += 1
            full = len(self._slots) >= self._hold
            for slot in self._slots:
                if slot.parked and (full or not slot.owner.is_alive()):
                    try:
                        conn = slot.parked.pop()
                    except IndexError:  # its thread took it back meanwhile
                        continue
                    self._in_pool -= 1
                    slot.owner = threading.current_thread()
                    self._local.slot = slot
                    return conn
        return self._hold_new(self._from_pool())

    def _from_pool(self) -> C:
        # _in_pool is counted by the caller, under the lock; while this thread waits,
        # connections released go back to the pool.
        try:
            return self._pool.acquire()
        finally:
            with self._lock:
                self._in_pool -= 1

    def _renew(self, slot: _Slot[C]) -> C:
        # Held for hold_seconds (or to its lifetime's end): once through the pool's rules.
        self._unhold(slot)
        with self._lock:
            self._in_pool += 1
        return self._hold_new(self._from_pool())

    def _hold_new(self, conn: C) -> C:
        """Hold ``conn`` (in use by this thread) if there is room; else lend it unheld."""
        with self._lock:
            if len(self._slots) >= self._hold:
                return conn  # release() hands it straight back to the pool
            slot = _Slot(conn, min(time.monotonic() + self._hold_seconds, self._expires(conn)))
            self._slots.append(slot)
            self._by_conn[id(conn)] = slot
        self._local.slot = slot
        return conn

    def _give_back(self, slot: _Slot[C]) -> None:
        """Hand a parked ``slot``'s connection back to the pool, unless a thread took it."""
        try:
            slot.parked.pop()
        except IndexError:
            return
        self._unhold(slot)

    def _unhold(self, slot: _Slot[C]) -> None:
        """Give a slot's connection, taken by the caller, back to the pool. The slot stays
        empty for good: no thread can take it any more."""
        with self._lock:
            if self._by_conn.pop(id(slot.conn), None) is None:
                return  # already forgotten (at a fork)
            self._slots.remove(slot)
        self._pool.release(slot.conn)

    def drain(self) -> None:
        """Hand every parked connection back to the pool (one in use is held on)."""
        for slot in list(self._slots):
            self._give_back(slot)

    def after_fork(self) -> None:
        """In a forked child: forget every held connection without touching it."""
        _INHERITED.extend(slot.conn for slot in self._slots)
        self._lock = threading.Lock()
        self._slots = []
        self._by_conn = {}
        self._in_pool = 0
        self._local = _Local()

    def close(self) -> None:
        """Hold no more and give back every parked connection; one in use goes back to
        the pool when it is released."""
        with self._lock:
            self._hold = 0
            self._in_pool += 1  # for good: every release from now on gives back
        self.drain()
