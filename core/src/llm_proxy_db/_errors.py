"""The exception tree: the only exceptions a user or the conformance suite catches.

Backends map their drivers' exceptions onto these at the edge; nothing above a backend
ever sees ``sqlite3.IntegrityError`` or ``psycopg.errors``. Messages never contain a
full token or an upstream API key.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "AuditEventNotFoundError",
    "BackendNotFoundError",
    "ConfigError",
    "DatabaseError",
    "MigrationError",
    "NotFoundError",
    "ProjectExistsError",
    "ProjectInactiveError",
    "ProjectNotFoundError",
    "TokenExistsError",
    "TokenExpiredError",
    "TokenInactiveError",
    "TokenLimitReachedError",
    "TokenNotFoundError",
    "TokenUsageError",
    "TransientError",
]


class DatabaseError(Exception):
    """Base class of every error this package raises."""


class NotFoundError(DatabaseError):
    """The record named by the call does not exist."""


class ProjectNotFoundError(NotFoundError):
    """No project has that id."""


class TokenNotFoundError(NotFoundError):
    """No token has that value."""


class AuditEventNotFoundError(NotFoundError):
    """No audit event has that id."""


class AlreadyExistsError(DatabaseError):
    """A record with the same key already exists."""


class ProjectExistsError(AlreadyExistsError):
    """A project with the same id or name already exists."""


class TokenExistsError(AlreadyExistsError):
    """A token with the same value already exists."""


class TokenUsageError(DatabaseError):
    """``increment_token_usage`` refused the request; nothing was changed."""


class TokenInactiveError(TokenUsageError):
    """The token was revoked or deactivated."""


class TokenExpiredError(TokenUsageError):
    """The token's ``expires_at`` is at or before now."""


class TokenLimitReachedError(TokenUsageError):
    """The token has used all of its ``max_requests``."""


class ProjectInactiveError(TokenUsageError):
    """The token's project is deactivated."""


class ConfigError(DatabaseError, ValueError):
    """The configuration is invalid (also a ``ValueError``)."""


class BackendNotFoundError(ConfigError):
    """No installed backend has the requested name."""


class MigrationError(DatabaseError):
    """A schema migration could not run, or the schema is newer than this package."""


class TransientError(DatabaseError):
    """A failure that may succeed when retried (lost connection, deadlock, serialization)."""
