"""``HeldConnections`` in front of a small real bounded pool: each thread finds the
connection it used last again, and the pool's bound, hand-out and lifetime rules still
hold (nobody starves, expired connections go once through the pool, forks forget)."""

from __future__ import annotations

import collections
import functools
import inspect
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from llm_proxy_db.sql import HeldConnections

Conn = sqlite3.Connection

TIMEOUT = 5.0
"""The pool's wait: generous, so that a test waiting for it fails clearly."""


class PoolTimeout(Exception):
    pass


class _Waiter:
    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Conn | None = None


class BoundedPool:
    """At most ``max_open`` connections; a released one goes to the oldest waiter first
    (first in, first out, as ``psycopg_pool`` does), else to the idle list. Counts every
    open, acquire and release, and refuses a connection it did not lend."""

    def __init__(self, max_open: int, *, timeout: float = TIMEOUT) -> None:
        self.max_open = max_open
        self.timeout = timeout
        self._cond = threading.Condition()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.idle: list[Conn] = []
        self.lent: set[int] = set()
        self.every: list[Conn] = []
        self.acquires = 0
        self.releases = 0
        self.max_seen = 0

    @property
    def opened(self) -> int:
        return len(self.every)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiters)

    def acquire(self) -> Conn:
        with self._cond:
            self.acquires += 1
            if self.idle:
                return self._lend(self.idle.pop())
            if self.opened < self.max_open:
                conn = sqlite3.connect(":memory:", check_same_thread=False)
                self.every.append(conn)
                self.max_seen = max(self.max_seen, self.opened)
                return self._lend(conn)
            waiter = _Waiter()
            self._waiters.append(waiter)
            deadline = time.monotonic() + self.timeout
            while waiter.conn is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiters.remove(waiter)
                    raise PoolTimeout(f"no connection in {self.timeout} s")
                self._cond.wait(left)
            return waiter.conn  # lent by release()

    def _lend(self, conn: Conn) -> Conn:
        self.lent.add(id(conn))
        return conn

    def release(self, conn: Conn) -> None:
        with self._cond:
            assert id(conn) in self.lent, "released a connection the pool did not lend"
            self.releases += 1
            if self._waiters:
                self._waiters.popleft().conn = conn  # stays lent, to the waiter
                self._cond.notify_all()
            else:
                self.lent.remove(id(conn))
                self.idle.append(conn)

    def close(self) -> None:
        for conn in self.every:
            conn.close()


@pytest.fixture
def make_pool() -> Iterator[Callable[..., BoundedPool]]:
    pools: list[BoundedPool] = []

    def make(max_open: int, *, timeout: float = TIMEOUT) -> BoundedPool:
        pools.append(BoundedPool(max_open, timeout=timeout))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``target`` in a thread; the list gets its result or the exception it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _until(condition: Callable[[], bool], seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.001)


def _result(thread: threading.Thread, outcome: list[Any], seconds: float = 2 * TIMEOUT) -> Any:
    thread.join(seconds)
    assert not thread.is_alive(), "the thread did not finish"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _acquire_release(held: HeldConnections[Conn]) -> Conn:
    conn = held.acquire()
    conn.execute("SELECT 1")
    held.release(conn)
    return conn


def test_second_acquire_returns_the_released_connection_without_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=2)
    first = _acquire_release(held)
    assert held.held == 1
    for _ in range(5):
        assert held.acquire() is first
        held.release(first)
    assert (pool.acquires, pool.releases) == (1, 0)


def test_at_most_hold_connections_are_held_and_max_open_is_kept(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(3)
    held = HeldConnections(pool, hold=2)
    threads, calls = 6, 200
    together = threading.Barrier(threads)
    counts: list[int] = []

    def work() -> int:
        together.wait(TIMEOUT)
        for _ in range(calls):
            conn = held.acquire()
            assert held.held <= 2
            conn.execute("SELECT 1")
            held.release(conn)
        counts.append(calls)
        return calls

    started = [_in_thread(work) for _ in range(threads)]
    assert [_result(*each) for each in started] == [calls] * threads
    assert held.held <= 2
    assert pool.max_seen <= 3


def test_a_connection_beyond_hold_is_lent_unheld_and_released_to_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(3)
    held = HeldConnections(pool, hold=2)
    using: list[Conn] = []
    done = threading.Event()

    def use() -> Conn:
        conn = held.acquire()
        using.append(conn)
        assert done.wait(TIMEOUT)
        held.release(conn)
        return conn

    started = [_in_thread(use) for _ in range(3)]
    _until(lambda: len(using) == 3)
    assert held.held == 2
    done.set()
    conns = {id(_result(*each)) for each in started}
    assert len(conns) == 3
    assert pool.releases == 1  # the one not held went back at once
    assert held.held == 2


def test_no_starvation_a_parked_connection_of_another_thread_is_used(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(1)
    held = HeldConnections(pool, hold=1)
    mine = _acquire_release(held)  # parked, held by this thread
    began = time.monotonic()
    theirs = _result(*_in_thread(lambda: _acquire_release(held)))
    assert time.monotonic() - began < 1.0  # not the pool's timeout
    assert theirs is mine
    assert pool.acquires == 1
    # and back again: this thread finds it parked
    assert _acquire_release(held) is mine
    assert pool.acquires == 1


def test_a_thread_waiting_in_the_pool_gets_a_held_connection_when_it_is_released(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(1)
    held = HeldConnections(pool, hold=1)
    mine = held.acquire()  # held and in use
    waiter, outcome = _in_thread(lambda: _acquire_release(held))
    _until(lambda: pool.waiting == 1)
    released = time.monotonic()
    held.release(mine)
    assert _result(waiter, outcome) is mine
    assert time.monotonic() - released < 1.0
    assert pool.releases == 1  # through the pool, not kept parked for this thread


def test_an_expired_connection_goes_back_through_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(1)
    held = HeldConnections(pool, hold=1, expires=lambda conn: 0.0)
    conn = _acquire_release(held)
    assert (pool.acquires, pool.releases) == (1, 0)
    assert _acquire_release(held) is conn  # the pool's only one, once through it
    assert (pool.acquires, pool.releases) == (2, 1)
    assert held.held == 1


def test_a_connection_is_held_for_hold_seconds_then_goes_through_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(1)
    held = HeldConnections(pool, hold=1, hold_seconds=0.05)
    conn = _acquire_release(held)
    _acquire_release(held)
    assert (pool.acquires, pool.releases) == (1, 0)
    time.sleep(0.1)
    assert _acquire_release(held) is conn
    assert (pool.acquires, pool.releases) == (2, 1)
    _acquire_release(held)  # held again, for another hold_seconds
    assert (pool.acquires, pool.releases) == (2, 1)


def test_give_back_returns_a_held_connection_to_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(1)
    held = HeldConnections(pool, hold=1)
    conn = held.acquire()
    held.give_back(conn)
    assert pool.releases == 1
    assert held.held == 0
    assert _acquire_release(held) is conn
    assert pool.acquires == 2


def test_give_back_of_an_unheld_connection_goes_to_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=0)
    conn = held.acquire()
    held.give_back(conn)
    assert (pool.acquires, pool.releases, held.held) == (1, 1, 0)


def test_drain_hands_parked_connections_back_but_not_the_one_in_use(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=2)
    in_use = held.acquire()
    parked = _result(*_in_thread(lambda: _acquire_release(held)))  # its thread ended
    assert parked is not in_use
    assert held.held == 2
    held.drain()
    assert pool.releases == 1
    assert pool.idle == [parked]
    assert held.held == 1
    held.release(in_use)  # still held: parked for this thread
    assert pool.releases == 1
    assert _acquire_release(held) is in_use
    assert pool.acquires == 2


def test_after_fork_forgets_held_connections_without_releasing_them(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=1)
    inherited = _acquire_release(held)
    held.after_fork()
    assert held.held == 0
    assert pool.releases == 0
    conn = _acquire_release(held)
    assert conn is not inherited
    assert (pool.acquires, pool.releases) == (2, 0)
    assert held.held == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_does_not_use_the_parents_held_connection(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=1)
    inherited = _acquire_release(held)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only, never return to pytest
        code = 1
        try:
            forgot = held.held == 0
            conn = held.acquire()
            fresh = conn is not inherited and conn.execute("SELECT 1").fetchone() == (1,)
            held.release(conn)
            untouched = pool.releases == 0 and id(inherited) in pool.lent
            code = 0 if forgot and fresh and untouched else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent still holds its own
    assert _acquire_release(held) is inherited
    assert (pool.acquires, pool.releases) == (1, 0)


def test_close_gives_back_parked_ones_now_and_the_one_in_use_when_released(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(2)
    held = HeldConnections(pool, hold=2)
    in_use = held.acquire()
    parked = _result(*_in_thread(lambda: _acquire_release(held)))
    held.close()
    assert pool.releases == 1
    assert pool.idle == [parked]
    held.release(in_use)
    assert pool.releases == 2
    assert held.held == 0
    for _ in range(3):  # every call goes to the pool now, from any thread
        _acquire_release(held)
        _result(*_in_thread(lambda: _acquire_release(held)))
    assert (pool.acquires, pool.releases) == (2 + 6, 2 + 6)
    assert held.held == 0
    assert not pool.lent


def test_stress_no_connection_is_shared_and_every_one_is_accounted_for(
    make_pool: Callable[..., BoundedPool],
) -> None:
    pool = make_pool(3)
    held = HeldConnections(pool, hold=2)
    threads, iterations = 8, 3_000
    marks = threading.Lock()
    in_use: set[int] = set()
    together = threading.Barrier(threads)

    def work(seed: int) -> int:
        rng = random.Random(seed)
        together.wait(TIMEOUT)
        for _ in range(iterations):
            conn = held.acquire()
            with marks:
                assert id(conn) not in in_use, "a connection lent to two threads at once"
                in_use.add(id(conn))
            if rng.random() < 0.1:
                conn.execute("SELECT 1")
            if rng.random() < 0.05:  # a slow call: others wait in the pool meanwhile
                time.sleep(0.0001)
            with marks:
                in_use.remove(id(conn))
            if rng.randrange(20) == 0:
                held.give_back(conn)
            else:
                held.release(conn)
            if rng.random() < 0.1:  # idle a while: nobody waits, connections stay parked
                time.sleep(0.0002)
        return iterations

    began = time.monotonic()
    started = [_in_thread(functools.partial(work, seed)) for seed in range(threads)]
    assert [_result(*each, seconds=60) for each in started] == [iterations] * threads
    elapsed = time.monotonic() - began
    assert pool.max_seen <= 3
    assert held.held <= 2
    held.close()
    assert not in_use
    assert not pool.lent
    assert sorted(map(id, pool.idle)) == sorted(map(id, pool.every))
    assert elapsed < 30  # a loaded 2-core machine: typically well under 5 s


# -- races that once starved a waiting thread ---------------------------------------------


def test_a_thread_renewing_an_expired_connection_is_not_starved(
    make_pool: Callable[..., BoundedPool],
) -> None:
    # hold=2 on max_open=2, one connection lent by the pool to another user (a migration
    # runner, say). This thread's held connection expires while a thread W waits in the
    # pool: renewing releases it to W, then waits in the pool itself; W's call succeeds
    # and W's release parks it (no thread is counted as waiting) while this thread waits
    # until the pool's timeout, though the connection sits unused.
    pool = make_pool(2, timeout=2.0)
    held = HeldConnections(pool, hold=2, hold_seconds=0.05)
    mine = _acquire_release(held)  # held by this thread, parked
    other_user = pool.acquire()
    waiter, outcome = _in_thread(lambda: _acquire_release(held))
    _until(lambda: pool.waiting == 1)
    time.sleep(0.1)  # this thread's connection has expired
    began = time.monotonic()
    try:
        conn = held.acquire()  # renews: mine goes to W first, then this thread waits
        assert conn is mine
        assert time.monotonic() - began < 1.0
        held.release(conn)
        assert _result(waiter, outcome) is mine
    finally:
        pool.release(other_user)


def test_a_release_between_the_scan_and_the_pool_wait_does_not_starve(
    make_pool: Callable[..., BoundedPool],
) -> None:
    # max_open=1, hold=1. W finds this thread's connection in use and is paused (a trace
    # function) just before `self._in_pool += 1`; this thread releases (no waiter counted
    # yet: parked); W goes on to wait in the pool for a connection that stays parked.
    pool = make_pool(1, timeout=2.0)
    held = HeldConnections(pool, hold=1)
    mine = held.acquire()
    lines, first = inspect.getsourcelines(HeldConnections._take)
    target = first + next(i for i, line in enumerate(lines) if "self._in_pool += 1" in line)
    take = HeldConnections._take.__code__
    paused, go = threading.Event(), threading.Event()

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == target:
            paused.set()
            go.wait(TIMEOUT)
        return local

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is take else None

    def traced() -> Conn:
        sys.settrace(trace)
        try:
            conn = held.acquire()
        finally:
            sys.settrace(None)
        held.release(conn)
        return conn

    waiter, outcome = _in_thread(traced)
    assert paused.wait(TIMEOUT)
    held.release(mine)  # W has not counted itself yet: mine stays parked
    released = time.monotonic()
    go.set()
    assert _result(waiter, outcome) is mine
    assert time.monotonic() - released < 1.0


def test_a_parked_connection_of_an_ended_thread_is_used_before_the_pool(
    make_pool: Callable[..., BoundedPool],
) -> None:
    # Fewer than hold are held, the pool has nothing left (another user has the rest): the
    # connection a finished thread left parked serves the call, at once.
    pool = make_pool(2, timeout=1.0)
    held = HeldConnections(pool, hold=2)
    ended, outcome = _in_thread(lambda: _acquire_release(held))
    left_behind = _result(ended, outcome)
    other_user = pool.acquire()
    try:
        began = time.monotonic()
        assert _acquire_release(held) is left_behind
        assert time.monotonic() - began < 0.5
        assert pool.acquires == 2  # the ended thread's and the other user's
    finally:
        pool.release(other_user)
