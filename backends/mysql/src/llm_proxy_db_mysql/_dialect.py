"""The MySQL dialect: how MySQL and MariaDB differ, as data for the shared store logic."""

from __future__ import annotations

from llm_proxy_db.sql import Dialect, decode_naive_utc, encode_naive_utc

__all__ = ["MYSQL"]

MYSQL = Dialect(
    name="mysql",
    paramstyle="format",
    encode_time=encode_naive_utc,  # DATETIME(6) holds no zone: UTC, the session's too
    decode_time=decode_naive_utc,
    begin_write="START TRANSACTION",
    # goose's MySQL layout (its dialect's CREATE TABLE, as the Go program makes it).
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
        "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
        "WHERE table_schema = DATABASE()"
    ),
    update_returning=False,  # MariaDB has RETURNING for INSERT and DELETE only; MySQL none
    counter_in_last_insert_id=True,  # the new count comes back in the OK packet
    rowcount="matched",  # every connection sets CLIENT.FOUND_ROWS
    like_escape="!",  # a backslash is a syntax error under MySQL's default sql_mode
    transactional_ddl=False,  # DDL commits implicitly
    insert_or_ignore="INSERT IGNORE INTO {table} ({columns}) {source}",
    # The migrations after 100 give the ordered text columns (project names, token values,
    # ids) the binary no-pad collation: ORDER BY reads them by code point from their
    # indexes as they are. A COLLATE here would differ from the column's and make MySQL
    # sort every listing in memory instead.
    binary_collation="",
    project_key_column="api_key",  # the Go program's MySQL schema name
)
"""MySQL 8 and MariaDB 10.6 or later (MariaDB 10.11 is what the tests run)."""
