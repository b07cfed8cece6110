"""The memory backend: three dicts behind one re-entrant lock.

Every call holds the lock, so each is atomic; a transaction holds it from start to end and
restores a snapshot of the dicts if the block raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import attrs

from llm_proxy_db import (
    MAX_COUNT,
    AlreadyExistsError,
    AuditEvent,
    AuditEventFilter,
    AuditEventNotFoundError,
    Authorization,
    DatabaseError,
    Project,
    ProjectExistsError,
    ProjectNotFoundError,
    Stats,
    Token,
    TokenExistsError,
    TokenNotFoundError,
    mask_token,
    utcnow,
)

__all__ = ["MemoryBackend", "Snapshot"]

_ALL = AuditEventFilter()


def _counter_overflow(token: str, counter: str) -> DatabaseError:
    return DatabaseError(
        f"token {mask_token(token)}: {counter} would pass its maximum {MAX_COUNT}; "
        "nothing was counted"
    )


@attrs.frozen
class Snapshot:
    """The three dicts of a :class:`MemoryBackend` at one moment."""

    projects: dict[str, Project]
    tokens: dict[str, Token]
    events: dict[str, AuditEvent]


class MemoryBackend:
    """A ``Backend`` kept in process memory; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._tokens: dict[str, Token] = {}
        self._events: dict[str, AuditEvent] = {}
        self._closed = False

    # Connection
    def close(self) -> None:
        self._closed = True

    def health_check(self) -> None:
        if self._closed:
            raise DatabaseError("the memory backend is closed")

    @contextmanager
    def transaction(self) -> Iterator[MemoryBackend]:
        with self._lock:
            saved = self.snapshot()
            try:
                yield self
            except BaseException:
                self.restore(saved)
                raise

    def snapshot(self) -> Snapshot:
        """The dicts as they are now, for :meth:`restore` (a transaction's rollback)."""
        with self._lock:
            return Snapshot(dict(self._projects), dict(self._tokens), dict(self._events))

    def restore(self, saved: Snapshot) -> None:
        """Put the dicts back as :meth:`snapshot` saw them (``saved`` is used up)."""
        with self._lock:
            self._projects, self._tokens, self._events = saved.projects, saved.tokens, saved.events

    # Projects
    def create_project(self, project: Project) -> Project:
        with self._lock:
            if project.id in self._projects:
                raise ProjectExistsError(
                    f"a project with id {project.id!r} already exists", key=project.id
                )
            self._check_name_free(project)
            self._projects[project.id] = project
            return project

    def get_project_by_id(self, project_id: str) -> Project:
        with self._lock:
            return self._project(project_id)

    def update_project(self, project: Project) -> Project:
        with self._lock:
            stored = self._project(project.id)
            self._check_name_free(project)
            updated = attrs.evolve(
                stored,
                name=project.name,
                openai_api_key=project.openai_api_key,
                is_active=project.is_active,
                deactivated_at=project.deactivated_at,
                updated_at=utcnow(),
            )
            self._projects[project.id] = updated
            return updated

    def delete_project(self, project_id: str) -> None:
        with self._lock:
            self._project(project_id)
            del self._projects[project_id]
            self._tokens = {k: t for k, t in self._tokens.items() if t.project_id != project_id}

    def list_projects(self) -> list[Project]:
        with self._lock:
            return sorted(self._projects.values(), key=lambda p: p.name)

    # Tokens
    def create_token(self, token: Token) -> Token:
        with self._lock:
            self._project(token.project_id)
            if token.token in self._tokens:
                raise TokenExistsError.for_token(token.token)
            self._tokens[token.token] = token
            return token

    def get_token_by_id(self, token: str) -> Token:
        with self._lock:
            return self._token(token)

    def update_token(self, token: Token) -> Token:
        with self._lock:
            stored = self._token(token.token)
            updated = attrs.evolve(
                stored,
                expires_at=token.expires_at,
                is_active=token.is_active,
                deactivated_at=token.deactivated_at,
                max_requests=token.max_requests,
            )
            self._tokens[token.token] = updated
            return updated

    def delete_token(self, token: str) -> None:
        with self._lock:
            self._token(token)
            del self._tokens[token]

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        with self._lock:
            tokens = [t for t in self._tokens.values() if project_id in (None, t.project_id)]
        return sorted(tokens, key=lambda t: (t.created_at, t.token), reverse=True)

    def increment_token_usage(self, token: str) -> Token:
        with self._lock:
            stored = self._token(token)
            project = self._projects.get(stored.project_id)
            now = utcnow()
            stored.check_usable(project_active=project is not None and project.is_active, now=now)
            if stored.request_count >= MAX_COUNT:
                raise _counter_overflow(token, "request_count")
            updated = attrs.evolve(stored, request_count=stored.request_count + 1, last_used_at=now)
            self._tokens[token] = updated
            return updated

    def authorize(self, token: str) -> Authorization:
        with self._lock:
            counted = self.increment_token_usage(token)
            return Authorization(token=counted, project=self._project(counted.project_id))

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token] = self._revoked(self._token(token), utcnow())

    def revoke_project_tokens(self, project_id: str) -> int:
        with self._lock:
            return self._revoke_where(lambda t: t.project_id == project_id)

    def revoke_expired_tokens(self) -> int:
        now = utcnow()
        with self._lock:
            return self._revoke_where(lambda t: t.is_expired(now))

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        with self._lock:
            stored = self._token(token)
            if stored.cache_hit_count > MAX_COUNT - delta:
                raise _counter_overflow(token, "cache_hit_count")
            self._tokens[token] = attrs.evolve(
                stored, cache_hit_count=stored.cache_hit_count + delta
            )

    def reset_token_usage(self, token: str) -> Token:
        with self._lock:
            updated = attrs.evolve(self._token(token), request_count=0)
            self._tokens[token] = updated
            return updated

    # Audit
    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        with self._lock:
            if event.id in self._events:
                raise AlreadyExistsError(
                    f"an audit event with id {event.id!r} already exists", key=event.id
                )
            self._events[event.id] = event
            return event

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        with self._lock:
            stored = self._events
            before = len(stored)
            for event in events:
                stored.setdefault(event.id, event)
            return len(stored) - before

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        with self._lock:
            event = self._events.get(event_id)
        if event is None:
            raise AuditEventNotFoundError.for_id(event_id)
        return event

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        with self._lock:
            events = list(self._events.values())
        return (filter or _ALL).select(events)

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        with self._lock:
            return (filter or _ALL).count(self._events.values())

    def stats(self) -> Stats:
        now = utcnow()
        with self._lock:
            tokens = list(self._tokens.values())
            return Stats(
                projects=len(self._projects),
                active_projects=sum(p.is_active for p in self._projects.values()),
                tokens=len(tokens),
                active_tokens=sum(t.is_active and not t.is_expired(now) for t in tokens),
                expired_tokens=sum(t.is_expired(now) for t in tokens),
                total_requests=sum(t.request_count for t in tokens),
                size_bytes=None,
            )

    # Helpers (callers hold the lock)
    # Lookups never raise inside an ``except KeyError``: the KeyError would quote the key,
    # a token, as the error's __context__.
    def _project(self, project_id: str) -> Project:
        project = self._projects.get(project_id)
        if project is None:
            raise ProjectNotFoundError.for_id(project_id)
        return project

    def _token(self, token: str) -> Token:
        stored = self._tokens.get(token)
        if stored is None:
            raise TokenNotFoundError.for_token(token)
        return stored

    def _check_name_free(self, project: Project) -> None:
        for other in self._projects.values():
            if other.name == project.name and other.id != project.id:
                raise ProjectExistsError(
                    f"a project named {project.name!r} already exists", key=project.name
                )

    @staticmethod
    def _revoked(token: Token, now: datetime) -> Token:
        return attrs.evolve(token, is_active=False, deactivated_at=token.deactivated_at or now)

    def _revoke_where(self, condition: Callable[[Token], bool]) -> int:
        now = utcnow()
        changed = 0
        for key, token in self._tokens.items():
            if token.is_active and condition(token):
                self._tokens[key] = self._revoked(token, now)
                changed += 1
        return changed
