"""The store methods of every SQL backend, written once over a tiny ``Executor``.

A backend supplies an executor (how a statement reaches its driver, and how the driver's
exceptions map onto ours); everything else, statements, row conversion, the choice of
error, lives here. An async twin follows the same flow with ``await``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Literal, Protocol

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
from .._models import AuditEvent, AuditEventFilter, Project, Stats, Token, mask_token, utcnow
from ._statements import AUDIT_COLUMNS, Statements

__all__ = [
    "ConnectionExecutor",
    "Executor",
    "IntegrityViolation",
    "PooledExecutor",
    "SqlStores",
    "sql_transaction",
]

_NO_LIMIT = 2**62


class IntegrityViolation(DatabaseError):
    """Raised by an executor for a constraint the database refused; the store names it."""

    def __init__(self, kind: Literal["unique", "foreign_key", "other"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Executor(Protocol):
    """Runs one statement. Driver exceptions come out as ``DatabaseError`` subclasses
    (``IntegrityViolation`` for constraints, ``TransientError`` for retryable failures)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run ``sql`` and return all its rows."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql`` and return how many rows it changed."""
        ...


class _Connection(Protocol):
    def execute(self, sql: Any, params: Any = ...) -> Any: ...


Translate = Callable[[Exception], DatabaseError]
"""Maps a driver exception onto the error tree (never echoing secrets)."""


class ConnectionExecutor:
    """An ``Executor`` on one DB-API connection whose ``execute`` returns a cursor
    (sqlite3 and psycopg 3 both do)."""

    __slots__ = ("_conn", "_driver_error", "_translate")

    def __init__(
        self, conn: _Connection, driver_error: type[Exception], translate: Translate
    ) -> None:
        self._conn = conn
        self._driver_error = driver_error
        self._translate = translate

    # Errors are raised outside the except block so they carry no __context__: the
    # driver's exception may quote a key value (a token) that must never be printed.
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._conn.execute(sql, params).rowcount  # type: ignore[no-any-return]
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error


class PooledExecutor:
    """An ``Executor`` that borrows a connection from a pool for each statement
    (each statement then commits on its own)."""

    __slots__ = ("_checkout", "_driver_error", "_translate")

    def __init__(
        self,
        checkout: Callable[[], AbstractContextManager[_Connection]],
        driver_error: type[Exception],
        translate: Translate,
    ) -> None:
        self._checkout = checkout
        self._driver_error = driver_error
        self._translate = translate

    # The driver's exception leaves the pool's context manager untranslated, so a pool
    # that inspects it (psycopg_pool) can discard a broken connection.
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._checkout() as conn:
                return conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            with self._checkout() as conn:
                return conn.execute(sql, params).rowcount  # type: ignore[no-any-return]
        except self._driver_error as exc:
            error = self._translate(exc)
        raise error


class SqlStores:
    """``ProjectStore``, ``TokenStore`` and ``AuditStore`` (and ``stats``) in SQL."""

    def __init__(self, executor: Executor, statements: Statements) -> None:
        self._ex = executor
        self._s = statements
        self._codec = statements.codec

    # Projects
    def create_project(self, project: Project) -> Project:
        try:
            self._ex.execute(self._s.insert_project, self._codec.project_params(project))
        except IntegrityViolation as exc:
            if exc.kind != "unique":
                raise
            raise ProjectExistsError(
                f"a project with id {project.id!r} or name {project.name!r} already exists"
            ) from None
        return project

    def get_project_by_id(self, project_id: str) -> Project:
        rows = self._ex.query(self._s.get_project, (project_id,))
        if not rows:
            raise _project_not_found(project_id)
        return self._codec.project(rows[0])

    def update_project(self, project: Project) -> Project:
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
        try:
            rows = self._ex.query(self._s.update_project, params)
        except IntegrityViolation as exc:
            if exc.kind != "unique":
                raise
            raise ProjectExistsError(f"a project named {project.name!r} already exists") from None
        if not rows:
            raise _project_not_found(project.id)
        return self._codec.project(rows[0])

    def delete_project(self, project_id: str) -> None:
        if not self._ex.execute(self._s.delete_project, (project_id,)):
            raise _project_not_found(project_id)

    def list_projects(self) -> list[Project]:
        return [self._codec.project(row) for row in self._ex.query(self._s.list_projects)]

    # Tokens
    def create_token(self, token: Token) -> Token:
        try:
            self._ex.execute(self._s.insert_token, self._codec.token_params(token))
        except IntegrityViolation as exc:
            if exc.kind == "foreign_key":
                raise _project_not_found(token.project_id) from None
            if exc.kind != "unique":
                raise
            raise TokenExistsError(f"token {mask_token(token.token)} already exists") from None
        return token

    def get_token_by_id(self, token: str) -> Token:
        rows = self._ex.query(self._s.get_token, (token,))
        if not rows:
            raise _token_not_found(token)
        return self._codec.token(rows[0])

    def update_token(self, token: Token) -> Token:
        enc = self._codec.encode_time
        params = (
            None if token.expires_at is None else enc(token.expires_at),
            token.is_active,
            None if token.deactivated_at is None else enc(token.deactivated_at),
            token.max_requests,
            token.token,
        )
        rows = self._ex.query(self._s.update_token, params)
        if not rows:
            raise _token_not_found(token.token)
        return self._codec.token(rows[0])

    def delete_token(self, token: str) -> None:
        if not self._ex.execute(self._s.delete_token, (token,)):
            raise _token_not_found(token)

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        if project_id is None:
            rows = self._ex.query(self._s.list_tokens)
        else:
            rows = self._ex.query(self._s.list_project_tokens, (project_id,))
        return [self._codec.token(row) for row in rows]

    def increment_token_usage(self, token: str) -> Token:
        for _ in range(3):
            now = utcnow()
            stamp = self._codec.encode_time(now)
            rows = self._ex.query(self._s.increment_usage, (stamp, token, stamp))
            if rows:
                return self._codec.token(rows[0])
            # Refused: read the token and its project's state once to say precisely why.
            found = self._ex.query(self._s.get_token_and_project_state, (token,))
            if not found:
                raise _token_not_found(token)
            *row, project_active = found[0]
            stored = self._codec.token(row)
            stored.check_usable(project_active=bool(project_active), now=now)
            # Nothing is wrong any more: a concurrent change raced us; try again.
        raise TransientError(f"token {mask_token(token)} kept changing; retry the request")

    def revoke_token(self, token: str) -> None:
        stamp = self._codec.encode_time(utcnow())
        if not self._ex.execute(self._s.revoke_token, (stamp, token)):
            raise _token_not_found(token)

    def revoke_project_tokens(self, project_id: str) -> int:
        stamp = self._codec.encode_time(utcnow())
        return self._ex.execute(self._s.revoke_project_tokens, (stamp, project_id))

    def revoke_expired_tokens(self) -> int:
        stamp = self._codec.encode_time(utcnow())
        return self._ex.execute(self._s.revoke_expired_tokens, (stamp, stamp))

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        if not self._ex.execute(self._s.increment_cache_hits, (delta, token)):
            raise _token_not_found(token)

    def reset_token_usage(self, token: str) -> Token:
        rows = self._ex.query(self._s.reset_usage, (token,))
        if not rows:
            raise _token_not_found(token)
        return self._codec.token(rows[0])

    # Audit
    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        try:
            self._ex.execute(self._s.insert_audit, self._codec.audit_params(event))
        except IntegrityViolation as exc:
            if exc.kind != "unique":
                raise
            raise AlreadyExistsError(
                f"an audit event with id {event.id!r} already exists"
            ) from None
        return event

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        rows = self._ex.query(self._s.get_audit, (event_id,))
        if not rows:
            raise AuditEventNotFoundError(f"no audit event has id {event_id!r}")
        return self._codec.audit_event(rows[0])

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        where, params = self._codec.audit_where(filter)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_events{where} {self._s.audit_order}"
        if filter is not None and (filter.limit is not None or filter.offset):
            sql += " LIMIT ? OFFSET ?"
            params += [_NO_LIMIT if filter.limit is None else filter.limit, filter.offset]
        rows = self._ex.query(self._s.sql(sql), params)
        return [self._codec.audit_event(row) for row in rows]

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        where, params = self._codec.audit_where(filter)
        rows = self._ex.query(self._s.sql(f"SELECT COUNT(*) FROM audit_events{where}"), params)
        return int(rows[0][0])

    def stats(self) -> Stats:
        stamp = self._codec.encode_time(utcnow())
        projects, active_projects, tokens, active, expired, requests = self._ex.query(
            self._s.stats, (stamp, stamp)
        )[0]
        size = self._ex.query(self._s.dialect.size_query)
        return Stats(
            projects=int(projects),
            active_projects=int(active_projects),
            tokens=int(tokens),
            active_tokens=int(active),
            expired_tokens=int(expired),
            total_requests=int(requests),
            size_bytes=int(size[0][0]) if size and size[0][0] is not None else None,
        )


@contextmanager
def sql_transaction(
    conn: _Connection,
    statements: Statements,
    driver_error: type[Exception],
    translate: Translate,
) -> Iterator[SqlStores]:
    """Run a block on ``conn`` (in autocommit mode) inside BEGIN ... COMMIT, rolling back
    if the block raises."""
    executor = ConnectionExecutor(conn, driver_error, translate)
    executor.execute(statements.dialect.begin_write)
    try:
        yield SqlStores(executor, statements)
    except BaseException:
        with suppress(Exception):  # the block's own error is the one to report
            conn.execute("ROLLBACK")
        raise
    executor.execute("COMMIT")


def _project_not_found(project_id: str) -> ProjectNotFoundError:
    return ProjectNotFoundError(f"no project has id {project_id!r}")


def _token_not_found(token: str) -> TokenNotFoundError:
    return TokenNotFoundError(f"no token {mask_token(token)}")
