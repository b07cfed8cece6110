"""The ``DB`` facade: the one object users hold, wrapping the backend the config names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from ._config import Config, FullConfig, config_from_env
from ._errors import ConfigError, DatabaseError, MigrationError
from ._models import AuditEvent, AuditEventFilter, Project, Stats, Token
from ._registry import BackendSpec, Capabilities, get_backend_spec, list_backends

if TYPE_CHECKING:
    from ._protocols import Backend, Stores
    from .sql import Migrations

__all__ = ["DB", "StoreFacade", "new", "new_from_full_config"]


def _require(value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")


class StoreFacade:
    """The store methods, checked for argument types, then handed to the backend.

    ``DB`` is one; so is the object a ``DB.transaction()`` yields.
    """

    __slots__ = ("_stores",)

    def __init__(self, stores: Stores) -> None:
        self._stores = stores

    # Projects
    def create_project(self, project: Project) -> Project:
        _require(project, Project, "project")
        return self._stores.create_project(project)

    def get_project_by_id(self, project_id: str) -> Project:
        _require(project_id, str, "project_id")
        return self._stores.get_project_by_id(project_id)

    def update_project(self, project: Project) -> Project:
        _require(project, Project, "project")
        return self._stores.update_project(project)

    def delete_project(self, project_id: str) -> None:
        _require(project_id, str, "project_id")
        self._stores.delete_project(project_id)

    def list_projects(self) -> list[Project]:
        return self._stores.list_projects()

    # Tokens
    def create_token(self, token: Token) -> Token:
        _require(token, Token, "token")
        return self._stores.create_token(token)

    def get_token_by_id(self, token: str) -> Token:
        _require(token, str, "token")
        return self._stores.get_token_by_id(token)

    def update_token(self, token: Token) -> Token:
        _require(token, Token, "token")
        return self._stores.update_token(token)

    def delete_token(self, token: str) -> None:
        _require(token, str, "token")
        self._stores.delete_token(token)

    def list_tokens(self, project_id: str | None = None) -> list[Token]:
        if project_id is not None:
            _require(project_id, str, "project_id")
        return self._stores.list_tokens(project_id)

    def increment_token_usage(self, token: str) -> Token:
        _require(token, str, "token")
        return self._stores.increment_token_usage(token)

    def revoke_token(self, token: str) -> None:
        _require(token, str, "token")
        self._stores.revoke_token(token)

    def revoke_project_tokens(self, project_id: str) -> int:
        _require(project_id, str, "project_id")
        return self._stores.revoke_project_tokens(project_id)

    def revoke_expired_tokens(self) -> int:
        return self._stores.revoke_expired_tokens()

    def increment_cache_hit_count(self, token: str, delta: int = 1) -> None:
        _require(token, str, "token")
        if not isinstance(delta, int) or isinstance(delta, bool) or delta < 1:
            raise ValueError(f"delta must be an integer >= 1, got {delta!r}")
        self._stores.increment_cache_hit_count(token, delta)

    def reset_token_usage(self, token: str) -> Token:
        _require(token, str, "token")
        return self._stores.reset_token_usage(token)

    # Audit
    def create_audit_event(self, event: AuditEvent) -> AuditEvent:
        _require(event, AuditEvent, "event")
        return self._stores.create_audit_event(event)

    def get_audit_event_by_id(self, event_id: str) -> AuditEvent:
        _require(event_id, str, "event_id")
        return self._stores.get_audit_event_by_id(event_id)

    def list_audit_events(self, filter: AuditEventFilter | None = None) -> list[AuditEvent]:
        if filter is not None:
            _require(filter, AuditEventFilter, "filter")
        return self._stores.list_audit_events(filter)

    def count_audit_events(self, filter: AuditEventFilter | None = None) -> int:
        if filter is not None:
            _require(filter, AuditEventFilter, "filter")
        return self._stores.count_audit_events(filter)

    # Operators
    def stats(self) -> Stats:
        """Counts of projects, tokens and requests, and the storage size in bytes."""
        return self._stores.stats()


class _Closed:
    """Stands in for the backend after ``close()``: every use raises ``DatabaseError``."""

    message = "the database is closed"

    def __getattr__(self, name: str) -> NoReturn:
        raise DatabaseError(self.message)


class _Ended(_Closed):
    """Stands in for a transaction's stores once its block has ended."""

    message = "the transaction has ended; use the DB, or start a new transaction"


class DB(StoreFacade):
    """An open database: the three stores, transactions, health and migrations.

    Open one with :func:`new` (SQLite) or :func:`new_from_full_config` (any backend); close
    it with :meth:`close` or use it as a context manager. Safe to share between threads.
    """

    __slots__ = ("_backend", "_migrations", "backend_spec", "config")

    def __init__(
        self,
        backend: Backend,
        *,
        config: FullConfig,
        backend_spec: BackendSpec,
        migrations: Migrations | None = None,
    ) -> None:
        super().__init__(backend)
        self._backend: Backend | Any = backend
        self._migrations = migrations
        self.config = config
        """The configuration this database was opened with."""
        self.backend_spec = backend_spec
        """The spec of the backend behind this database."""

    @property
    def capabilities(self) -> Capabilities:
        """The optional abilities the backend declares."""
        return self.backend_spec.capabilities

    @property
    def migrations(self) -> Migrations:
        """The schema migration runner (SQL backends only)."""
        if self._backend.__class__ is _Closed:
            raise DatabaseError("the database is closed")
        if self._migrations is None:
            raise MigrationError(f"the {self.backend_spec.name} backend has no schema migrations")
        return self._migrations

    def close(self) -> None:
        """Release every connection. Idempotent; later calls raise ``DatabaseError``."""
        backend, self._backend = self._backend, _Closed()
        self._stores = self._backend
        if not isinstance(backend, _Closed):
            backend.close()

    def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the storage answers."""
        self._backend.health_check()

    @contextmanager
    def transaction(self) -> Iterator[StoreFacade]:
        """A unit of work: commits on normal exit, rolls back everything on an exception."""
        with self._backend.transaction() as stores:
            facade = StoreFacade(stores)
            try:
                yield facade
            finally:
                facade._stores = _Ended()

    def __enter__(self) -> DB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if isinstance(self._backend, _Closed) else "open"
        return f"<DB {self.backend_spec.name} {state}>"


def new(config: Config | None = None) -> DB:
    """Open the default SQLite database (``data/llm-proxy.db`` unless ``config`` says)."""
    return new_from_full_config(FullConfig.from_config(config or Config()))


def new_from_full_config(config: FullConfig | None = None) -> DB:
    """Open the backend named by ``config.driver`` (default: :func:`config_from_env`),
    running pending migrations first when ``config.auto_migrate`` is true."""
    config = config_from_env() if config is None else config
    spec = get_backend_spec(config.driver)
    try:
        backend = spec.factory(config)
    except ImportError as exc:  # the backend's driver is missing or broken
        info = next((i for i in list_backends() if i.name == spec.name), None)
        origin = info.distribution if info and info.distribution else "registered in code"
        raise ConfigError(
            f"backend {spec.name!r} ({origin}) cannot load its driver: {exc}; "
            "reinstall that distribution with its dependencies"
        ) from None
    migrations = None
    try:
        if spec.migrations is not None:
            from .sql import Migrations, MigrationTarget

            if not hasattr(backend, "migration_connection"):
                raise ConfigError(
                    f"backend {spec.name!r} ships migrations but its backend object has no "
                    "migration_connection() method"
                )
            target: MigrationTarget = backend  # type: ignore[assignment]
            migrations = Migrations(spec.migrations, target)
            if config.auto_migrate:
                migrations.up()
            else:
                migrations.check_schema()
    except BaseException:
        backend.close()
        raise
    return DB(backend, config=config, backend_spec=spec, migrations=migrations)
