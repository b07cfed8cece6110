"""The reference model of the stateful conformance test: the store contract, written plainly.

Three dicts and the contract's rules, implemented here on purpose from scratch: nothing in
this module calls the memory backend or the helpers the backends share
(``AuditEventFilter.matches``/``select``, ``Token.check_usable``/``is_expired``,
``metadata_text``). If the model reused them, a bug in them would hide from the very test
meant to find it.

Only the records (``Project``, ``Token``, ``AuditEvent``) and the contract's exception
classes are shared: they are the vocabulary of the contract, not its semantics.

Times the store sets itself (``updated_at``, ``last_used_at``, a revoke's
``deactivated_at``) are passed in as ``now``: the state machine checks the backend's value
against the call's clock window and then hands that value to the model, which adopts it.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from .._errors import (
    AlreadyExistsError,
    AuditEventNotFoundError,
    ProjectExistsError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
)
from .._models import AuditEvent, AuditEventFilter, Authorization, Project, Token

__all__ = ["ReferenceModel"]


class ReferenceModel:
    """What a correct store holds and answers, as plain dicts."""

    def __init__(self) -> None:
        self.projects: dict[str, Project] = {}
        self.tokens: dict[str, Token] = {}
        self.events: dict[str, AuditEvent] = {}
        #: Tokens whose ``deactivated_at`` the last revoke set from its ``now``: the
        #: machine replaces that guess with the backend's own stamp (see ``adopt``).
        self.stamped: list[str] = []

    def copy(self) -> ReferenceModel:
        """An independent copy (the records are immutable, so shallow dict copies do)."""
        other = ReferenceModel()
        other.projects = dict(self.projects)
        other.tokens = dict(self.tokens)
        other.events = dict(self.events)
        return other

    # -- projects -------------------------------------------------------------------------

    def create_project(self, project: Project) -> Project:
        if project.id in self.projects:
            raise ProjectExistsError("duplicate project id")
        if any(p.name == project.name for p in self.projects.values()):
            raise ProjectExistsError("duplicate project name")
        self.projects[project.id] = project
        return project

    def get_project(self, project_id: str) -> Project:
        if project_id not in self.projects:
            raise ProjectNotFoundError("no such project")
        return self.projects[project_id]

    def update_project(self, project: Project, now: datetime) -> Project:
        stored = self.get_project(project.id)
        for other in self.projects.values():
            if other.id != project.id and other.name == project.name:
                raise ProjectExistsError("duplicate project name")
        updated = Project(
            id=stored.id,
            name=project.name,
            openai_api_key=project.openai_api_key,
            is_active=project.is_active,
            deactivated_at=project.deactivated_at,
            created_at=stored.created_at,
            updated_at=now,
        )
        self.projects[project.id] = updated
        return updated

    def delete_project(self, project_id: str) -> None:
        self.get_project(project_id)
        del self.projects[project_id]
        for value in [v for v, t in self.tokens.items() if t.project_id == project_id]:
            del self.tokens[value]

    def list_projects(self) -> list[Project]:
        names = sorted(p.name for p in self.projects.values())
        by_name = {p.name: p for p in self.projects.values()}
        return [by_name[name] for name in names]

    # -- tokens ---------------------------------------------------------------------------

    def create_token(self, token: Token) -> Token:
        if token.project_id not in self.projects:
            raise ProjectNotFoundError("token for an unknown project")
        if token.token in self.tokens:
            raise TokenExistsError("duplicate token")
        self.tokens[token.token] = token
        return token

    def get_token(self, value: str) -> Token:
        if value not in self.tokens:
            raise TokenNotFoundError("no such token")
        return self.tokens[value]

    def update_token(self, token: Token) -> Token:
        stored = self.get_token(token.token)
        updated = attrs.evolve(
            stored,
            expires_at=token.expires_at,
            is_active=token.is_active,
            deactivated_at=token.deactivated_at,
            max_requests=token.max_requests,
        )
        self.tokens[token.token] = updated
        return updated

    def delete_token(self, value: str) -> None:
        self.get_token(value)
        del self.tokens[value]

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        """Newest ``created_at`` first; the contract leaves the order of ties open."""
        chosen = [
            t for t in self.tokens.values() if project_id is None or t.project_id == project_id
        ]
        chosen.sort(key=lambda t: t.created_at, reverse=True)
        return chosen

    def increment_token_usage(self, value: str, now: datetime) -> Token:
        stored = self.get_token(value)
        if not stored.is_active:
            raise TokenInactiveError("inactive")
        if stored.expires_at is not None and stored.expires_at <= now:
            raise TokenExpiredError("expired")
        if not self.projects[stored.project_id].is_active:
            raise ProjectInactiveError("project inactive")
        if stored.max_requests is not None and stored.request_count >= stored.max_requests:
            raise TokenLimitReachedError("limit reached")
        updated = attrs.evolve(stored, request_count=stored.request_count + 1, last_used_at=now)
        self.tokens[value] = updated
        return updated

    def authorize(self, value: str, now: datetime) -> Authorization:
        counted = self.increment_token_usage(value, now)
        return Authorization(token=counted, project=self.projects[counted.project_id])

    def _deactivate(self, value: str, now: datetime) -> None:
        stored = self.tokens[value]
        if stored.deactivated_at is None:
            self.stamped.append(value)
            stamp = now
        else:
            stamp = stored.deactivated_at
        self.tokens[value] = attrs.evolve(stored, is_active=False, deactivated_at=stamp)

    def revoke_token(self, value: str, now: datetime) -> None:
        self.stamped = []
        self.get_token(value)
        self._deactivate(value, now)

    def revoke_project_tokens(self, project_id: str, now: datetime) -> int:
        self.stamped = []
        chosen = [v for v, t in self.tokens.items() if t.project_id == project_id and t.is_active]
        for value in chosen:
            self._deactivate(value, now)
        return len(chosen)

    def revoke_expired_tokens(self, now: datetime) -> int:
        self.stamped = []
        chosen = [
            v
            for v, t in self.tokens.items()
            if t.is_active and t.expires_at is not None and t.expires_at <= now
        ]
        for value in chosen:
            self._deactivate(value, now)
        return len(chosen)

    def adopt(self, value: str, deactivated_at: datetime | None) -> None:
        """Take the backend's own ``deactivated_at`` for a token the last revoke stamped."""
        self.tokens[value] = attrs.evolve(self.tokens[value], deactivated_at=deactivated_at)

    def increment_cache_hit_count(self, value: str, delta: int) -> None:
        if delta < 1:
            raise ValueError("delta must be >= 1")
        stored = self.get_token(value)
        self.tokens[value] = attrs.evolve(stored, cache_hit_count=stored.cache_hit_count + delta)

    def reset_token_usage(self, value: str) -> Token:
        updated = attrs.evolve(self.get_token(value), request_count=0)
        self.tokens[value] = updated
        return updated

    # -- audit ----------------------------------------------------------------------------

    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        if event.id in self.events:
            raise AlreadyExistsError("duplicate audit event id")
        self.events[event.id] = event
        return event

    def create_audit_events(self, events: list[AuditEvent]) -> int:
        added = 0
        for event in events:
            if event.id not in self.events:
                self.events[event.id] = event
                added += 1
        return added

    def get_audit_event(self, event_id: str) -> AuditEvent:
        if event_id not in self.events:
            raise AuditEventNotFoundError("no such audit event")
        return self.events[event_id]

    def list_audit_events(self, flt: AuditEventFilter | None) -> list[AuditEvent]:
        if flt is not None and flt.before_id is not None and flt.before_id not in self.events:
            raise AuditEventNotFoundError("no such audit event")
        found = [e for e in self.events.values() if flt is None or self._passes(flt, e)]
        found.sort(key=lambda e: e.id, reverse=True)  # the tie-breaker first (sort is stable)
        found.sort(key=lambda e: e.timestamp, reverse=True)
        if flt is None:
            return found
        start = flt.offset
        stop = len(found) if flt.limit is None else start + flt.limit
        return found[start:stop]

    def count_audit_events(self, flt: AuditEventFilter | None) -> int:
        if flt is not None and flt.before_id is not None and flt.before_id not in self.events:
            raise AuditEventNotFoundError("no such audit event")
        return sum(1 for e in self.events.values() if flt is None or self._passes(flt, e))

    def _passes(self, flt: AuditEventFilter, event: AuditEvent) -> bool:
        """The filter, ``before_id`` included (the events after it in the list's order)."""
        if flt.before_id is not None:
            anchor = self.events[flt.before_id]
            older = event.timestamp < anchor.timestamp
            if not (older or (event.timestamp == anchor.timestamp and event.id < anchor.id)):
                return False
        return _passes(flt, event)


def _passes(flt: AuditEventFilter, event: AuditEvent) -> bool:
    """The contract's filter, field by field (paging aside)."""
    exact = (
        (flt.action, event.action),
        (flt.actor, event.actor),
        (flt.project_id, event.project_id),
        (flt.outcome, event.outcome),
        (flt.client_ip, event.client_ip),
        (flt.request_id, event.request_id),
        (flt.correlation_id, event.correlation_id),
        (flt.method, event.method),
        (flt.path, event.path),
    )
    if any(wanted is not None and wanted != actual for wanted, actual in exact):
        return False
    if flt.start_time is not None and not event.timestamp >= flt.start_time:
        return False
    if flt.end_time is not None and not event.timestamp < flt.end_time:
        return False
    if flt.search is None:
        return True
    haystack = [
        event.action,
        event.actor,
        event.request_id,
        event.correlation_id,
        event.client_ip,
        event.method,
        event.path,
        event.reason,
    ]
    haystack.extend(_metadata_words(event.metadata))
    needle = flt.search.lower()
    return any(text is not None and needle in text.lower() for text in haystack)


def _metadata_words(metadata: dict[str, object] | None) -> list[str]:
    """The keys and values of (flat) metadata as text.

    The state machine only searches for needles that cannot span two of them in the
    stored JSON text (no quotes, colons, commas, braces, spaces or backslashes), so this
    agrees with a backend that searches the JSON text, whatever its layout.
    """
    if metadata is None:
        return []
    words: list[str] = []
    for key, value in metadata.items():
        words.append(key)
        words.append(str(value))
    return words
