"""Optional capabilities: a declared one must hold (persistence, migrations, processes)."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from .._config import FullConfig
from .._db import DB, new_from_full_config
from .._errors import MigrationError, TokenLimitReachedError
from .._models import AuditEventFilter
from ._base import KNOWN_CAPABILITIES, BackendFactory, ConformanceBase, at, requires

_PROCESSES = 4
_ATTEMPTS_EACH = 25
_PROCESS_LIMIT = 40


def race_increments(
    config: FullConfig, token: str, attempts: int, barrier: Any, results: Any
) -> None:
    """Child process body of the ``multi_process`` test: count outcomes of increments."""
    outcomes: Counter[str] = Counter()
    try:
        db = new_from_full_config(config)
        try:
            barrier.wait(timeout=60)
            for _ in range(attempts):
                try:
                    db.increment_token_usage(token)
                    outcomes["ok"] += 1
                except TokenLimitReachedError:
                    outcomes["limit"] += 1
        finally:
            db.close()
    except BaseException as exc:  # reported to the parent
        outcomes[f"error {type(exc).__name__}"] += 1
    results.put(dict(outcomes))


class CapabilityTests(ConformanceBase):
    def test_capabilities_are_declared(self, db: DB) -> None:
        assert isinstance(db.backend_spec.name, str) and db.backend_spec.name
        assert "no-such-capability" not in db.capabilities
        assert set(db.capabilities) <= set(KNOWN_CAPABILITIES), "unknown capability declared"
        # A backend without the migrations capability has no runner; one with it has one.
        if "migrations" in db.capabilities:
            assert isinstance(db.migrations.version(), int)
        else:
            with pytest.raises(MigrationError):
                db.migrations  # noqa: B018 - the property raises

    @requires("persistent")
    def test_data_survives_reopen(self, db: DB, backend_factory: BackendFactory) -> None:
        project = self.given_project(db, created_at=at(1.5), updated_at=at(2.25))
        token = self.given_token(db, project, max_requests=3)
        db.increment_token_usage(token.token)
        db.increment_cache_hit_count(token.token, 2)
        event = db.create_audit_event(
            self.new_event(project_id=project.id, timestamp=at(3), metadata={"k": [1, "v"]})
        )
        stored_token = db.get_token_by_id(token.token)
        db.close()
        reopened = backend_factory(reopen=db)
        try:
            assert reopened.list_projects() == [project]
            assert reopened.list_tokens() == [stored_token]
            assert reopened.list_audit_events() == [event]
            assert reopened.increment_token_usage(token.token).request_count == 2
        finally:
            reopened.close()

    @requires("persistent")
    def test_transaction_survives_reopen(self, db: DB, backend_factory: BackendFactory) -> None:
        project = self.new_project()
        with db.transaction() as tx:
            tx.create_project(project)
        db.close()
        with backend_factory(reopen=db) as reopened:
            assert reopened.get_project_by_id(project.id) == project

    @requires("migrations")
    def test_migrations_are_applied(self, db: DB) -> None:
        migrations = db.migrations
        version = migrations.version()
        assert version == migrations.latest, "a new database is migrated to the newest file"
        status = migrations.status()
        assert status, "no migrations listed"
        assert all(entry.applied for entry in status), status
        assert max(entry.version for entry in status) == version
        for entry in status:
            assert entry.applied_at is not None
            assert entry.applied_at.utcoffset() == timedelta(0)

    @requires("migrations")
    def test_migrations_down_then_up(self, db: DB) -> None:
        migrations = db.migrations
        top = migrations.version()
        migrations.down()
        assert migrations.version() < top
        assert [e.version for e in migrations.status() if not e.applied] == [top]
        migrations.up()
        assert migrations.version() == top
        assert all(entry.applied for entry in migrations.status())
        migrations.up()  # nothing pending: a no-op
        assert migrations.version() == top
        token = self.given_token(db, max_requests=1)
        assert db.increment_token_usage(token.token).request_count == 1
        event = db.create_audit_event(self.new_event(metadata={"after": "up"}))
        assert db.list_audit_events(AuditEventFilter(search="after")) == [event]

    @requires("multi_process")
    def test_exact_limit_with_racing_processes(self, db: DB) -> None:
        token = self.given_token(db, max_requests=_PROCESS_LIMIT)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(_PROCESSES)
        results = context.Queue()
        children = [
            context.Process(
                target=race_increments,
                args=(db.config, token.token, _ATTEMPTS_EACH, barrier, results),
                daemon=True,
            )
            for _ in range(_PROCESSES)
        ]
        for child in children:
            child.start()
        totals: Counter[str] = Counter()
        try:
            for _ in children:
                totals.update(results.get(timeout=120))
        except queue_module.Empty:  # pragma: no cover - a hung child
            pytest.fail(f"a child process gave no result; so far: {dict(totals)}")
        finally:
            for child in children:
                child.join(timeout=30)
                if child.is_alive():  # pragma: no cover
                    child.kill()
        attempts = _PROCESSES * _ATTEMPTS_EACH
        assert dict(totals) == {"ok": _PROCESS_LIMIT, "limit": attempts - _PROCESS_LIMIT}
        assert db.get_token_by_id(token.token).request_count == _PROCESS_LIMIT
