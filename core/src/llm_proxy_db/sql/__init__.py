"""What SQL backends share: statements, row conversion, timestamp codecs, the store
methods over a small executor, and the goose-compatible migration runner.

A SQL backend supplies a connection (or pool), a ``Dialect`` and a function that maps its
driver's exceptions onto the core's errors; everything else is here, once.
"""

from __future__ import annotations

from ._dialect import POSTGRES, SQLITE, Dialect
from ._goose import Migration, load_migrations, parse_migration
from ._migrate import (
    DbApiMigrationConnection,
    MigrationConnection,
    Migrations,
    MigrationStatus,
    MigrationTarget,
)
from ._statements import RowCodec, Statements
from ._store import (
    ConnectionExecutor,
    Executor,
    IntegrityViolation,
    PooledExecutor,
    SqlStores,
    Translate,
    sql_transaction,
)
from ._timestamps import (
    decode_naive_utc,
    decode_text_timestamp,
    encode_naive_utc,
    encode_text_timestamp,
)

__all__ = [
    "POSTGRES",
    "SQLITE",
    "ConnectionExecutor",
    "DbApiMigrationConnection",
    "Dialect",
    "Executor",
    "IntegrityViolation",
    "Migration",
    "MigrationConnection",
    "MigrationStatus",
    "MigrationTarget",
    "Migrations",
    "PooledExecutor",
    "RowCodec",
    "SqlStores",
    "Statements",
    "Translate",
    "decode_naive_utc",
    "decode_text_timestamp",
    "encode_naive_utc",
    "encode_text_timestamp",
    "load_migrations",
    "parse_migration",
    "sql_transaction",
]
