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
from .._models import AuditEvent, AuditEventFilter, Authorization, Project, Stats, Token
from ._integrity import IntegrityViolation
from ._operation import Flow, Operation, Step, Steps
from ._statements import AUDIT_COLUMNS, TOKEN_COLUMNS, Statements

_TOKEN_WIDTH = len(TOKEN_COLUMNS.split(", "))
"""Where a token-then-project row's project columns start."""
_AUDIT_WIDTH = len(AUDIT_COLUMNS.split(", "))

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
        # authorize in one statement: a joined UPDATE (PostgreSQL), or scalar subqueries
        # in RETURNING (SQLite)
        self._joined = (
            statements.dialect.update_from_returns_joined or statements.dialect.returning_subqueries
        )
        self._executemany = statements.dialect.executemany_inserts
        self._batch_rows = max(1, statements.dialect.max_parameters // _AUDIT_WIDTH)
        """Rows per multi-row INSERT: its parameters stay within the driver's bound."""
        self._insert_audit_ignoring = statements.dialect.insert_ignoring_duplicates(
            "audit_events", AUDIT_COLUMNS
        )

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

    def authorize(self, token: str) -> Operation[Authorization]:
        # increment_token_usage with the project: one statement where the dialect returns
        # the joined project (PostgreSQL); MySQL's increment then one joined read; else
        # the increment and the project's read in one write transaction (SQLite).
        stamp = self._codec.encode_time(utcnow())
        if self._joined:
            return Step(
                self._s.authorize,
                (stamp, token, stamp),
                decode=self._authorized,
                subject=token,
                in_doubt=_COUNTED,
            )
        if self._last_id:
            return Step(
                self._s.increment_usage,
                (stamp, token, stamp),
                rows=False,
                last_id=True,
                decode=self._authorized_by_id,
                subject=token,
                in_doubt=_COUNTED,
            )
        return Flow(self._count_then_read_project, token, atomic=True)

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

    def create_audit_events(self, events: list[AuditEvent]) -> Operation[int]:
        # One statement per batch: an executemany of the one-row insert-or-skip where the
        # driver sums its rowcount (SQLite), else one multi-row insert-or-skip per chunk of
        # at most max_parameters parameters (several chunks: one transaction).
        if not events:
            return _NOTHING_INSERTED
        if self._executemany:
            params = self._codec.audit_params
            rows = [params(event) for event in events]
            # executemany on an autocommit connection commits each row: one transaction
            # instead (all or nothing, and one commit for the batch).
            insert: Step[int] = Step(self._insert_audit_ignoring, rows, rows=False, many=True)
            return Flow(_summed, [insert], atomic=True)
        if self._s.insert_audit_json:  # one statement, the batch as one JSON parameter
            return Step(self._s.insert_audit_json, (self._codec.audit_json(events),), rows=False)
        size = self._batch_rows
        if len(events) <= size:
            return self._insert_audit_rows(events)
        chunks = [events[start : start + size] for start in range(0, len(events), size)]
        return Flow(_summed, [self._insert_audit_rows(chunk) for chunk in chunks], atomic=True)

    def _insert_audit_rows(self, events: list[AuditEvent]) -> Step[int]:
        params = self._codec.audit_params
        sql = self.dialect.insert_rows_ignoring_duplicates(
            "audit_events", AUDIT_COLUMNS, len(events)
        )
        return Step(sql, [value for e in events for value in params(e)], rows=False)

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

    # -- coalesced increments (Dialect.coalesced_increments) ------------------------------

    def increment_batch(self, wanted: dict[str, int]) -> Operation[dict[str, tuple[int, Any]]]:
        """One statement counting ``wanted[token]`` requests of each token, at most what
        its quota leaves: ``{token: (granted, row)}`` for each token granted any, the row
        holding the final count (:meth:`granted_token`, :meth:`granted_authorization`
        read it); a token left out was not usable (:meth:`refused_increment` says why)."""
        stamp = self._codec.encode_time(utcnow())
        params = (list(wanted), list(wanted.values()), stamp, stamp)
        return Step(self._s.increment_batch, params, decode=_granted, in_doubt=_COUNTED)

    def granted_token(self, row: Any, count: int) -> Token:
        """The token of an :meth:`increment_batch` row, as the increment that set
        ``request_count`` to ``count`` returned it."""
        token_row = list(row[1 : 1 + _TOKEN_WIDTH])
        token_row[_REQUEST_COUNT] = count
        return self._codec.token(token_row)

    def granted_authorization(self, row: Any, count: int) -> Authorization:
        """As :meth:`granted_token`, with the project of the row."""
        return Authorization(
            token=self.granted_token(row, count),
            project=self._codec.project(row[1 + _TOKEN_WIDTH :]),
        )

    def refused_increment(self, token: str) -> Operation[Token]:
        """After a batch left ``token``'s request uncounted: the precise refusal (or the
        count, if a concurrent change made the token usable again), as a refused
        ``increment_token_usage`` explains it."""
        return self._explain_refusal(token, utcnow())

    def refused_authorize(self, token: str) -> Operation[Authorization]:
        """:meth:`refused_increment` for ``authorize``."""
        return Flow(self._authorize_refusal, token, utcnow())

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

    def _count_then_read_project(self, token: str) -> Steps[Authorization]:
        now = utcnow()  # taken when the flow runs (again, on a retry)
        stamp = self._codec.encode_time(now)
        params = (stamp, token, stamp)
        counted: Token
        if self._returning:
            rows = yield Step(self._s.increment_usage, params, in_doubt=_COUNTED)
            if rows:
                counted = self._codec.token(rows[0])
            else:
                counted = yield self._explain_refusal(token, now)
        else:
            matched = yield Step(self._s.increment_usage, params, rows=False, in_doubt=_COUNTED)
            read = self.get_token_by_id(token) if matched else self._explain_refusal(token, now)
            counted = yield read
        project: Project = yield self.get_project_by_id(counted.project_id)
        return Authorization(token=counted, project=project)

    def _authorize_refusal(self, token: str, now: Any) -> Steps[Authorization]:
        # The refusal explained as for increment_token_usage; if the explanation counted
        # the request after all (a concurrent change), the project is read.
        counted: Token = yield self._explain_refusal(token, now)
        project: Project = yield self.get_project_by_id(counted.project_id)
        return Authorization(token=counted, project=project)

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

    def _authorized(self, rows: list[Any], token: str) -> Authorization | Flow[Authorization]:
        if rows:
            return self._authorization(rows[0])
        return Flow(self._authorize_refusal, token, utcnow())

    def _authorization(self, row: Any) -> Authorization:
        return Authorization(
            token=self._codec.token(row[:_TOKEN_WIDTH]),
            project=self._codec.project(row[_TOKEN_WIDTH:]),
        )

    def _authorized_by_id(
        self, result: tuple[int, int], token: str
    ) -> Step[Authorization] | Flow[Authorization]:
        matched, count = result
        if matched:
            return Step(
                self._s.get_token_with_project,
                (token,),
                decode=self._read_authorized,
                subject=(token, count),
            )
        return Flow(self._authorize_refusal, token, utcnow())

    def _read_authorized(self, rows: list[Any], subject: tuple[str, int]) -> Authorization:
        # As _read_counted, with the project joined.
        token, count = subject
        if not rows:
            raise TokenNotFoundError.for_token(token)  # deleted since it was counted
        row = list(rows[0])
        row[_REQUEST_COUNT] = count
        return self._authorization(row)

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


def _no_rows() -> Steps[int]:
    yield from ()  # a generator with no step: nothing to run
    return 0


_NOTHING_INSERTED: Flow[int] = Flow(_no_rows)


def _summed(steps: list[Step[int]]) -> Steps[int]:
    total = 0
    for step in steps:
        total += yield step
    return total


def _granted(rows: list[Any], subject: None) -> dict[str, tuple[int, Any]]:
    # Each row: the count granted, then the token's columns (its token second).
    return {row[2]: (int(row[0]), row) for row in rows}


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
