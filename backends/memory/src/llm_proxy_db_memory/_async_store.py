"""The memory backend on an event loop: the blocking store's dicts and logic behind an
``asyncio.Lock``.

Every call runs the :class:`MemoryBackend` method of the same name on the loop while it
holds the lock, so each call is atomic and never waits on a thread lock (the store's own
``RLock`` is only ever taken and released inside one synchronous call, never across an
``await``). A transaction holds the lock for its whole block: calls on the backend from
other tasks wait for it, while calls on the object the block yields do not take it. The
lock is not re-entrant, on purpose: tasks share the loop's thread, so a thread's
re-entrant lock would let one task walk into another's transaction. A block that raises,
or whose task is cancelled, restores the snapshot taken when it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

from llm_proxy_db import (
    AuditEvent,
    AuditEventFilter,
    Authorization,
    DatabaseError,
    Project,
    Stats,
    Token,
)

from ._store import MemoryBackend

__all__ = ["AsyncMemoryBackend"]


class _Unlocked:
    """The guard of a transaction's stores: no lock (the block holds it), but nothing
    once the block has ended."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    async def __aenter__(self) -> None:
        if self.ended:
            raise DatabaseError("the memory transaction has ended; start a new one")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _AsyncMemoryStores:
    """Every store method of ``store`` as a coroutine, each run inside ``guard``."""

    __slots__ = ("_guard", "_store")

    def __init__(self, store: MemoryBackend, guard: AbstractAsyncContextManager[object]) -> None:
        self._store = store
        self._guard = guard

    # Projects
    async def create_project(self, project: Project) -> Project:
        async with self._guard:
            return self._store.create_project(project)

    async def get_project_by_id(self, project_id: str) -> Project:
        async with self._guard:
            return self._store.get_project_by_id(project_id)

    async def update_project(self, project: Project) -> Project:
        async with self._guard:
            return self._store.update_project(project)

    async def delete_project(self, project_id: str) -> None:
        async with self._guard:
            self._store.delete_project(project_id)

    async def list_projects(self) -> list[Project]:
        async with self._guard:
            return self._store.list_projects()

    # Tokens
    async def create_token(self, token: Token) -> Token:
        async with self._guard:
            return self._store.create_token(token)

    async def get_token_by_id(self, token: str) -> Token:
        async with self._guard:
            return self._store.get_token_by_id(token)

    async def update_token(self, token: Token) -> Token:
        async with self._guard:
            return self._store.update_token(token)

    async def delete_token(self, token: str) -> None:
        async with self._guard:
            self._store.delete_token(token)

    async def list_tokens(self, project_id: str | None = None) -> list[Token]:
        async with self._guard:
            return self._store.list_tokens(project_id)

    async def increment_token_usage(self, token: str) -> Token:
        async with self._guard:
            return self._store.increment_token_usage(token)

    async def authorize(self, token: str) -> Authorization:
        async with self._guard:
            return self._store.authorize(token)

    async def revoke_token(self, token: str) -> None:
        async with self._guard:
            self._store.revoke_token(token)

    async def revoke_project_tokens(self, project_id: str) -> int:
        async with self._guard:
            return self._store.revoke_project_tokens(project_id)

    async def revoke_expired_tokens(self) -> int:
        async with self._guard:
            return self._store.revoke_expired_tokens()

    async def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        async with self._guard:
            self._store.increment_cache_hit_count(token, delta)

    async def reset_token_usage(self, token: str) -> Token:
        async with self._guard:
            return self._store.reset_token_usage(token)

    # Audit
    async def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        async with self._guard:
            return self._store.create_audit_event(event)

    async def create_audit_events(self, events: list[AuditEvent]) -> int:
        async with self._guard:
            return self._store.create_audit_events(events)

    async def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        async with self._guard:
            return self._store.get_audit_event_by_id(event_id)

    async def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        async with self._guard:
            return self._store.list_audit_events(filter)

    async def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        async with self._guard:
            return self._store.count_audit_events(filter)

    async def stats(self) -> Stats:
        async with self._guard:
            return self._store.stats()


class AsyncMemoryBackend(_AsyncMemoryStores):
    """An ``AsyncBackend`` kept in process memory; belongs to the loop that uses it, safe
    to share between its tasks."""

    __slots__ = ("_lock",)

    def __init__(self, store: MemoryBackend | None = None) -> None:
        lock = asyncio.Lock()
        super().__init__(MemoryBackend() if store is None else store, lock)
        self._lock = lock

    async def close(self) -> None:
        self._store.close()

    async def health_check(self) -> None:
        self._store.health_check()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_AsyncMemoryStores]:
        async with self._lock:
            saved = self._store.snapshot()
            guard = _Unlocked()
            try:
                yield _AsyncMemoryStores(self._store, guard)
            except BaseException:  # a cancellation included
                self._store.restore(saved)
                raise
            finally:
                guard.ended = True
