"""The PostgreSQL dialect: how PostgreSQL differs, as data for the shared store logic."""

from __future__ import annotations

from llm_proxy_db.sql import Dialect, decode_naive_utc, encode_naive_utc

__all__ = ["POSTGRES"]

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
    update_returning=True,
    coalesced_increments=True,  # Statements.increment_batch: unnest(text[], int[])
    update_from_returns_joined=True,  # authorize: one UPDATE ... FROM projects ... RETURNING
    json_rows="jsonb_array_elements(?::jsonb) AS r",  # a batch insert: one JSON parameter
    max_parameters=65535,  # the protocol's bound: a batch insert is chunked below it
    rowcount="matched",
    like_escape="!",
    transactional_ddl=True,
    insert_or_ignore="INSERT INTO {table} ({columns}) {source} ON CONFLICT DO NOTHING",
    # The hot-path indexes (migration 00100) declare the same collation on these columns,
    # so ORDER BY ... COLLATE "C" is still read from them.
    binary_collation=' COLLATE "C"',
    # psycopg sends a query without parameters with the simple protocol: one round trip
    # for "RELEASE SAVEPOINT ...; SAVEPOINT ..." between two calls of a transaction.
    multi_statement=True,
)
