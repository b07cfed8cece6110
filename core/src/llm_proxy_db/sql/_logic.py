"""The store logic of every SQL backend, written once, with no I/O.

Each method of :class:`StoreLogic` takes a store call's arguments and returns the
:class:`~._operation.Operation` that carries it out: which statements, how to read their
results, which error to raise. A blocking or an awaiting executor runs it (see
:mod:`._operation` for the design). Where dialects differ the logic branches on the
``Dialect``'s fields (``update_returning``, ``rowcount``), never on its name.
"""

from __future__ import annotations

import logging
from typing import Any

from .._clock import utcnow
from .._errors import (
    AlreadyExistsError,
    AuditEventNotFoundError,
    DatabaseError,
    ProjectExistsError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenNotFoundError,
    TransientError,
)
from .._limits import MAX_COUNT, counter_overflow_for
from .._masking import mask_token
from .._models import AuditEvent, AuditEventFilter, Project, Stats, Token
from ._integrity import IntegrityViolation
from ._operation import Flow, Operation, Step, Steps
from ._statements import AUDIT_COLUMNS, TOKEN_COLUMNS, Statements

__all__ = ["StoreLogic"]

_log = logging.getLogger(__name__)

_NO_LIMIT = 2**62
_REQUEST_COUNT = TOKEN_COLUMNS.split(", ").index("request_count")
"""The position of ``request_count`` in a ``tokens`` row."""
_COUNTED = "the request may or may not have been counted"
_CACHE_HIT_COUNTED = "the cache hit may or may not have been counted"
_INCREMENT_ATTEMPTS = 3
"""A refused increment is explained by a read; if that read finds nothing wrong (another
client changed the token in between), the increment is tried again, this many times."""


class StoreLogic:
    """Every store method (and ``stats``) as operations, for one dialect's statements."""

    def __init__(self, statements: Statements) -> None:
        self.statements = statements
        self.dialect = statements.dialect
        self._s = statements
        self._codec = statements.codec
        self._returning = statements.dialect.update_returning
        self._counts_matched = statements.dialect.rowcount == "matched"
        self._last_id = statements.dialect.counter_in_last_insert_id

    # -- projects -----------------------------------------------------------------------

    def create_project(self, project: Project) -> Operation[Project]:
        return Step(
            self._s.insert_project,
            self._codec.project_params(project),
            rows=False,
            decode=_subject,
            subject=project,
            on_violation=_project_exists,
        )

    def get_project_by_id(self, project_id: str) -> Operation[Project]:
        return Step(
            self._s.get_project, (project_id,), decode=self._one_project, subject=project_id
        )

    def update_project(self, project: Project) -> Operation[Project]:
        enc = self._codec.encode_time
        deactivated = None if project.deactivated_at is None else enc(project.deactivated_at)
        params = (
            project.name,
            project.openai_api_key,
            project.is_active,
            deactivated,
            enc(utcnow()),
            project.id,
        )
        update: Step[Any] = Step(
            self._s.update_project,
            params,
            rows=self._returning,
            decode=self._updated_project if self._returning else _count,
            subject=project,
            on_violation=_name_taken,
        )
        if self._returning:
            return update
        return Flow(self._update_then_read, update, self.get_project_by_id(project.id), atomic=True)

    def delete_project(self, project_id: str) -> Operation[None]:
        return Step(
            self._s.delete_project,
            (project_id,),
            rows=False,
            decode=_project_deleted,
            subject=project_id,
        )

    def list_projects(self) -> Operation[list[Project]]:
        return Step(self._s.list_projects, decode=self._projects)

    # -- tokens -------------------------------------------------------------------------

    def create_token(self, token: Token) -> Operation[Token]:
        return Step(
            self._s.insert_token,
            self._codec.token_params(token),
            rows=False,
            decode=_subject,
            subject=token,
            on_violation=_token_conflict,
        )

    def get_token_by_id(self, token: str) -> Operation[Token]:
        return Step(self._s.get_token, (token,), decode=self._one_token, subject=token)

    def update_token(self, token: Token) -> Operation[Token]:
        enc = self._codec.encode_time
        params = (
            None if token.expires_at is None else enc(token.expires_at),
            token.is_active,
            None if token.deactivated_at is None else enc(token.deactivated_at),
            token.max_requests,
            token.token,
        )
        return self._token_update(self._s.update_token, params, token.token)

    def delete_token(self, token: str) -> Operation[None]:
        return Step(
            self._s.delete_token, (token,), rows=False, decode=_token_counted, subject=token
        )

    def list_tokens(self, project_id: str | None = None) -> Operation[list[Token]]:
        if project_id is None:
            return Step(self._s.list_tokens, decode=self._tokens)
        return Step(self._s.list_project_tokens, (project_id,), decode=self._tokens)

    def increment_token_usage(self, token: str) -> Operation[Token]:
        # The hot path: one statement counts the request or matches nothing. Only a refusal
        # (nothing matched) continues, as a flow that reads why.
        if self._last_id:
            # One autocommit UPDATE that decides and hands back the new count (MySQL),
            # then the row read; a refusal continues as below.
            stamp = self._codec.encode_time(utcnow())
            return Step(
                self._s.increment_usage,
                (stamp, token, stamp),
                rows=False,
                last_id=True,
                decode=self._counted_by_id,
                subject=token,
                in_doubt=_COUNTED,
            )
        if not self._returning:
            return Flow(self._increment_then_read, token, atomic=True)
        stamp = self._codec.encode_time(utcnow())
        return Step(
            self._s.increment_usage,
            (stamp, token, stamp),
            decode=self._counted,
            subject=token,
            in_doubt=_COUNTED,
        )

    def revoke_token(self, token: str) -> Operation[None]:
        stamp = self._codec.encode_time(utcnow())
        return Step(
            self._s.revoke_token,
            (stamp, token),
            rows=False,
            decode=self._token_changed,
            subject=token,
        )

    def revoke_project_tokens(self, project_id: str) -> Operation[int]:
        stamp = self._codec.encode_time(utcnow())
        return Step(self._s.revoke_project_tokens, (stamp, project_id), rows=False)

    def revoke_expired_tokens(self) -> Operation[int]:
        stamp = self._codec.encode_time(utcnow())
        return Step(self._s.revoke_expired_tokens, (stamp, stamp), rows=False)

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> Operation[None]:
        # delta >= 1 always changes the row: "changed" and "matched" counts agree. Nothing
        # matched: no such token, or the sum would pass MAX_COUNT (a read tells which).
        return Step(
            self._s.increment_cache_hits,
            (delta, token, MAX_COUNT - delta),
            rows=False,
            decode=self._cache_hits_counted,
            subject=token,
            in_doubt=_CACHE_HIT_COUNTED,
        )

    def reset_token_usage(self, token: str) -> Operation[Token]:
        return self._token_update(self._s.reset_usage, (token,), token)

    # -- audit --------------------------------------------------------------------------

    def create_audit_event(self, event: AuditEvent) -> Operation[AuditEvent]:
        return Step(
            self._s.insert_audit,
            self._codec.audit_params(event),
            rows=False,
            decode=_subject,
            subject=event,
            on_violation=_event_exists,
        )

    def get_audit_event_by_id(self, event_id: str) -> Operation[AuditEvent]:
        return Step(self._s.get_audit, (event_id,), decode=self._one_event, subject=event_id)

    def list_audit_events(
        self, filter: AuditEventFilter | None = None
    ) -> Operation[list[AuditEvent]]:
        where, params = self._codec.audit_where(filter)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_events{where} {self._s.audit_order}"
        if filter is not None and (filter.limit is not None or filter.offset):
            sql += " LIMIT ? OFFSET ?"
            params += [_NO_LIMIT if filter.limit is None else filter.limit, filter.offset]
        if filter is None or filter.before_id is None:
            return Step(self._s.sql(sql), params, decode=self._events)
        # Keyset paging: one statement; only an empty page asks whether the id exists.
        return Step(self._s.sql(sql), params, decode=self._events_after, subject=filter.before_id)

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> Operation[int]:
        where, params = self._codec.audit_where(filter)
        sql = self._s.sql(f"SELECT COUNT(*) FROM audit_events{where}")
        if filter is None or filter.before_id is None:
            return Step(sql, params, decode=_first_int)
        return Step(sql, params, decode=self._counted_after, subject=filter.before_id)

    def stats(self) -> Operation[Stats]:
        return Flow(self._stats)

    # -- flows --------------------------------------------------------------------------

    def _stats(self) -> Steps[Stats]:
        stamp = self._codec.encode_time(utcnow())
        counts = yield Step(self._s.stats, (stamp, stamp))
        size = yield Step(self.dialect.size_query)
        projects, active_projects, tokens, active, expired, requests = counts[0]
        return Stats(
            projects=int(projects),
            active_projects=int(active_projects),
            tokens=int(tokens),
            active_tokens=int(active),
            expired_tokens=int(expired),
            total_requests=int(requests),
            size_bytes=int(size[0][0]) if size and size[0][0] is not None else None,
        )

    def _token_update(self, sql: str, params: tuple[Any, ...], token: str) -> Operation[Token]:
        update: Step[Any] = Step(
            sql,
            params,
            rows=self._returning,
            decode=self._one_token if self._returning else _count,
            subject=token,
        )
        if self._returning:
            return update
        return Flow(self._update_then_read, update, self.get_token_by_id(token), atomic=True)

    @staticmethod
    def _update_then_read(update: Step[Any], read: Operation[Any]) -> Steps[Any]:
        # Without RETURNING: the UPDATE, then the row read back in the same transaction;
        # the read decides "not found" (a "changed" rowcount is 0 for an unchanged row).
        yield update
        return (yield read)

    def _increment_then_read(self, token: str) -> Steps[Token]:
        now = utcnow()  # taken when the flow runs (again, on a retry)
        stamp = self._codec.encode_time(now)
        counted = yield Step(
            self._s.increment_usage,
            (stamp, token, stamp),
            rows=False,
            decode=_count,
            in_doubt=_COUNTED,
        )
        token_row: Token = yield (
            self.get_token_by_id(token) if counted else self._explain_refusal(token, now)
        )
        return token_row

    def _explain_refusal(self, token: str, now: Any) -> Flow[Token]:
        return Flow(self._refusal, token, now)

    def _refusal(self, token: str, now: Any) -> Steps[Token]:
        """After a refused increment: read the token and its project's state to raise
        the precise refusal; if nothing is wrong any more (a concurrent change raced the
        increment), increment again."""
        for attempt in range(1, _INCREMENT_ATTEMPTS + 1):
            found = yield Step(self._s.get_token_and_project_state, (token,))
            if not found:
                raise TokenNotFoundError.for_token(token)
            *row, project_active = found[0]
            stored = self._codec.token(row)
            stored.check_usable(project_active=bool(project_active), now=now)
            if stored.request_count >= MAX_COUNT:
                raise counter_overflow_for(token, "request_count")
            _log.debug(
                "the increment of token %s was refused but the token is usable (changed "
                "concurrently): counting again (attempt %d of %d)",
                mask_token(token),
                attempt,
                _INCREMENT_ATTEMPTS,
            )
            now = utcnow()
            stamp = self._codec.encode_time(now)
            if self._returning:
                rows = yield Step(self._s.increment_usage, (stamp, token, stamp), in_doubt=_COUNTED)
                if rows:
                    return self._codec.token(rows[0])
            elif self._last_id:
                matched, count = yield Step(
                    self._s.increment_usage,
                    (stamp, token, stamp),
                    rows=False,
                    last_id=True,
                    in_doubt=_COUNTED,
                )
                if matched:
                    read: Token = yield self._read_counted_step(token, count)
                    return read
            else:
                counted = yield Step(
                    self._s.increment_usage,
                    (stamp, token, stamp),
                    rows=False,
                    decode=_count,
                    in_doubt=_COUNTED,
                )
                if counted:
                    counted_token: Token = yield self.get_token_by_id(token)
                    return counted_token
        _log.warning(
            "token %s kept changing while it was counted: giving up after %d attempts",
            mask_token(token),
            _INCREMENT_ATTEMPTS,
        )
        raise TransientError(f"token {mask_token(token)} kept changing while it was counted")

    # -- decoders (result, subject) -> value ----------------------------------------------

    def _one_project(self, rows: list[Any], project_id: str) -> Project:
        if not rows:
            raise ProjectNotFoundError.for_id(project_id)
        return self._codec.project(rows[0])

    def _updated_project(self, rows: list[Any], project: Project) -> Project:
        return self._one_project(rows, project.id)

    def _projects(self, rows: list[Any], subject: None) -> list[Project]:
        project = self._codec.project
        return [project(row) for row in rows]

    def _one_token(self, rows: list[Any], token: str) -> Token:
        if not rows:
            raise TokenNotFoundError.for_token(token)
        return self._codec.token(rows[0])

    def _tokens(self, rows: list[Any], subject: None) -> list[Token]:
        decode = self._codec.token
        return [decode(row) for row in rows]

    def _counted(self, rows: list[Any], token: str) -> Token | Flow[Token]:
        if rows:
            return self._codec.token(rows[0])
        return self._explain_refusal(token, utcnow())

    def _counted_by_id(self, result: tuple[int, int], token: str) -> Step[Token] | Flow[Token]:
        matched, count = result
        if matched:
            return self._read_counted_step(token, count)
        return self._explain_refusal(token, utcnow())

    def _read_counted_step(self, token: str, count: int) -> Step[Token]:
        return Step(self._s.get_token, (token,), decode=self._read_counted, subject=(token, count))

    def _read_counted(self, rows: list[Any], subject: tuple[str, int]) -> Token:
        # The row as read, with the count this call's increment set (a concurrent one may
        # have counted again since).
        token, count = subject
        if not rows:
            raise TokenNotFoundError.for_token(token)  # deleted since it was counted
        row = list(rows[0])
        row[_REQUEST_COUNT] = count
        return self._codec.token(row)

    def _cache_hits_counted(self, count: int, token: str) -> Step[None] | None:
        if count:
            return None
        return Step(self._s.token_exists, (token,), decode=_cache_hits_overflow, subject=token)

    def _token_changed(self, count: int, token: str) -> Step[None] | None:
        if count:
            return None
        if self._counts_matched:
            raise TokenNotFoundError.for_token(token)
        # Only changed rows were counted: an unchanged token (already revoked) counts 0.
        return Step(self._s.token_exists, (token,), decode=_token_present, subject=token)

    def _one_event(self, rows: list[Any], event_id: str) -> AuditEvent:
        if not rows:
            raise AuditEventNotFoundError.for_id(event_id)
        return self._codec.audit_event(rows[0])

    def _events(self, rows: list[Any], subject: None) -> list[AuditEvent]:
        decode = self._codec.audit_event
        return [decode(row) for row in rows]

    def _events_after(self, rows: list[Any], before_id: str) -> list[AuditEvent] | Step[Any]:
        if rows:
            return self._events(rows, None)
        return Step(self._s.audit_exists, (before_id,), decode=_no_events, subject=before_id)

    def _counted_after(self, rows: list[Any], before_id: str) -> int | Step[Any]:
        count = _first_int(rows, None)
        if count:
            return count
        return Step(self._s.audit_exists, (before_id,), decode=_none_counted, subject=before_id)


def _subject(count: int, subject: Any) -> Any:
    return subject


def _count(count: int, subject: Any) -> int:
    return count


def _first_int(rows: list[Any], subject: None) -> int:
    return int(rows[0][0])


def _no_events(rows: list[Any], before_id: str) -> list[AuditEvent]:
    """After an empty keyset page: empty if the ``before_id`` event exists."""
    if not rows:
        raise AuditEventNotFoundError.for_id(before_id)
    return []


def _none_counted(rows: list[Any], before_id: str) -> int:
    if not rows:
        raise AuditEventNotFoundError.for_id(before_id)
    return 0


def _project_deleted(count: int, project_id: str) -> None:
    if not count:
        raise ProjectNotFoundError.for_id(project_id)


def _token_counted(count: int, token: str) -> None:
    """After a DELETE, or an UPDATE that always changes the row: 0 rows, no such token."""
    if not count:
        raise TokenNotFoundError.for_token(token)


def _cache_hits_overflow(rows: list[Any], token: str) -> None:
    """After an increment of cache hits matched nothing: why."""
    if not rows:
        raise TokenNotFoundError.for_token(token)
    raise counter_overflow_for(token, "cache_hit_count")


def _token_present(rows: list[Any], token: str) -> None:
    if not rows:
        raise TokenNotFoundError.for_token(token)


# -- constraint violations -> the store's errors ------------------------------------------


def _project_exists(violation: IntegrityViolation, project: Project) -> DatabaseError:
    if violation.kind != "unique":
        return violation
    constraint = (violation.constraint or "").lower()
    if "name" in constraint:
        return ProjectExistsError(
            f"a project named {project.name!r} already exists", key=project.name
        )
    if constraint.endswith(("id", "pkey", "primary")):
        return ProjectExistsError(
            f"a project with id {project.id!r} already exists", key=project.id
        )
    return ProjectExistsError(  # the driver did not say which: name both, key neither
        f"a project with id {project.id!r} or name {project.name!r} already exists"
    )


def _name_taken(violation: IntegrityViolation, project: Project) -> DatabaseError:
    if violation.kind != "unique":
        return violation
    return ProjectExistsError(f"a project named {project.name!r} already exists", key=project.name)


def _token_conflict(violation: IntegrityViolation, token: Token) -> DatabaseError:
    if violation.kind == "foreign_key":
        return ProjectNotFoundError.for_id(token.project_id)
    if violation.kind == "unique":
        return TokenExistsError.for_token(token.token)
    return violation


def _event_exists(violation: IntegrityViolation, event: AuditEvent) -> DatabaseError:
    if violation.kind != "unique":
        return violation
    return AlreadyExistsError(f"an audit event with id {event.id!r} already exists", key=event.id)
