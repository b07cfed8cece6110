"""The SQLite dialect: how SQLite differs, as data for the shared store logic."""

from __future__ import annotations

from llm_proxy_db.sql import Dialect, decode_text_timestamp, encode_text_timestamp

__all__ = ["SQLITE"]

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
    update_returning=True,  # since SQLite 3.35
    returning_subqueries=True,
    executemany_inserts=True,  # sqlite3 sums an executemany's rowcount
    max_parameters=32766,  # SQLITE_MAX_VARIABLE_NUMBER since 3.32
    rowcount="matched",
    like_escape="!",
    transactional_ddl=True,
    insert_or_ignore="INSERT OR IGNORE INTO {table} ({columns}) {source}",
    binary_collation="",  # BINARY is the default collation
    # Our own values (UTC text, space separator) compare as text. A value another writer
    # left in another form (the Go driver's local offsets, a 'T', no offset) is rewritten
    # to UTC text first, at millisecond precision (all SQLite's date functions keep).
    comparable_time_template=(
        "(CASE WHEN {column} LIKE '____-__-__ __:__:__%+00:00' THEN {column} "
        "ELSE rtrim(rtrim(strftime('%Y-%m-%d %H:%M:%f', {column}), '0'), '.') || '+00:00' END)"
    ),
)
"""SQLite 3.35 or later (``RETURNING``), as Python 3.11's ``sqlite3`` ships it."""
