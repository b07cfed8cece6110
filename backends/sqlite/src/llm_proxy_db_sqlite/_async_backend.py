"""The SQLite backend on an event loop: a writer thread and reader threads, each owning
one connection, one hop per store operation.

The store logic (``llm_proxy_db.sql.StoreLogic``) turns a call into an operation on the
loop; the operation then goes, as one job, to a thread that runs it with the blocking
executor of the sync backend (:meth:`SQLiteFile.executor` over that thread's one
connection) and hands the result back with ``loop.call_soon_threadsafe``. The loop never
waits on SQLite.

* Reads (a single ``SELECT`` step) go to the reader threads (a shared queue, WAL
  snapshots); everything else (every flow, every write, every transaction) goes to the
  one writer thread, so writers never contend for SQLite's write lock in this process.
* ``transaction()`` holds the writer for the block: ``BEGIN IMMEDIATE``, each call under a
  savepoint, ``COMMIT`` or ``ROLLBACK``, as :meth:`DbApiExecutor.transaction` does. Other
  tasks' writes wait on the block's ``asyncio.Lock`` and never join it.
* A task cancelled while its operation runs: the operation finishes in the thread, its
  result is dropped. A cancelled block rolls back after its in-flight call (the writer
  runs its jobs in order).
* ``:memory:`` (or ``max_open_conns=1``): the writer alone, reads included.
* After ``os.fork()`` the child has none of the threads: the parent's connections are
  kept (never closed there) and every call raises ``DatabaseError``; open a new database
  in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from importlib.resources import files
from typing import Any, TypeAlias, TypeVar

from llm_proxy_db import DatabaseError, FullConfig
from llm_proxy_db.sql import (
    AsyncSqlStores,
    Executor,
    Migrations,
    Operation,
    SqlBackend,
    Statements,
    Step,
    StoreLogic,
)

from ._backend import SQLiteBackend, SQLiteFile, quick_check
from ._pool import _INHERITED, Connection

__all__ = ["AsyncSQLiteBackend", "open_async"]

T = TypeVar("T")

_MAX_READERS = 4
"""Reader threads at most (``max_open_conns - 1`` below that): more only add GIL
contention on two or four cores."""


class _OwnConnection:
    """A worker thread's one connection as the executor's ``Connections``: lent again and
    again; given back after a failure, it is rolled back, or closed and reopened on the
    next call if that fails."""

    __slots__ = ("_connect", "conn")

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self.conn: Connection | None = None

    def acquire(self) -> Connection:
        conn = self.conn
        if conn is None:
            conn = self.conn = self._connect()
        return conn

    def release(self, conn: Connection) -> None:
        """Back as it was lent: kept."""

    def give_back(self, conn: Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.rollback()
        except Exception:  # unusable: open a new one next time
            self.conn = None
            conn.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class _Rollback(BaseException):
    """Thrown into a transaction's context manager to roll it back."""


class _Session:
    """What a worker thread runs jobs on: the SQL stores over its connection, and the
    transaction open on it (writer only)."""

    __slots__ = ("block", "bound", "close", "executor", "own", "sql", "ticket")

    def __init__(
        self, sql: SqlBackend, close: Callable[[], None], own: _OwnConnection | None = None
    ) -> None:
        self.sql = sql
        self.executor = sql.executor
        self.close = close
        self.own = own
        """The session's own connection (a file's), kept from the collector after a fork."""
        self.block: AbstractContextManager[Executor] | None = None
        self.bound: Executor | None = None
        self.ticket: object = None
        """Which ``transaction()`` block the open transaction is (a stale call is refused)."""


Work: TypeAlias = Callable[[_Session, Any], Any]
_Job: TypeAlias = "tuple[asyncio.Future[Any], Work, Any] | None"


def _run(session: _Session, operation: Operation[Any]) -> Any:
    return session.executor.run(operation)


def _check_health(session: _Session, _: None) -> None:
    session.sql.health_check()


def _begin(session: _Session, ticket: object) -> None:
    block = session.executor.transaction()
    session.bound = block.__enter__()  # BEGIN IMMEDIATE
    session.block, session.ticket = block, ticket


def _run_in_block(session: _Session, job: tuple[object, Operation[Any]]) -> Any:
    ticket, operation = job
    if session.ticket is not ticket or session.bound is None:
        raise DatabaseError("the transaction has ended; start a new one")
    return session.bound.run(operation)  # under a savepoint


def _end(session: _Session, rollback: bool) -> None:
    block, session.block, session.bound, session.ticket = session.block, None, None, None
    if block is None:  # BEGIN failed (or never ran): nothing to end
        return
    if rollback:
        block.__exit__(_Rollback, _Rollback(), None)
    else:
        block.__exit__(None, None, None)  # COMMIT (raises if it cannot)


def _succeed(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # cancelled meanwhile: the result is dropped
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in done:
        if future.done():  # cancelled meanwhile: the result is dropped
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class _Worker(threading.Thread):
    """A thread that opens a session, then runs the jobs of its queue, in order, until
    it takes ``None``; it closes the session last."""

    def __init__(
        self,
        name: str,
        jobs: queue.SimpleQueue[_Job],
        open_session: Callable[[], _Session],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(name=name, daemon=True)  # never holds up interpreter exit
        self._jobs = jobs
        self._open_session = open_session
        self._loop = loop
        self.session: _Session | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()

    def _report(self, report: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(report, *args)

    def run(self) -> None:
        try:
            session = self.session = self._open_session()
        except Exception as exc:
            self._report(_fail, self.ready, exc)
            self._report(_succeed, self.stopped, None)
            return
        self._report(_succeed, self.ready, None)
        jobs, report = self._jobs, self._loop.call_soon_threadsafe
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            while (job := jobs.get()) is not None:
                future, work, argument = job
                try:
                    done.append((future, work(session, argument), None))
                except Exception as exc:
                    done.append((future, None, exc))
                if jobs.empty():  # the results so far in one wake-up of the loop
                    report(_settle, done)
                    done = []
            if done:
                report(_settle, done)
        except RuntimeError:  # the loop was closed under us: stop
            pass
        finally:
            try:
                session.close()
            finally:
                self._report(_succeed, self.stopped, None)


async def _finish(future: asyncio.Future[T]) -> T:
    """``await future``; if this task is cancelled meanwhile, still wait for it (the
    thread's work cannot be taken back), then let the cancellation go on."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


_OPEN: weakref.WeakSet[_Router] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for router in list(_OPEN):
        router.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Router:
    """The ``AsyncExecutor`` of the backend: each operation, as one job, to a reader
    thread (a lone ``SELECT``) or to the writer thread (anything else)."""

    def __init__(
        self, config: FullConfig, database: SQLiteFile, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self._statements = Statements(database.dialect)
        self.refusal: str | None = "the database is not open yet"
        """Why no job can be submitted (closed, forked), or None."""
        self.lock = asyncio.Lock()
        """Held by a transaction block for its whole length; writes wait while it is."""
        self._writes: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        readers = 0 if database.in_memory else min(config.max_open_conns - 1, _MAX_READERS)
        self._reads_to_writer = readers == 0
        if database.in_memory:
            opener: Callable[[], _Session] = lambda: self._memory_session(config)  # noqa: E731
        else:
            opener = lambda: self._file_session(database)  # noqa: E731
        self.writer = _Worker("llm-proxy-db-sqlite-writer", self._writes, opener, loop)
        self.readers = [
            _Worker(f"llm-proxy-db-sqlite-reader-{n}", self._reads, opener, loop)
            for n in range(readers)
        ]
        self._pid = os.getpid()
        self._stopping: asyncio.Future[None] | None = None

    def _file_session(self, database: SQLiteFile) -> _Session:
        own = _OwnConnection(database.connect)
        own.acquire()  # open now: a bad file fails the open
        return _Session(SqlBackend(database.executor(own), self._statements), own.close, own)

    def _memory_session(self, config: FullConfig) -> _Session:
        # A new :memory: database: migrated here (the core's migrations ran on another).
        backend = SQLiteBackend(config)
        try:
            migrations = Migrations(files("llm_proxy_db_sqlite") / "migrations", backend)
            migrations.on_open(auto_migrate=config.auto_migrate)
        except BaseException:
            backend.close()
            raise
        return _Session(backend, backend.close)

    async def start(self) -> None:
        """Start the writer (it switches a new file to WAL), then the readers."""
        self.refusal = None
        _OPEN.add(self)
        self.writer.start()
        await self.writer.ready
        for reader in self.readers:
            reader.start()
        await asyncio.gather(*(reader.ready for reader in self.readers))

    # -- submitting ----------------------------------------------------------------------

    def submit(self, work: Work, argument: Any, *, read: bool = False) -> asyncio.Future[Any]:
        """One job for the readers (``read``) or the writer; its future."""
        if self.refusal is not None:
            raise DatabaseError(self.refusal)
        future = self._loop.create_future()
        (self._reads if read and not self._reads_to_writer else self._writes).put(
            (future, work, argument)
        )
        return future

    async def run(self, operation: Operation[T]) -> T:
        """Carry out ``operation`` outside a transaction, in one hop."""
        if (
            operation.__class__ is Step
            and not self._reads_to_writer
            and operation.sql.startswith("SELECT")
        ):
            return await self.submit(_run, operation, read=True)  # type: ignore[no-any-return]
        return await self.write(_run, operation)  # type: ignore[no-any-return]

    async def write(self, work: Work, argument: Any) -> Any:
        """A job for the writer, after the transaction block holding it, if any."""
        if self.lock.locked():  # never inside another task's block: queued after its end
            async with self.lock:
                future = self.submit(work, argument)
        else:
            future = self.submit(work, argument)
        return await future

    # -- ending --------------------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: the threads are gone; keep their connections referenced
        (closing one inherited across fork may damage the parent's WAL), refuse calls."""
        for worker in (self.writer, *self.readers):
            own = worker.session.own if worker.session is not None else None
            if own is not None and own.conn is not None:
                _INHERITED.append(own.conn)
        self.refusal = (
            "this database was opened in the parent process (before os.fork()): open a new "
            "one in this process"
        )

    async def close(self) -> None:
        """Stop every thread (after the jobs queued before) and close its connection."""
        if self._stopping is None:
            self._stopping = self._loop.create_future()
            self.refusal = self.refusal or "the database is closed"
            _OPEN.discard(self)
            try:
                if self._pid == os.getpid():
                    await _finish(asyncio.ensure_future(self._stop()))
            finally:
                self._stopping.set_result(None)
        else:
            await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        workers = [w for w in (self.writer, *self.readers) if w.ident is not None]
        self._writes.put(None)
        for _ in self.readers:
            self._reads.put(None)
        await asyncio.gather(*(worker.stopped for worker in workers))
        for worker in workers:
            worker.join()  # it has reported its last act: at most a moment


class _BlockExecutor:
    """The executor of one ``transaction()`` block: each call one hop to the writer."""

    __slots__ = ("_router", "_ticket")

    def __init__(self, router: _Router, ticket: object) -> None:
        self._router = router
        self._ticket = ticket

    async def run(self, operation: Operation[T]) -> T:
        return await self._router.submit(_run_in_block, (self._ticket, operation))  # type: ignore[no-any-return]


class AsyncSQLiteBackend(AsyncSqlStores):
    """An ``AsyncBackend`` on one SQLite database: open one with :func:`open_async`."""

    def __init__(self, config: FullConfig, loop: asyncio.AbstractEventLoop) -> None:
        database = SQLiteFile(config)
        self._path = database.path
        self._router = _Router(config, database, loop)
        super().__init__(self._router, StoreLogic(Statements(database.dialect)))

    async def check_integrity(self) -> None:
        """As the blocking backend's: ``PRAGMA quick_check``, on the writer."""
        await self._router.run(quick_check(self._path))

    async def health_check(self) -> None:
        """A bounded read of each table, on a reader (the writer may be in a block)."""
        router = self._router
        if router.readers:
            await router.submit(_check_health, None, read=True)
        else:
            await router.write(_check_health, None)

    async def close(self) -> None:
        """Stop and join every thread, closing its connection; idempotent."""
        await self._router.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSqlStores]:
        """The writer for the block: ``BEGIN IMMEDIATE``, a savepoint per call, ``COMMIT``;
        rolled back on an exception or a cancellation, after the in-flight call."""
        router = self._router
        ticket = object()
        async with router.lock:
            try:
                await router.submit(_begin, ticket)
                yield AsyncSqlStores(_BlockExecutor(router, ticket), self._logic)
            except BaseException:
                # Queued after the in-flight call, if any: the writer runs jobs in order.
                await _finish(router.submit(_end, True))
                raise
            await _finish(router.submit(_end, False))


async def open_async(config: FullConfig) -> AsyncSQLiteBackend:
    """The ``async_factory`` of the SQLite backend: an open :class:`AsyncSQLiteBackend`
    on the running loop (the core has migrated the file already)."""
    backend = AsyncSQLiteBackend(config, asyncio.get_running_loop())
    try:
        await backend._router.start()
    except BaseException:
        await backend.close()
        raise
    return backend
