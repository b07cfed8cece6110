"""The ``DB`` facade: the one object users hold, wrapping the backend the config names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from . import _transaction_rule
from ._audit_writer import AuditWriter
from ._compat import OlderBackend
from ._config import Config, FullConfig, config_from_env
from ._delegation import ForwardedStores, forwarding
from ._encrypting import EncryptingBackend
from ._encryption import Cipher
from ._errors import ConfigError, MigrationError
from ._facade import CHECKED_CALL, FacadeState
from ._protocols import Stores
from ._registry import STORAGE_API_VERSION, BackendSpec, get_backend_spec, list_backends

if TYPE_CHECKING:
    from ._protocols import Backend
    from .sql import Migrations

__all__ = ["DB", "StoreFacade", "new", "new_from_full_config", "open_backend"]


@forwarding(CHECKED_CALL, protocol=Stores, checked=True)
class StoreFacade(ForwardedStores):
    """The store methods, checked for argument types, then handed to the backend.

    The object a ``DB.transaction()`` block yields; ``DB`` adds the transaction rule.
    Every method is generated from the ``Stores`` protocol (see :mod:`._delegation`).
    """

    __slots__ = ("_stores",)

    def __init__(self, stores: Stores) -> None:
        self._stores = stores


@forwarding(CHECKED_CALL, checked=True, guarded=True)
class DB(StoreFacade, FacadeState[AuditWriter]):
    """An open database: the three stores, transactions, health and migrations.

    Open one with :func:`new` (SQLite) or :func:`new_from_full_config` (any backend); close
    it with :meth:`close` or use it as a context manager. Safe to share between threads.

    The transaction rule: while a :meth:`transaction` block is open, every call on this
    ``DB`` from inside it (the same thread, or an asyncio task started inside it) raises
    ``DatabaseError`` at once and changes nothing; use the block's own object.
    """

    __slots__ = ("_audit_writers", "_backend", "_migrations", "backend_spec", "config")
    _kind = "DB"
    _blocking = True

    def __init__(
        self,
        backend: Backend,
        *,
        config: FullConfig,
        backend_spec: BackendSpec,
        migrations: Migrations | None = None,
    ) -> None:
        super().__init__(backend)
        self._opened(backend, config, backend_spec)
        self._migrations = migrations

    @property
    def migrations(self) -> Migrations:
        """The schema migration runner (SQL backends only)."""
        _transaction_rule.refuse(self, "migrations")
        self._refuse_closed()
        if self._migrations is None:
            raise MigrationError(f"the {self.backend_spec.name} backend has no schema migrations")
        return self._migrations

    def audit_writer(
        self,
        *,
        max_batch: int = 500,
        max_delay: float = 0.05,
        max_pending: int = 10_000,
        spool_path: str | os.PathLike[str] | None = None,
    ) -> AuditWriter:
        """A new :class:`AuditWriter` on this database, with a thread of its own: audit
        events submitted to it are stored in batches of at most ``max_batch``, at most
        ``max_delay`` seconds after submission; ``submit`` waits when ``max_pending`` are
        pending. With ``spool_path``, each event is first appended to that local SQLite
        file, and what a previous writer left there is stored first. ``close()`` closes
        every writer still open."""
        _transaction_rule.refuse(self, "audit_writer")
        self._refuse_closed()
        return self._track_writer(
            AuditWriter(
                self,
                max_batch=max_batch,
                max_delay=max_delay,
                max_pending=max_pending,
                spool_path=spool_path,
                on_close=self._forget_writer,
            )
        )

    def close(self) -> None:
        """Store what every open audit writer holds and stop it, then release every
        connection. Idempotent; later calls raise ``DatabaseError``."""
        _transaction_rule.refuse(self, "close")
        failure: Exception | None = None
        for writer in self._open_writers():
            try:
                writer.close()
            except Exception as exc:  # close the rest and the backend first
                failure = failure or exc
        if (backend := self._stand_in_closed()) is not None:
            backend.close()
        if failure is not None:
            raise failure

    def health_check(self) -> None:
        """Raise ``DatabaseError`` unless the storage answers."""
        _transaction_rule.refuse(self, "health_check")
        self._backend.health_check()

    def check_integrity(self) -> bool:
        """Run the backend's deep integrity check, if it has one (an optional backend
        method ``check_integrity()``: SQLite's ``PRAGMA quick_check``, a full read of each
        table on other SQL backends). Slow on a large database: for an operator, not for a
        request path. True when it ran and passed; False when the backend has none;
        ``DatabaseError`` when it fails."""
        _transaction_rule.refuse(self, "check_integrity")
        check = getattr(self._backend, "check_integrity", None)
        if check is None:
            return False
        check()
        return True

    @contextmanager
    def transaction(self) -> Iterator[StoreFacade]:
        """A unit of work: commits on normal exit, rolls back everything on an exception.

        Inside the block use the object it yields: calls on this ``DB`` raise
        ``DatabaseError`` there (they would wait for the block's own locks).
        """
        _transaction_rule.refuse(self, "transaction")
        with self._backend.transaction() as stores:
            facade = StoreFacade(stores)
            with self._block(facade):
                yield facade

    def __enter__(self) -> DB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def new(config: Config | None = None) -> DB:
    """Open the default SQLite database (``data/llm-proxy.db`` unless ``config`` says)."""
    return new_from_full_config(FullConfig.from_config(config or Config()))


def new_from_full_config(config: FullConfig | None = None) -> DB:
    """Open the backend named by ``config.driver`` (default: :func:`config_from_env`),
    running pending migrations first when ``config.auto_migrate`` is true."""
    config = config_from_env() if config is None else config
    backend, spec, migrations = open_backend(config)
    return DB(backend, config=config, backend_spec=spec, migrations=migrations)


def open_backend(config: FullConfig) -> tuple[Backend, BackendSpec, Migrations | None]:
    """The blocking backend ``config`` names, opened, migrated (or its schema checked),
    with the layers the core adds (an older storage API's, encryption at rest)."""
    spec = get_backend_spec(config.driver)
    cipher = Cipher.from_config(config)  # a bad key fails before anything opens
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
            migrations.on_open(auto_migrate=config.auto_migrate)
    except BaseException:
        backend.close()
        raise
    if spec.api_version < STORAGE_API_VERSION:  # what the newer contract added, served
        backend = OlderBackend(backend)
    if cipher is not None:  # only then: without a key, no layer and no cost
        backend = EncryptingBackend(backend, cipher)
    return backend, spec, migrations
