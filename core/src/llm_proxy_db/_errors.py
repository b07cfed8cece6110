"""The exception tree: the only exceptions a user or the conformance suite catches.

Backends map their drivers' exceptions onto these at the edge; nothing above a backend
ever sees ``sqlite3.IntegrityError`` or ``psycopg.errors``. Messages never contain a
full token or an upstream API key.
"""

from __future__ import annotations

from ._masking import mask_token

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
    """Base class of every error this package raises.

    The message is the only positional argument; attributes that subclasses add are
    keyword-only and default to None, so every error survives ``pickle`` (which rebuilds
    it from the message and then restores the attributes).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)


class NotFoundError(DatabaseError):
    """The record named by the call does not exist.

    ``key`` is what was looked up: a project or audit-event id, or a token in its masked
    form (``sk-Ab...xyz9``), never the secret itself.
    """

    def __init__(self, message: str = "", *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ProjectNotFoundError(NotFoundError):
    """No project has that id."""

    @classmethod
    def for_id(cls, project_id: str) -> ProjectNotFoundError:
        """The error for an unknown ``project_id``, with the id as ``key``."""
        return cls(f"no project has id {project_id!r}", key=project_id)


class TokenNotFoundError(NotFoundError):
    """No token has that value."""

    @classmethod
    def for_token(cls, token: str) -> TokenNotFoundError:
        """The error for an unknown ``token``, naming it only in its masked form."""
        masked = mask_token(token)
        return cls(f"no token {masked}", key=masked)


class AuditEventNotFoundError(NotFoundError):
    """No audit event has that id."""

    @classmethod
    def for_id(cls, event_id: str) -> AuditEventNotFoundError:
        """The error for an unknown ``event_id``, with the id as ``key``."""
        return cls(f"no audit event has id {event_id!r}", key=event_id)


class AlreadyExistsError(DatabaseError):
    """A record with the same key already exists.

    ``key`` is the id or name that is taken, or the masked token.
    """

    def __init__(self, message: str = "", *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ProjectExistsError(AlreadyExistsError):
    """A project with the same id or name already exists."""


class TokenExistsError(AlreadyExistsError):
    """A token with the same value already exists."""

    @classmethod
    def for_token(cls, token: str) -> TokenExistsError:
        """The error for a duplicate ``token``, naming it only in its masked form."""
        masked = mask_token(token)
        return cls(f"token {masked} already exists", key=masked)


class TokenUsageError(DatabaseError):
    """``increment_token_usage`` refused the request; nothing was changed.

    ``masked_token`` is the token as it may be printed; ``project_id`` its project.
    """

    def __init__(
        self,
        message: str = "",
        *,
        masked_token: str | None = None,
        project_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.masked_token = masked_token
        self.project_id = project_id


class TokenInactiveError(TokenUsageError):
    """The token was revoked or deactivated."""


class TokenExpiredError(TokenUsageError):
    """The token's ``expires_at`` is at or before now."""


class TokenLimitReachedError(TokenUsageError):
    """The token has used all of its ``max_requests`` (the ``max_requests`` attribute)."""

    def __init__(
        self,
        message: str = "",
        *,
        masked_token: str | None = None,
        project_id: str | None = None,
        max_requests: int | None = None,
    ) -> None:
        super().__init__(message, masked_token=masked_token, project_id=project_id)
        self.max_requests = max_requests


class ProjectInactiveError(TokenUsageError):
    """The token's project is deactivated."""


class ConfigError(DatabaseError, ValueError):
    """The configuration is invalid (also a ``ValueError``)."""


class BackendNotFoundError(ConfigError):
    """No installed backend has the requested name."""


class MigrationError(DatabaseError):
    """A schema migration could not run, or the schema is newer than this package.

    ``version`` is the migration file's version when the error is about one file.
    """

    def __init__(self, message: str = "", *, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


class TransientError(DatabaseError):
    """A failure that may succeed when retried (lost connection, deadlock, serialization)."""
