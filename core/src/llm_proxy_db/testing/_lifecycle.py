"""Connections and units of work: health, close, context manager, transactions, stats."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import attrs
import pytest

from .._db import DB
from .._errors import (
    DatabaseError,
    ProjectExistsError,
    ProjectNotFoundError,
    TokenNotFoundError,
)
from .._models import AuditEventFilter, Stats, generate_token
from ._base import BackendFactory, ConformanceBase, unique

_STORE_METHODS = (
    "create_project",
    "get_project_by_id",
    "update_project",
    "delete_project",
    "list_projects",
    "create_token",
    "get_token_by_id",
    "update_token",
    "delete_token",
    "list_tokens",
    "increment_token_usage",
    "revoke_token",
    "revoke_project_tokens",
    "revoke_expired_tokens",
    "increment_cache_hit_count",
    "reset_token_usage",
    "create_audit_event",
    "get_audit_event_by_id",
    "list_audit_events",
    "count_audit_events",
    "stats",
)


class _Boom(Exception):
    """Raised inside a transaction to make it roll back."""


_CALLS_AFTER_CLOSE: dict[str, Callable[[DB], object]] = {
    "create_project": lambda db: db.create_project(ConformanceBase.new_project()),
    "get_project_by_id": lambda db: db.get_project_by_id(unique("p")),
    "list_projects": lambda db: db.list_projects(),
    "get_token_by_id": lambda db: db.get_token_by_id(generate_token()),
    "list_tokens": lambda db: db.list_tokens(),
    "increment_token_usage": lambda db: db.increment_token_usage(generate_token()),
    "revoke_expired_tokens": lambda db: db.revoke_expired_tokens(),
    "create_audit_event": lambda db: db.create_audit_event(ConformanceBase.new_event()),
    "list_audit_events": lambda db: db.list_audit_events(),
    "count_audit_events": lambda db: db.count_audit_events(),
    "stats": lambda db: db.stats(),
}


class LifecycleTests(ConformanceBase):
    # -- health and close ---------------------------------------------------------------

    def test_health_check_when_open(self, db: DB) -> None:
        db.health_check()  # raises DatabaseError when unhealthy

    def test_close_is_idempotent(self, db: DB) -> None:
        db.close()
        db.close()
        with pytest.raises(DatabaseError):
            db.health_check()

    @pytest.mark.parametrize("call", sorted(_CALLS_AFTER_CLOSE))
    def test_store_calls_after_close_raise(self, db: DB, call: str) -> None:
        db.close()
        with pytest.raises(DatabaseError):
            _CALLS_AFTER_CLOSE[call](db)

    def test_context_manager_closes(self, backend_factory: BackendFactory) -> None:
        with backend_factory() as db:
            db.health_check()
            project = db.create_project(self.new_project())
            assert db.get_project_by_id(project.id) == project
        with pytest.raises(DatabaseError):
            db.health_check()
        db.close()

    def test_factory_gives_isolated_databases(
        self, db: DB, backend_factory: BackendFactory
    ) -> None:
        self.given_token(db)
        db.create_audit_event(self.new_event())
        with backend_factory() as other:
            assert other.list_projects() == []
            assert other.list_tokens() == []
            assert other.count_audit_events() == 0

    # -- transactions -------------------------------------------------------------------

    def test_transaction_commits_on_normal_exit(self, db: DB) -> None:
        project = self.new_project()
        token = self.new_token(project)
        event = self.new_event(project_id=project.id)
        with db.transaction() as tx:
            tx.create_project(project)
            tx.create_token(token)
            tx.create_audit_event(event)
            assert tx.get_project_by_id(project.id) == project
            assert tx.increment_token_usage(token.token).request_count == 1
        assert db.get_project_by_id(project.id) == project
        assert db.get_token_by_id(token.token).request_count == 1
        assert db.get_audit_event_by_id(event.id) == event

    def test_transaction_rolls_back_everything_on_exception(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=10)
        db.increment_token_usage(token.token)
        before_token = db.get_token_by_id(token.token)
        new_project = self.new_project()
        new_token = self.new_token(project)
        event = self.new_event()
        boom = _Boom("roll back")
        with pytest.raises(_Boom) as raised, db.transaction() as tx:
            tx.create_project(new_project)
            tx.create_token(new_token)
            tx.create_audit_event(event)
            tx.increment_token_usage(token.token)
            tx.increment_cache_hit_count(token.token, 3)
            tx.update_project(attrs.evolve(project, name=unique("renamed"), is_active=False))
            tx.revoke_token(token.token)
            raise boom
        assert raised.value is boom
        with pytest.raises(ProjectNotFoundError):
            db.get_project_by_id(new_project.id)
        with pytest.raises(TokenNotFoundError):
            db.get_token_by_id(new_token.token)
        assert db.count_audit_events() == 0
        assert db.get_token_by_id(token.token) == before_token
        assert db.get_project_by_id(project.id) == project
        assert db.list_projects() == [project]

    def test_transaction_rolls_back_deletes(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project)
        with pytest.raises(_Boom), db.transaction() as tx:
            tx.delete_project(project.id)
            raise _Boom
        assert db.get_project_by_id(project.id) == project
        assert db.get_token_by_id(token.token) == token

    def test_transaction_rolls_back_after_store_error(self, db: DB) -> None:
        taken = self.given_project(db)
        fresh = self.new_project()
        with pytest.raises(ProjectExistsError), db.transaction() as tx:
            tx.create_project(fresh)
            tx.create_project(self.new_project(name=taken.name))
        with pytest.raises(ProjectNotFoundError):
            db.get_project_by_id(fresh.id)
        assert db.list_projects() == [taken]

    def test_database_usable_after_rollback(self, db: DB) -> None:
        with pytest.raises(_Boom), db.transaction() as tx:
            tx.create_project(self.new_project())
            raise _Boom
        project = self.given_project(db)
        with db.transaction() as tx:
            tx.create_token(self.new_token(project))
        assert len(db.list_tokens(project.id)) == 1
        db.health_check()

    def test_transaction_offers_every_store_method(self, db: DB) -> None:
        with db.transaction() as tx:
            for name in _STORE_METHODS:
                assert callable(getattr(tx, name, None)), f"transaction lacks {name}()"
            assert tx.list_projects() == []
            assert tx.list_audit_events(AuditEventFilter(limit=1)) == []
            assert tx.count_audit_events() == 0
            assert tx.stats().projects == 0

    def test_transaction_object_refuses_work_after_its_block(self, db: DB) -> None:
        with db.transaction() as tx:
            tx.create_project(self.new_project(name="inside"))
        with pytest.raises(DatabaseError, match="transaction has ended"):
            tx.create_project(self.new_project(name="after"))
        with pytest.raises(DatabaseError):
            tx.list_projects()
        assert [p.name for p in db.list_projects()] == ["inside"]

    # -- stats --------------------------------------------------------------------------

    def test_stats_of_empty_database(self, db: DB) -> None:
        stats = db.stats()
        assert isinstance(stats, Stats)
        assert (
            stats.projects,
            stats.active_projects,
            stats.tokens,
            stats.active_tokens,
            stats.expired_tokens,
            stats.total_requests,
        ) == (0, 0, 0, 0, 0, 0)
        self.check_size(stats)

    def test_stats_counts(self, db: DB) -> None:
        active = self.given_project(db)
        self.given_project(db, is_active=False, deactivated_at=self.now())
        past = self.now() - timedelta(seconds=1)
        future = self.now() + timedelta(hours=1)
        live = self.given_token(db, active, expires_at=future, max_requests=10)
        self.given_token(db, active, request_count=5)  # active, never expires
        self.given_token(db, active, expires_at=past, request_count=2)  # active but expired
        self.given_token(db, active, is_active=False, deactivated_at=past)
        self.given_token(
            db, active, is_active=False, deactivated_at=past, expires_at=past, request_count=1
        )
        for _ in range(3):
            db.increment_token_usage(live.token)
        stats = db.stats()
        assert stats.projects == 2
        assert stats.active_projects == 1
        assert stats.tokens == 5
        assert stats.active_tokens == 2
        assert stats.expired_tokens == 2
        assert stats.total_requests == 3 + 5 + 2 + 1
        self.check_size(stats)

    @staticmethod
    def check_size(stats: Stats) -> None:
        size = stats.size_bytes
        assert size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0)
