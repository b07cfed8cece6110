"""The tiny dialect object that parameterises everything SQL backends share."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import attrs

from ._timestamps import (
    decode_naive_utc,
    decode_text_timestamp,
    encode_naive_utc,
    encode_text_timestamp,
)

__all__ = ["POSTGRES", "SQLITE", "Dialect"]

_QMARK = re.compile(r"\?")


@attrs.frozen(kw_only=True)
class Dialect:
    """How one SQL database differs: placeholders, value codecs, a few statements.

    Statements are written once with ``?`` placeholders; :meth:`sql` rewrites them for
    drivers that use ``%s``.
    """

    name: str
    paramstyle: Literal["qmark", "format"]
    encode_time: Callable[[datetime], Any]
    decode_time: Callable[[Any], datetime]
    begin_write: str
    """Starts a write transaction (SQLite takes the write lock at once)."""
    version_table_ddl: str
    """goose's ``goose_db_version`` table, in goose's layout for this dialect."""
    size_query: str
    """One row, one column: the bytes the database (or this schema's tables) take."""
    comparable_time_template: str = "{column}"
    """SQL that makes a stored time column comparable with an encoded parameter."""
    binary_collation: str = ""
    """Appended to a text column in ORDER BY so it sorts by code point (byte order of the
    UTF-8 text), as the memory backend's Python ``str`` comparison does: ``''`` where that
    is already the default (SQLite's ``BINARY``), ``' COLLATE "C"'`` for PostgreSQL, whose
    default follows the database's locale (under ``en_US``, ``'a' < 'B'``)."""

    def binary_order(self, column: str) -> str:
        """``column`` as an ORDER BY key that sorts text by code point."""
        return f"{column}{self.binary_collation}"

    def comparable_time(self, column: str) -> str:
        """``column`` as an expression that compares correctly with ``encode_time`` values."""
        return self.comparable_time_template.replace("{column}", column)

    def sql(self, statement: str) -> str:
        """``statement`` with its ``?`` placeholders in this dialect's style."""
        if self.paramstyle == "qmark":
            return statement
        return _QMARK.sub("%s", statement.replace("%", "%%"))


SQLITE = Dialect(
    name="sqlite",
    paramstyle="qmark",
    encode_time=encode_text_timestamp,
    decode_time=decode_text_timestamp,
    begin_write="BEGIN IMMEDIATE",
    version_table_ddl=(
        "CREATE TABLE IF NOT EXISTS goose_db_version (\n"
        "    id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "    version_id INTEGER NOT NULL,\n"
        "    is_applied INTEGER NOT NULL,\n"
        "    tstamp TIMESTAMP DEFAULT (datetime('now'))\n"
        ")"
    ),
    size_query="SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    # Our own values (UTC text, space separator) compare as text. A value another writer
    # left in another form (the Go driver's local offsets, a 'T', no offset) is rewritten
    # to UTC text first, at millisecond precision (all SQLite's date functions keep).
    comparable_time_template=(
        "(CASE WHEN {column} LIKE '____-__-__ __:__:__%+00:00' THEN {column} "
        "ELSE rtrim(rtrim(strftime('%Y-%m-%d %H:%M:%f', {column}), '0'), '.') || '+00:00' END)"
    ),
)

POSTGRES = Dialect(
    name="postgres",
    paramstyle="format",
    encode_time=encode_naive_utc,
    decode_time=decode_naive_utc,
    begin_write="BEGIN",
    version_table_ddl=(
        "CREATE TABLE IF NOT EXISTS goose_db_version (\n"
        "    id serial NOT NULL,\n"
        "    version_id bigint NOT NULL,\n"
        "    is_applied boolean NOT NULL,\n"
        "    tstamp timestamp NULL default now(),\n"
        "    PRIMARY KEY(id)\n"
        ")"
    ),
    size_query=(
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    ),
    # The hot-path indexes (migration 00100) declare the same collation on these columns,
    # so ORDER BY ... COLLATE "C" is still read from them.
    binary_collation=' COLLATE "C"',
)
