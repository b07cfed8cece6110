"""SQL text and row conversion, written once for every SQL dialect (sync or async).

Statements use ``?`` placeholders and are rewritten per dialect when ``Statements`` is
built. Columns are selected in the models' field order so rows feed the trusted builders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .._limits import MAX_COUNT
from .._models import (
    EXACT_FILTER_FIELDS,
    SEARCHED_FIELDS,
    AuditEvent,
    AuditEventFilter,
    Project,
    Token,
    metadata_text,
)
from ._dialect import Dialect
from ._rows import Kind, row_decoder

__all__ = ["RowCodec", "Statements"]


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_json_rows = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_iso).encode
"""Rows (sequences of parameters) as one compact JSON array; times as ISO 8601 text."""

PROJECT_COLUMNS = "name, {project_key}, id, is_active, deactivated_at, created_at, updated_at"
"""``{project_key}`` is the dialect's ``project_key_column`` (filled in per dialect)."""
TOKEN_COLUMNS = (
    "project_id, token, expires_at, is_active, deactivated_at, request_count, "
    "max_requests, created_at, last_used_at, cache_hit_count"
)
AUDIT_COLUMNS = (
    "action, actor, outcome, id, timestamp, project_id, request_id, correlation_id, "
    "client_ip, method, path, user_agent, reason, token_id, metadata"
)

_PROJECT_KINDS: tuple[Kind, ...] = (
    "value",
    "value",
    "value",
    "bool",
    "optional_time",
    "time",
    "time",
)
_TOKEN_KINDS: tuple[Kind, ...] = (
    "value",
    "value",
    "optional_time",
    "bool",
    "optional_time",
    "value",
    "value",
    "time",
    "optional_time",
    "count",
)
_AUDIT_KINDS: tuple[Kind, ...] = ("value",) * 4 + ("time",) + ("value",) * 9 + ("json",)


class RowCodec:
    """Models to statement parameters and rows back to models, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.encode_time = dialect.encode_time
        self._dialect = dialect
        decode_time = dialect.decode_time
        self.project: Callable[[Sequence[Any]], Project] = row_decoder(
            Project, _PROJECT_KINDS, decode_time
        )
        """A ``projects`` row (:data:`PROJECT_COLUMNS`) as a ``Project``."""
        self.token: Callable[[Sequence[Any]], Token] = row_decoder(Token, _TOKEN_KINDS, decode_time)
        """A ``tokens`` row (:data:`TOKEN_COLUMNS`) as a ``Token``."""
        self.audit_event: Callable[[Sequence[Any]], AuditEvent] = row_decoder(
            AuditEvent, _AUDIT_KINDS, decode_time
        )
        """An ``audit_events`` row (:data:`AUDIT_COLUMNS`) as an ``AuditEvent``."""
        self._search_sql = " OR ".join(
            f"LOWER({name}) LIKE ? ESCAPE '{dialect.like_escape}'" for name in SEARCHED_FIELDS
        )
        self._before_sql = _BEFORE.format(id=dialect.binary_order("id"))

    def project_params(self, p: Project) -> tuple[Any, ...]:
        enc = self.encode_time
        deactivated = None if p.deactivated_at is None else enc(p.deactivated_at)
        return (
            p.name,
            p.openai_api_key,
            p.id,
            p.is_active,
            deactivated,
            enc(p.created_at),
            enc(p.updated_at),
        )

    def token_params(self, t: Token) -> tuple[Any, ...]:
        enc = self.encode_time
        return (
            t.project_id,
            t.token,
            None if t.expires_at is None else enc(t.expires_at),
            t.is_active,
            None if t.deactivated_at is None else enc(t.deactivated_at),
            t.request_count,
            t.max_requests,
            enc(t.created_at),
            None if t.last_used_at is None else enc(t.last_used_at),
            t.cache_hit_count,
        )

    def audit_params(self, e: AuditEvent) -> tuple[Any, ...]:
        return (
            e.action,
            e.actor,
            e.outcome,
            e.id,
            self.encode_time(e.timestamp),
            e.project_id,
            e.request_id,
            e.correlation_id,
            e.client_ip,
            e.method,
            e.path,
            e.user_agent,
            e.reason,
            e.token_id,
            metadata_text(e.metadata),
        )

    def audit_json(self, events: Sequence[AuditEvent]) -> str:
        """``events`` as one JSON array of :meth:`audit_params` arrays (times as ISO 8601
        text), the parameter of ``Statements.insert_audit_json``."""
        return _json_rows([self.audit_params(e) for e in events])

    def audit_where(self, flt: AuditEventFilter | None) -> tuple[str, list[Any]]:
        """The WHERE clause (or "") and its parameters for a filter."""
        if flt is None:
            return "", []
        clauses: list[str] = []
        params: list[Any] = []
        for name in EXACT_FILTER_FIELDS:
            value = getattr(flt, name)
            if value is not None:
                clauses.append(f"{name} = ?")
                params.append(value)
        if flt.start_time is not None:
            clauses.append("timestamp >= ?")
            params.append(self.encode_time(flt.start_time))
        if flt.end_time is not None:
            clauses.append("timestamp < ?")
            params.append(self.encode_time(flt.end_time))
        if flt.search is not None:
            clauses.append(f"({self._search_sql})")
            params.extend([self._dialect.like_pattern(flt.search)] * len(SEARCHED_FIELDS))
        if flt.before_id is not None:
            clauses.append(self._before_sql)
            params.extend([flt.before_id] * 3)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_ANCHOR_TIME = "(SELECT timestamp FROM audit_events WHERE id = ?)"
_BEFORE = f"timestamp <= {_ANCHOR_TIME} AND (timestamp < {_ANCHOR_TIME} OR {{id}} < ?)"
"""``AuditEventFilter.before_id``: the rows after the named one in the list's order, compared
with its stored timestamp (whatever text form another writer gave it, as ORDER BY sees it)
and its id by code point. The leading ``timestamp <= ...`` is what lets SQLite, PostgreSQL
and MySQL seek the ``(timestamp, id)`` indexes (the plain OR form scans on SQLite; MySQL
does not range-scan a row-value inequality). An unknown id makes the subquery NULL: no rows
match, and the store logic then checks whether the id exists."""


def _qualified(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns.split(", "))


def _insert(table: str, columns: str) -> str:
    placeholders = ", ".join("?" for _ in columns.split(","))
    return f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"


class Statements:
    """Every statement the SQL stores run, in one dialect's placeholder style."""

    insert_project: str
    get_project: str
    update_project: str
    delete_project: str
    list_projects: str
    insert_token: str
    get_token: str
    get_token_and_project_state: str
    update_token: str
    delete_token: str
    list_tokens: str
    list_project_tokens: str
    increment_usage: str
    authorize: str
    """Where ``Dialect.update_from_returns_joined`` holds: the increment joined with the
    project, returning the token's columns then the project's (:data:`PROJECT_COLUMNS`)."""
    get_token_with_project: str
    """The token's columns then its project's, joined."""
    increment_batch: str
    """Where ``Dialect.coalesced_increments`` holds (else ``""``): several tokens' increments
    in one statement, with the tokens and their requested counts as two array parameters
    (one prepared plan for every batch size), then the time twice (expiry, ``last_used_at``).
    Locks the usable tokens' rows in token order, grants each ``min(requested, what its
    quota and MAX_COUNT leave)`` and returns, per token granted, the count granted, the
    token's columns (the final count) then its project's."""
    revoke_token: str
    revoke_project_tokens: str
    revoke_expired_tokens: str
    increment_cache_hits: str
    reset_usage: str
    token_exists: str
    insert_audit: str
    get_audit: str
    audit_exists: str
    stats: str
    audit_order: str
    """The ORDER BY clause of audit listings (newest first, id as the tiebreak, by code
    point), to append to an ad-hoc statement before it goes through :meth:`sql`."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.codec = RowCodec(dialect)
        returning = _RETURNING if dialect.update_returning else {}
        for name, text in _STATEMENTS.items():
            setattr(self, name, dialect.sql(_fill(text + returning.get(name, ""), dialect)))
        self.audit_order = _fill(_AUDIT_ORDER, dialect)
        self.insert_audit_json = (
            dialect.insert_select_ignoring_duplicates(
                "audit_events", AUDIT_COLUMNS, _json_select(dialect, _AUDIT_KINDS)
            )
            if dialect.json_rows
            else ""
        )
        """``create_audit_events`` where the dialect has ``json_rows``: one parameter, the
        batch as JSON (:meth:`RowCodec.audit_json`)."""
        if dialect.returning_subqueries:  # authorize in one statement without UPDATE ... FROM
            self.authorize = dialect.sql(_fill(_AUTHORIZE_BY_SUBQUERIES, dialect))
        batch = _fill(_INCREMENT_BATCH, dialect) if dialect.coalesced_increments else ""
        self.increment_batch = dialect.sql(batch) if batch else ""

    def sql(self, statement: str) -> str:
        """An ad-hoc statement (one built from a filter) in this dialect's style."""
        return self.dialect.sql(statement)


def _fill(template: str, dialect: Dialect) -> str:
    """``template`` with its dialect-dependent parts: ``{expires_at}`` (the column made
    comparable with encoded times), ``{project_key}`` (the project key's column), the
    request count's increment (through ``LAST_INSERT_ID`` where the dialect reads it
    back so) and ``{binary:COLUMN}`` (COLUMN sorting by code point,
    so every backend orders text alike whatever the database's collation)."""
    text = template.replace("{expires_at}", dialect.comparable_time("expires_at"))
    text = text.replace("{tokens.expires_at}", dialect.comparable_time("tokens.expires_at"))
    text = text.replace("{project_key}", dialect.project_key_column)
    if dialect.counter_in_last_insert_id:
        text = text.replace(_COUNT_UP, "request_count = LAST_INSERT_ID(request_count + 1)")
    return _BINARY.sub(lambda match: dialect.binary_order(match.group(1)), text)


# Text ORDER BY keys are written {binary:column}: byte (code-point) order on every dialect.
_BINARY = re.compile(r"\{binary:(\w+)\}")
_AUDIT_ORDER = "ORDER BY timestamp DESC, {binary:id} DESC"
_TOKEN_ORDER = "ORDER BY created_at DESC, {binary:token} DESC"
_TOKEN_USABLE = (
    "is_active AND (expires_at IS NULL OR {expires_at} > ?) "
    "AND (max_requests IS NULL OR request_count < max_requests) "
    f"AND request_count < {MAX_COUNT} "  # the counter's bound: never past a 32-bit INTEGER
    "AND EXISTS (SELECT 1 FROM projects p WHERE p.id = tokens.project_id AND p.is_active)"
)
_COUNT_UP = "request_count = request_count + 1"
_TOKEN_AND_PROJECT = f"{_qualified('tokens', TOKEN_COLUMNS)}, {_qualified('p', PROJECT_COLUMNS)}"
_AUTHORIZE = (
    # increment_usage with the project joined: every column qualified (tokens and projects
    # share is_active, deactivated_at and created_at).
    "UPDATE tokens SET request_count = tokens.request_count + 1, last_used_at = ? "
    "FROM projects p WHERE tokens.token = ? AND p.id = tokens.project_id AND p.is_active "
    "AND tokens.is_active AND (tokens.expires_at IS NULL OR {tokens.expires_at} > ?) "
    "AND (tokens.max_requests IS NULL OR tokens.request_count < tokens.max_requests) "
    f"AND tokens.request_count < {MAX_COUNT} RETURNING {_TOKEN_AND_PROJECT}"
)


def _json_select(dialect: Dialect, kinds: tuple[Kind, ...]) -> str:
    """``SELECT <each field of r> FROM <json_rows>``: the rows of a JSON batch parameter,
    one field per column of ``kinds`` (times through ``json_time_field``)."""
    fields = ", ".join(
        (dialect.json_time_field if kind == "time" else dialect.json_field).format(index=index)
        for index, kind in enumerate(kinds)
    )
    return f"SELECT {fields} FROM {dialect.json_rows}"


_AUTHORIZE_BY_SUBQUERIES = (
    # increment_usage returning the project too, one scalar subquery per project column.
    f"UPDATE tokens SET {_COUNT_UP}, last_used_at = ? WHERE token = ? AND {_TOKEN_USABLE} "
    f"RETURNING {TOKEN_COLUMNS}, "
    + ", ".join(
        f"(SELECT p.{column} FROM projects p WHERE p.id = tokens.project_id)"
        for column in PROJECT_COLUMNS.split(", ")
    )
)
_INCREMENT_BATCH = (
    # The usable rows (the increment's conditions), locked in token order so that two
    # batches never deadlock; each is granted what its quota leaves, at most the request.
    "WITH wanted AS (SELECT token, wanted FROM unnest(?::text[], ?::int[]) AS w(token, wanted)), "
    "locked AS (SELECT tokens.token, tokens.request_count, tokens.max_requests, wanted.wanted "
    "FROM tokens JOIN wanted ON wanted.token = tokens.token "
    "JOIN projects p ON p.id = tokens.project_id AND p.is_active "
    "WHERE tokens.is_active AND (tokens.expires_at IS NULL OR {tokens.expires_at} > ?) "
    "AND (tokens.max_requests IS NULL OR tokens.request_count < tokens.max_requests) "
    f"AND tokens.request_count < {MAX_COUNT} "
    "ORDER BY tokens.token FOR UPDATE OF tokens), "
    "granted AS (SELECT token, LEAST(wanted, "
    f"COALESCE(max_requests, {MAX_COUNT}) - request_count, {MAX_COUNT} - request_count) AS n "
    "FROM locked) "
    "UPDATE tokens SET request_count = tokens.request_count + granted.n, last_used_at = ? "
    "FROM granted, projects p WHERE tokens.token = granted.token AND p.id = tokens.project_id "
    f"RETURNING granted.n, {_TOKEN_AND_PROJECT}"
)
_REVOKE = "UPDATE tokens SET is_active = FALSE, deactivated_at = COALESCE(deactivated_at, ?)"

_STATEMENTS: dict[str, str] = {
    "insert_project": _insert("projects", PROJECT_COLUMNS),
    "get_project": f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?",
    "update_project": (
        "UPDATE projects SET name = ?, {project_key} = ?, is_active = ?, deactivated_at = ?, "
        "updated_at = ? WHERE id = ?"
    ),
    "delete_project": "DELETE FROM projects WHERE id = ?",
    "list_projects": f"SELECT {PROJECT_COLUMNS} FROM projects ORDER BY {{binary:name}}",
    "insert_token": _insert("tokens", TOKEN_COLUMNS),
    "get_token": f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token = ?",
    "get_token_and_project_state": (
        f"SELECT {TOKEN_COLUMNS}, (SELECT p.is_active FROM projects p "
        "WHERE p.id = tokens.project_id) FROM tokens WHERE token = ?"
    ),
    "update_token": (
        "UPDATE tokens SET expires_at = ?, is_active = ?, deactivated_at = ?, max_requests = ? "
        "WHERE token = ?"
    ),
    "delete_token": "DELETE FROM tokens WHERE token = ?",
    "list_tokens": f"SELECT {TOKEN_COLUMNS} FROM tokens {_TOKEN_ORDER}",
    "list_project_tokens": (
        f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE project_id = ? {_TOKEN_ORDER}"
    ),
    "increment_usage": (
        f"UPDATE tokens SET {_COUNT_UP}, last_used_at = ? WHERE token = ? AND {_TOKEN_USABLE}"
    ),
    "authorize": _AUTHORIZE,
    "get_token_with_project": (
        f"SELECT {_TOKEN_AND_PROJECT} FROM tokens JOIN projects p ON p.id = tokens.project_id "
        "WHERE tokens.token = ?"
    ),
    "revoke_token": f"{_REVOKE} WHERE token = ?",
    "revoke_project_tokens": f"{_REVOKE} WHERE project_id = ? AND is_active",
    "revoke_expired_tokens": (
        f"{_REVOKE} WHERE is_active AND expires_at IS NOT NULL AND {{expires_at}} <= ?"
    ),
    "increment_cache_hits": (
        # The second ? is MAX_COUNT - delta: the sum never passes a 32-bit INTEGER.
        "UPDATE tokens SET cache_hit_count = cache_hit_count + ? "
        "WHERE token = ? AND cache_hit_count <= ?"
    ),
    "reset_usage": "UPDATE tokens SET request_count = 0 WHERE token = ?",
    "token_exists": "SELECT 1 FROM tokens WHERE token = ?",
    "insert_audit": _insert("audit_events", AUDIT_COLUMNS),
    "get_audit": f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE id = ?",
    "audit_exists": "SELECT 1 FROM audit_events WHERE id = ?",
    "stats": (
        "SELECT (SELECT COUNT(*) FROM projects), "
        "(SELECT COUNT(*) FROM projects WHERE is_active), "
        "(SELECT COUNT(*) FROM tokens), "
        "(SELECT COUNT(*) FROM tokens "
        "WHERE is_active AND (expires_at IS NULL OR {expires_at} > ?)), "
        "(SELECT COUNT(*) FROM tokens WHERE expires_at IS NOT NULL AND {expires_at} <= ?), "
        "(SELECT COALESCE(SUM(request_count), 0) FROM tokens)"
    ),
}

_RETURNING: dict[str, str] = {
    "update_project": f" RETURNING {PROJECT_COLUMNS}",
    "update_token": f" RETURNING {TOKEN_COLUMNS}",
    "increment_usage": f" RETURNING {TOKEN_COLUMNS}",
    "reset_usage": f" RETURNING {TOKEN_COLUMNS}",
}
"""Where ``Dialect.update_returning`` holds, these updates return the row they changed;
elsewhere the store logic reads it back in the same transaction."""
