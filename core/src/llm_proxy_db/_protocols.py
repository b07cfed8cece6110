"""The store contract: three protocols, and the ``Backend`` that a plugin's factory returns.

The semantics of every method are documented here once; the conformance suite
(:mod:`llm_proxy_db.testing`) checks them on every backend.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol, runtime_checkable

from ._models import AuditEvent, AuditEventFilter, Authorization, Project, Stats, Token

__all__ = [
    "AsyncBackend",
    "AsyncStores",
    "AuditStore",
    "Backend",
    "ProjectStore",
    "Stores",
    "TokenStore",
]


@runtime_checkable
class ProjectStore(Protocol):
    """Projects: tenants holding an upstream API key."""

    __slots__ = ()

    def create_project(self, project: Project) -> Project:
        """Insert ``project``; ``ProjectExistsError`` if its id or name is taken."""
        ...

    def get_project_by_id(self, project_id: str) -> Project:
        """The project with that id; ``ProjectNotFoundError`` otherwise."""
        ...

    def update_project(self, project: Project) -> Project:
        """Store name, openai_api_key, is_active and deactivated_at; set ``updated_at`` to now.

        ``created_at`` never changes. Returns the stored project. ``ProjectNotFoundError``
        for an unknown id, ``ProjectExistsError`` when another project has the name.
        """
        ...

    def delete_project(self, project_id: str) -> None:
        """Hard-delete the project and its tokens; its audit events stay.

        ``ProjectNotFoundError`` for an unknown id.
        """
        ...

    def list_projects(self) -> list[Project]:
        """Every project, ordered by name."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Tokens: client credentials with quotas and usage counters."""

    __slots__ = ()

    def create_token(self, token: Token) -> Token:
        """Insert ``token``; ``ProjectNotFoundError`` for an unknown project,
        ``TokenExistsError`` for a duplicate value."""
        ...

    def get_token_by_id(self, token: str) -> Token:
        """The token with that value (the primary key); ``TokenNotFoundError`` otherwise."""
        ...

    def update_token(self, token: Token) -> Token:
        """Store only ``expires_at``, ``is_active``, ``deactivated_at`` and ``max_requests``.

        The usage counters are never written, so no concurrent increment is lost.
        Returns the stored token, counters included; ``TokenNotFoundError`` if unknown.
        """
        ...

    def delete_token(self, token: str) -> None:
        """Delete the token; ``TokenNotFoundError`` if unknown."""
        ...

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        """Tokens (of one project, or all), newest ``created_at`` first, ties by token
        descending."""
        ...

    def increment_token_usage(self, token: str) -> Token:
        """Count one request, atomically, or refuse it and change nothing.

        Succeeds only when the token exists, is active, is not expired
        (``expires_at <= now`` is expired), its project is active, and
        ``request_count < max_requests`` (None is unlimited). Then ``request_count`` grows
        by one, ``last_used_at`` becomes now, and the updated token is returned.
        Refusals, checked in this order: ``TokenNotFoundError``, ``TokenInactiveError``,
        ``TokenExpiredError``, ``ProjectInactiveError``, ``TokenLimitReachedError``.
        """
        ...

    def revoke_token(self, token: str) -> None:
        """Deactivate the token (``TokenNotFoundError`` if unknown).

        Idempotent: an existing ``deactivated_at`` is kept, otherwise it becomes now.
        """
        ...

    def revoke_project_tokens(self, project_id: str) -> int:
        """Deactivate every active token of the project; how many changed (0 if unknown)."""
        ...

    def revoke_expired_tokens(self) -> int:
        """Deactivate every active token whose ``expires_at <= now``; how many changed."""
        ...

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        """Add ``delta`` (>= 1) to the token's ``cache_hit_count``; ``TokenNotFoundError``
        if unknown."""
        ...

    def reset_token_usage(self, token: str) -> Token:
        """Set ``request_count`` to 0; ``cache_hit_count`` and ``last_used_at`` stay.

        Returns the updated token; ``TokenNotFoundError`` if unknown.
        """
        ...


@runtime_checkable
class AuditStore(Protocol):
    """The append-only audit log: no update or delete."""

    __slots__ = ()

    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        """Append ``event``; ``AlreadyExistsError`` for a duplicate id."""
        ...

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        """Append every event whose id is new; skip, without error, those whose id is
        already stored (a replay never duplicates). Returns how many were new: 0 for an
        empty list; an id twice in ``events`` is stored (and counted) once, the first."""
        ...

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        """The event with that id; ``AuditEventNotFoundError`` otherwise."""
        ...

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        """Matching events, newest first, ties broken by id descending."""
        ...

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        """How many events match (``limit`` and ``offset`` are ignored)."""
        ...


class Stores(ProjectStore, TokenStore, AuditStore, Protocol):
    """All three stores, plus the operator's counts: what a transaction yields."""

    __slots__ = ()

    def authorize(self, token: str) -> Authorization:
        """Count one request as :meth:`increment_token_usage` does (the same checks, the
        same refusals in the same order, atomically) and return the counted token with
        its project, the upstream key included.

        The call a proxy makes per request: one statement on PostgreSQL, one write
        transaction on SQLite.
        """
        ...

    def stats(self) -> Stats:
        """Counts of projects, tokens and requests, and the storage size."""
        ...


class Backend(Stores, Protocol):
    """What a backend factory returns; the ``DB`` facade wraps one."""

    __slots__ = ()

    def close(self) -> None:
        """Release every connection; idempotent."""
        ...

    def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the storage answers."""
        ...

    def transaction(self) -> AbstractContextManager[Stores]:
        """A unit of work: commits on normal exit, rolls everything back on an exception."""
        ...


class AsyncStores(Protocol):
    """The three stores on an event loop: every method of :class:`Stores` as a coroutine,
    with the same parameters, results and errors (documented there, once). A test checks
    that the two never drift apart."""

    __slots__ = ()

    async def create_project(self, project: Project) -> Project: ...
    async def get_project_by_id(self, project_id: str) -> Project: ...
    async def update_project(self, project: Project) -> Project: ...
    async def delete_project(self, project_id: str) -> None: ...
    async def list_projects(self) -> list[Project]: ...
    async def create_token(self, token: Token) -> Token: ...
    async def get_token_by_id(self, token: str) -> Token: ...
    async def update_token(self, token: Token) -> Token: ...
    async def delete_token(self, token: str) -> None: ...
    async def list_tokens(self, project_id: str | None = None) -> list[Token]: ...
    async def increment_token_usage(self, token: str) -> Token: ...
    async def revoke_token(self, token: str) -> None: ...
    async def revoke_project_tokens(self, project_id: str) -> int: ...
    async def revoke_expired_tokens(self) -> int: ...
    async def increment_cache_hit_count(self, token: str, delta: int = 1) -> None: ...
    async def reset_token_usage(self, token: str) -> Token: ...
    async def create_audit_event(self, event: AuditEvent) -> AuditEvent: ...
    async def create_audit_events(self, events: list[AuditEvent]) -> int: ...
    async def get_audit_event_by_id(self, event_id: str) -> AuditEvent: ...
    async def list_audit_events(
        self, filter: AuditEventFilter | None = None
    ) -> list[AuditEvent]: ...
    async def count_audit_events(self, filter: AuditEventFilter | None = None) -> int: ...
    async def authorize(self, token: str) -> Authorization: ...
    async def stats(self) -> Stats: ...


class AsyncBackend(AsyncStores, Protocol):
    """What a backend's ``BackendSpec.async_factory`` returns; ``AsyncDB`` wraps one. It
    belongs to the event loop that opened it."""

    __slots__ = ()

    async def close(self) -> None:
        """Release every connection and stop every thread of the backend's; idempotent."""
        ...

    async def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the storage answers."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[AsyncStores]:
        """A unit of work: commits on normal exit, rolls everything back on an exception
        (a cancellation included)."""
        ...
