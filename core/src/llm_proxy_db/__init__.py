"""llm-proxy-db: the storage layer of an LLM API proxy.

Projects, tokens and an audit log behind one small API, on pluggable backends (SQLite by
default, PostgreSQL, in-memory, or a third party's) chosen by name.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from ._audit_writer import AuditWriter
from ._config import Config, DriverType, FullConfig, config_from_env, parse_duration
from ._converter import converter
from ._db import DB, new, new_from_full_config
from ._errors import (
    AlreadyExistsError,
    AuditEventNotFoundError,
    BackendNotFoundError,
    ConfigError,
    DatabaseError,
    MigrationError,
    NotFoundError,
    ProjectExistsError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    TokenUsageError,
    TransientError,
)
from ._limits import MAX_COUNT
from ._models import (
    AuditEvent,
    AuditEventFilter,
    Authorization,
    Project,
    Stats,
    Token,
    generate_token,
    mask_token,
    utcnow,
)
from ._protocols import (
    AsyncBackend,
    AsyncStores,
    AuditStore,
    Backend,
    ProjectStore,
    Stores,
    TokenStore,
)
from ._public import public_dict
from ._registry import (
    MIN_STORAGE_API_VERSION,
    STORAGE_API_VERSION,
    BackendInfo,
    BackendSpec,
    Capabilities,
    hookimpl,
    list_backends,
    register_backend,
    unregister_backend,
)

try:
    __version__ = _metadata.version("llm-proxy-db")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DB",
    "MAX_COUNT",
    "MIN_STORAGE_API_VERSION",
    "STORAGE_API_VERSION",
    "AlreadyExistsError",
    "AsyncBackend",
    "AsyncStores",
    "AuditEvent",
    "AuditEventFilter",
    "AuditEventNotFoundError",
    "AuditStore",
    "AuditWriter",
    "Authorization",
    "Backend",
    "BackendInfo",
    "BackendNotFoundError",
    "BackendSpec",
    "Capabilities",
    "Config",
    "ConfigError",
    "DatabaseError",
    "DriverType",
    "FullConfig",
    "MigrationError",
    "NotFoundError",
    "Project",
    "ProjectExistsError",
    "ProjectInactiveError",
    "ProjectNotFoundError",
    "ProjectStore",
    "Stats",
    "Stores",
    "Token",
    "TokenExistsError",
    "TokenExpiredError",
    "TokenInactiveError",
    "TokenLimitReachedError",
    "TokenNotFoundError",
    "TokenStore",
    "TokenUsageError",
    "TransientError",
    "__version__",
    "config_from_env",
    "converter",
    "generate_token",
    "hookimpl",
    "list_backends",
    "mask_token",
    "new",
    "new_from_full_config",
    "parse_duration",
    "public_dict",
    "register_backend",
    "unregister_backend",
    "utcnow",
]
