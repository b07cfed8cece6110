"""What SQL backends share: the store logic, its executors, statements, row conversion,
timestamp codecs and the goose-compatible migration runner.

This module is part of the backend-author interface (versioned by
``llm_proxy_db.STORAGE_API_VERSION``). A SQL backend supplies a :class:`Dialect` (its
differences as data), a connection pool (:class:`DbApiPool` fits DB-API drivers) with
:class:`HeldConnections` in front of it (a thread keeps its connection between calls), a
``translate`` function mapping its driver's exceptions onto the core's errors, and
executors (:class:`DbApiExecutor` and :class:`AsyncDbApiExecutor` fit DB-API drivers);
the store logic is here, once, and runs on either executor.
"""

from __future__ import annotations

from .._models import fold_case
from ._dialect import Dialect
from ._execute import AsyncDbApiExecutor, AsyncExecutor, DbApiExecutor, Executor
from ._goose import Migration, load_migrations, parse_migration
from ._holding import Connections, HeldConnections, Pool
from ._integrity import IntegrityViolation, Translate, ViolationKind
from ._logic import StoreLogic
from ._migrate import (
    DbApiMigrationConnection,
    MigrationConnection,
    Migrations,
    MigrationStatus,
    MigrationTarget,
)
from ._operation import Flow, Operation, Step, Steps
from ._pool import DbApiPool
from ._statements import RowCodec, Statements
from ._stores import AsyncSqlBackend, AsyncSqlStores, SqlBackend, SqlStores
from ._timestamps import (
    decode_naive_utc,
    decode_text_timestamp,
    encode_naive_utc,
    encode_text_timestamp,
)

__all__ = [
    "AsyncDbApiExecutor",
    "AsyncExecutor",
    "AsyncSqlBackend",
    "AsyncSqlStores",
    "Connections",
    "DbApiExecutor",
    "DbApiMigrationConnection",
    "DbApiPool",
    "Dialect",
    "Executor",
    "Flow",
    "HeldConnections",
    "IntegrityViolation",
    "Migration",
    "MigrationConnection",
    "MigrationStatus",
    "MigrationTarget",
    "Migrations",
    "Operation",
    "Pool",
    "RowCodec",
    "SqlBackend",
    "SqlStores",
    "Statements",
    "Step",
    "Steps",
    "StoreLogic",
    "Translate",
    "ViolationKind",
    "decode_naive_utc",
    "decode_text_timestamp",
    "encode_naive_utc",
    "encode_text_timestamp",
    "fold_case",
    "load_migrations",
    "parse_migration",
]
