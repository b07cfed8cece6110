"""A failing storage: only ``DatabaseError`` comes out, and the database recovers.

The ``failing_storage`` fixture returns a context manager within which the backend's
storage fails. By default, for a backend with the ``migrations`` capability, it renames
the store's tables on a separate connection (``migration_connection()``) and renames them
back afterwards, so every statement fails in the driver; a backend without that
capability overrides the fixture, or these tests skip with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Final, cast

import pytest

from .._db import DB
from .._errors import DatabaseError
from .._models import AuditEventFilter
from ._base import ConformanceBase, _raw_backend, unique
from ._calls import READS, STORE_METHODS, Keys
from ._calls import call as sample_call

if TYPE_CHECKING:
    from ..sql import MigrationTarget

__all__ = ["FailureTests", "renamed_tables"]

TABLES: Final = ("projects", "tokens", "audit_events")
"""The store's tables (those of the shipped migrations)."""


@contextmanager
def renamed_tables(db: DB, tables: tuple[str, ...] = TABLES) -> Iterator[None]:
    """Rename ``tables`` for the block (``ALTER TABLE t RENAME TO t_broken_<x>``) on a
    connection of ``db``'s backend's ``migration_connection()``, and back afterwards.

    Works on any SQL backend whose tables can be renamed (SQLite, PostgreSQL): inside the
    block every store statement fails in the driver, as with a dropped schema.
    """
    target = cast("MigrationTarget", _raw_backend(db))
    suffix = f"_broken_{uuid.uuid4().hex[:8]}"

    def rename(pairs: list[tuple[str, str]]) -> None:
        # A connection of its own, handed back at once: the pool may have only one.
        with target.migration_connection(exclusive=False) as conn:
            for old, new in pairs:
                conn.execute(f"ALTER TABLE {old} RENAME TO {new}")

    broken = [(table, table + suffix) for table in tables]
    rename(broken)
    try:
        yield
    finally:
        rename([(new, old) for old, new in reversed(broken)])


class FailureTests(ConformanceBase):
    @pytest.fixture
    def failing_storage(self, db: DB) -> AbstractContextManager[None]:
        """A context manager within which the storage of ``db`` fails (see the module)."""
        if "migrations" not in db.capabilities:
            pytest.skip(
                f"backend {db.backend_spec.name!r} has no 'migrations' capability, so the "
                "suite cannot make its storage fail: override the failing_storage fixture "
                "(see StoreConformance)"
            )
        return renamed_tables(db)

    def given_records(self, db: DB) -> Keys:
        """A project, a token of it and an audit event, for the calls to name."""
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=100)
        event = db.create_audit_event(self.new_event(project_id=project.id))
        return Keys(project.id, token.token, event.id)

    def test_failing_storage_raises_only_database_errors(
        self, db: DB, failing_storage: AbstractContextManager[None]
    ) -> None:
        """While the storage fails, every store call, ``health_check()`` and an empty
        ``transaction()`` raise a ``DatabaseError`` (never a driver's exception, never
        anything else) or, for reads only, answer; no write may claim success."""
        keys = self.given_records(db)
        wrong: list[str] = []
        failed = 0
        with failing_storage:
            for name in (*STORE_METHODS, "health_check", "transaction"):
                try:
                    sample_call(db, name, keys)
                except DatabaseError:
                    failed += 1
                except Exception as exc:  # the failure this test looks for
                    wrong.append(f"{name}() raised {type(exc).__module__}.{type(exc).__name__}")
                else:
                    if name not in READS | {"health_check", "transaction"}:
                        wrong.append(f"{name}() returned as if it had written")
        assert not wrong, (
            "while the storage failed, calls must raise a llm_proxy_db.DatabaseError:\n"
            + "\n".join(wrong)
        )
        assert failed, "failing_storage made no call fail: the fixture does not break the storage"

    def test_database_recovers_after_storage_failure(
        self, db: DB, failing_storage: AbstractContextManager[None]
    ) -> None:
        """Once the storage works again, so does the database: old records are intact
        and new calls succeed (no connection stays broken)."""
        keys = self.given_records(db)
        project, token = db.get_project_by_id(keys.project_id), db.get_token_by_id(keys.token)
        event = db.get_audit_event_by_id(keys.event_id)
        with failing_storage:
            for name in STORE_METHODS:
                with suppress(DatabaseError):
                    sample_call(db, name, keys)
        for attempt in range(3):  # every pooled connection gets used again
            db.health_check()
            assert db.get_project_by_id(project.id) == project, "get_project_by_id() after"
            assert db.increment_token_usage(token.token).request_count == attempt + 1, (
                "increment_token_usage() after the storage failure"
            )
            created = self.given_project(db, name=unique("after-failure"))
            assert db.get_project_by_id(created.id) == created, "create_project() after"
            assert db.get_audit_event_by_id(event.id) == event, "get_audit_event_by_id() after"
            assert db.count_audit_events(AuditEventFilter(project_id=project.id)) == 1, (
                "count_audit_events() after the storage failure"
            )
            with db.transaction() as tx:
                tx.revoke_project_tokens(created.id)
        assert len(db.list_projects()) == 4, "list_projects() after the storage failure"
