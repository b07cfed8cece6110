"""The dialect: what differs between SQL databases, as named data.

Core names no built-in dialect: each SQL backend defines its own ``Dialect`` (the SQLite
one lives in ``llm_proxy_db_sqlite``, the PostgreSQL one in ``llm_proxy_db_postgres``).
The store logic (:mod:`._logic`) and the statements (:mod:`._statements`) branch on these
fields, never on a dialect's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import attrs

from .._models import fold_case

__all__ = ["Dialect"]

_QMARK = re.compile(r"\?")


def _with_source(template: str) -> str:
    # The older template form: "... VALUES ({values}) ..." (one row's placeholders).
    return template.replace("VALUES ({values})", "{source}")


def _one_character(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or len(value) != 1 or value in "\\'%_":
        raise ValueError(
            f"{attribute.name} must be one character other than a backslash, a quote, "
            f"'%' or '_', got {value!r}"
        )


@attrs.frozen(kw_only=True)
class Dialect:
    """How one SQL database differs: placeholders, value codecs, a few statements and the
    features the store logic relies on.

    Statements are written once with ``?`` placeholders; :meth:`sql` rewrites them for
    drivers that use ``%s``.
    """

    name: str
    """Names the dialect in messages (``llm-proxy-db-<name>`` is the distribution to upgrade)."""
    paramstyle: Literal["qmark", "format"]
    encode_time: Callable[[datetime], Any]
    decode_time: Callable[[Any], datetime]
    begin_write: str
    """Starts a write transaction (SQLite takes the write lock at once)."""
    version_table_ddl: str
    """goose's ``goose_db_version`` table, in goose's layout for this dialect."""
    size_query: str
    """One row, one column: the bytes the database (or this schema's tables) take."""
    update_returning: bool = True
    """``UPDATE ... RETURNING`` is available. Without it an update that returns the row is
    an UPDATE and a SELECT on one connection in one transaction."""
    rowcount: Literal["matched", "changed"] = "matched"
    """What the driver's rowcount of an UPDATE counts: rows the WHERE clause matched
    (SQLite, PostgreSQL) or only rows whose values changed (MySQL without
    ``CLIENT.FOUND_ROWS``). With ``"changed"``, a count of 0 is followed by a read that
    tells "not found" from "already so"."""
    like_escape: str = attrs.field(default="!", validator=_one_character)
    """The ``LIKE ... ESCAPE`` character: portable, never a backslash (a syntax error under
    MySQL's default ``sql_mode``)."""
    transactional_ddl: bool = True
    """A failed migration file's DDL rolls back with its transaction (not so on MySQL)."""
    insert_or_ignore: str = attrs.field(
        default="INSERT INTO {table} ({columns}) {source} ON CONFLICT DO NOTHING",
        converter=_with_source,
    )
    """An INSERT that skips a row whose key exists: ``{table}``, ``{columns}`` and
    ``{source}`` (``VALUES (...)`` or a ``SELECT``) are filled in (MySQL: ``INSERT IGNORE
    INTO {table} ({columns}) {source}``). The older form with ``VALUES ({values})`` in
    place of ``{source}`` is accepted."""
    binary_collation: str = ""
    """Appended to a text column in ORDER BY so it sorts by code point (byte order of the
    UTF-8 text), as the memory backend's Python ``str`` comparison does: ``''`` where that
    is already the default (SQLite's ``BINARY``), ``' COLLATE "C"'`` for PostgreSQL, whose
    default follows the database's locale (under ``en_US``, ``'a' < 'B'``)."""
    comparable_time_template: str = "{column}"
    """SQL that makes a stored time column comparable with an encoded parameter."""
    multi_statement: bool = False
    """The driver runs ``;``-separated statements without parameters in one call (psycopg:
    one round trip). Inside a transaction the executor then sends the release of one call's
    savepoint and the next call's savepoint together."""

    counter_in_last_insert_id: bool = False
    """The increment sets ``request_count = LAST_INSERT_ID(request_count + 1)`` and reads
    the new count from the OK packet (the cursor's ``lastrowid``), then the row: MySQL,
    which has no ``UPDATE ... RETURNING``. The count the caller gets is the one its own
    increment set, whatever a concurrent call did between the two statements."""
    update_from_returns_joined: bool = False
    """``UPDATE tokens ... FROM projects p ... RETURNING p.*`` returns the joined table's
    columns (PostgreSQL): ``authorize`` is then one statement. Elsewhere (SQLite cannot
    return them) it is the increment and a read of the project in one write transaction
    (MySQL: the increment, then one read joining the project)."""
    returning_subqueries: bool = False
    """``RETURNING`` may hold scalar subqueries (SQLite): ``authorize`` is then one
    ``UPDATE tokens ... RETURNING <token columns>, (SELECT p.<column> FROM projects p WHERE
    p.id = tokens.project_id), ...``, where the joined form is not available."""
    coalesced_increments: bool = False
    """The dialect has ``Statements.increment_batch`` (array parameters through ``unnest``,
    ``SELECT ... FOR UPDATE`` in a CTE, ``UPDATE ... FROM ... RETURNING``: PostgreSQL), so
    concurrent increments may be combined (``FullConfig.coalesce_increments``)."""
    executemany_inserts: bool = False
    """A batch of rows is one ``executemany`` of the one-row insert, whose rowcount sums
    the rows inserted (sqlite3). Otherwise it is one multi-row ``INSERT ... VALUES (...),
    (...)`` (PostgreSQL, MySQL), in chunks of at most :attr:`max_parameters` parameters."""
    json_rows: str = ""
    """A FROM item that turns one JSON text parameter, an array of row arrays, into one
    row ``r`` per element (PostgreSQL: ``jsonb_array_elements(?::jsonb) AS r``, parsed
    once). A batch insert is then one short statement with one parameter whatever the
    batch size: one prepared plan, no statement of thousands of placeholders to parse,
    and the rows encoded by :mod:`json` in C rather than value by value. Empty: no such
    form."""
    json_field: str = "r ->> {index}"
    """Element ``{index}`` (from 0) of the row ``r`` of :attr:`json_rows`, as text."""
    json_time_field: str = "(r ->> {index})::timestamp"
    """:attr:`json_field` for a time column: the ISO 8601 text of ``encode_time``'s value
    (or that value itself when it is text) made comparable with the stored column."""
    max_parameters: int = 65535
    """The most parameters one statement may carry (PostgreSQL's protocol: 65535)."""
    project_key_column: str = "openai_api_key"
    """The ``projects`` column holding ``Project.openai_api_key`` (the Go program's MySQL
    schema names it ``api_key``)."""

    def binary_order(self, column: str) -> str:
        """``column`` as an ORDER BY key that sorts text by code point."""
        return f"{column}{self.binary_collation}"

    def comparable_time(self, column: str) -> str:
        """``column`` as an expression that compares correctly with ``encode_time`` values."""
        return self.comparable_time_template.replace("{column}", column)

    def insert_ignoring_duplicates(self, table: str, columns: str) -> str:
        """An INSERT of one row into ``table`` that does nothing if its key exists, with a
        ``?`` placeholder per column (in this dialect's style)."""
        return self.insert_rows_ignoring_duplicates(table, columns, 1)

    def insert_rows_ignoring_duplicates(self, table: str, columns: str, rows: int) -> str:
        """:meth:`insert_ignoring_duplicates` for ``rows`` rows in one statement (a
        multi-row ``VALUES`` list)."""
        one = "(" + ", ".join("?" for _ in columns.split(",")) + ")"
        source = "VALUES " + ", ".join(one for _ in range(rows))
        return self.insert_select_ignoring_duplicates(table, columns, source)

    def insert_select_ignoring_duplicates(self, table: str, columns: str, select: str) -> str:
        """An ``INSERT INTO table (columns) <select>`` that skips the rows whose key exists
        (``select`` with ``?`` placeholders, rewritten to this dialect's style)."""
        return self.sql(self.insert_or_ignore.format(table=table, columns=columns, source=select))

    def like_pattern(self, text: str) -> str:
        """A ``LIKE`` pattern matching ``text`` (lower-cased) literally anywhere, escaped
        with :attr:`like_escape`."""
        escape = self.like_escape
        escaped = fold_case(text).replace(escape, escape * 2)
        escaped = escaped.replace("%", escape + "%").replace("_", escape + "_")
        return f"%{escaped}%"

    def sql(self, statement: str) -> str:
        """``statement`` with its ``?`` placeholders in this dialect's style."""
        if self.paramstyle == "qmark":
            return statement
        return _QMARK.sub("%s", statement.replace("%", "%%"))
