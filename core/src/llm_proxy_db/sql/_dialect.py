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
)
