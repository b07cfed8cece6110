"""Connections and units of work: health, close, context manager, transactions, stats."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import attrs
import pytest

from .._db import DB
from .._errors import (
    DatabaseError,
    ProjectExistsError,
    ProjectNotFoundError,
    TokenNotFoundError,
    TransientError,
)
from .._models import Stats
from ._base import TICK, BackendFactory, ConformanceBase, _raw_backend, pinned_clock, unique
from ._calls import BACKEND_METHODS, STORE_METHODS, Keys
from ._calls import call as sample_call


class _Boom(Exception):
    """Raised inside a transaction to make it roll back."""


class LifecycleTests(ConformanceBase):
    # -- health and close ---------------------------------------------------------------

    def test_health_check_when_open(self, db: DB) -> None:
        db.health_check()  # raises DatabaseError when unhealthy

    # The facade stops every call after DB.close() without reaching the backend (see
    # tests/core/test_facade.py); these drive the backend object itself.

    def test_backend_close_is_idempotent(self, db: DB) -> None:
        backend = _raw_backend(db)
        backend.close()
        try:
            backend.close()
        except Exception as exc:
            pytest.fail(
                f"{type(backend).__name__}.close() raised on its second call: "
                f"{type(exc).__name__}: {exc}"
            )

    def test_backend_health_check_after_close_raises(self, db: DB) -> None:
        backend = _raw_backend(db)
        backend.health_check()
        backend.close()
        with pytest.raises(DatabaseError):
            backend.health_check()
            pytest.fail(f"{type(backend).__name__}.health_check() answered after close()")

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

    def test_transaction_goes_on_after_a_caught_store_error(self, db: DB) -> None:
        """Statement-level atomicity: a store call that raises inside a block changes
        nothing, and the block goes on with everything else intact (on PostgreSQL the
        first failed statement would otherwise abort the whole transaction, and COMMIT
        would silently roll it back)."""
        taken = self.given_project(db)
        first = self.new_project()
        later = self.new_project()
        token = self.new_token(first, max_requests=5)
        event = self.new_event(project_id=first.id)
        with db.transaction() as tx:
            tx.create_project(first)
            with pytest.raises(ProjectExistsError):
                tx.create_project(self.new_project(name=taken.name))
            with pytest.raises(TokenNotFoundError):
                tx.increment_token_usage(self.new_token(first).token)
            tx.create_project(later)
            tx.create_token(token)
            assert tx.increment_token_usage(token.token).request_count == 1
            tx.create_audit_event(event)
            assert tx.get_project_by_id(first.id) == first
        by_name = sorted([taken, first, later], key=lambda project: project.name)
        assert db.list_projects() == by_name, (
            "a transaction whose block caught a store error lost the block's other writes"
        )
        assert db.get_token_by_id(token.token).request_count == 1
        assert db.get_audit_event_by_id(event.id) == event

    def test_backend_transaction_offers_every_store_method(self, db: DB) -> None:
        """What the backend's own ``transaction()`` yields implements ``Stores`` (the
        facade's transaction object always has every method, whatever it wraps)."""
        backend = _raw_backend(db)
        project = self.new_project()
        token = self.new_token(project, max_requests=3)
        with backend.transaction() as stores:
            missing = [name for name in STORE_METHODS if not callable(getattr(stores, name, None))]
            assert not missing, (
                f"{type(backend).__name__}.transaction() yields {type(stores).__name__}, "
                f"which lacks {', '.join(f'{name}()' for name in missing)}"
            )
            assert stores.list_projects() == [], "transaction stores list_projects()"
            assert stores.create_project(project) == project, "transaction stores create_project()"
            assert stores.get_project_by_id(project.id) == project, (
                "transaction stores get_project_by_id() does not see the block's own write"
            )
            assert stores.create_token(token) == token, "transaction stores create_token()"
            used = stores.increment_token_usage(token.token)
            assert used.request_count == 1, "transaction stores increment_token_usage()"
            assert stores.count_audit_events() == 0, "transaction stores count_audit_events()"
            assert stores.stats().projects == 1, "transaction stores stats().projects"
        assert db.get_project_by_id(project.id) == project, (
            "a project created through the backend's transaction() was not committed"
        )
        assert db.get_token_by_id(token.token) == used, (
            "an increment made through the backend's transaction() was not committed"
        )

    def test_database_usable_after_rollback(self, db: DB) -> None:
        with pytest.raises(_Boom), db.transaction() as tx:
            tx.create_project(self.new_project())
            raise _Boom
        project = self.given_project(db)
        with db.transaction() as tx:
            tx.create_token(self.new_token(project))
        assert len(db.list_tokens(project.id)) == 1
        db.health_check()

    # -- the transaction rule -------------------------------------------------------------

    @pytest.mark.parametrize("call", sorted(BACKEND_METHODS))
    def test_db_call_inside_its_own_transaction_is_refused(self, db: DB, call: str) -> None:
        """Inside ``with db.transaction() as tx:`` a call on ``db`` itself, on the same
        thread, raises ``DatabaseError`` (not ``TransientError``) at once and changes
        nothing; the block goes on and commits."""
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=5)
        before = (db.list_projects(), db.list_tokens(), db.count_audit_events())
        fresh = self.new_project(name="made-in-the-block")
        with db.transaction() as tx:
            tx.create_project(fresh)
            started = time.monotonic()
            with pytest.raises(DatabaseError) as refused:
                sample_call(db, call, Keys(project.id, token.token, unique("event")))
            elapsed = time.monotonic() - started
            assert not isinstance(refused.value, TransientError), (
                f"db.{call}() inside db.transaction() raised a TransientError; retrying "
                f"cannot help: {refused.value}"
            )
            assert elapsed < 1, f"db.{call}() inside db.transaction() took {elapsed:.1f}s"
            assert "transaction" in str(refused.value)
            assert tx.get_project_by_id(fresh.id) == fresh  # the block is intact
        projects, tokens, events = before
        assert db.list_projects() == sorted([*projects, fresh], key=lambda p: p.name)
        assert db.list_tokens() == tokens, f"db.{call}() inside the block changed a token"
        assert db.count_audit_events() == events
        db.health_check()  # the database is still open

    def test_other_threads_are_not_refused_during_a_transaction(self, db: DB) -> None:
        project = self.given_project(db)
        found: list[object] = []

        def read() -> None:
            try:
                found.append(db.get_project_by_id(project.id))
            except Exception as exc:  # reported below
                found.append(exc)

        with db.transaction() as tx:
            tx.create_project(self.new_project())
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(timeout=0.5)  # a backend may make it wait for the block
        reader.join(timeout=30)
        assert found == [project], f"another thread's call during a transaction got {found}"

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

    def test_stats_at_the_expiry_instant(self, db: DB) -> None:
        project = self.given_project(db)
        with pinned_clock(self.now()) as now:
            self.given_token(db, project, expires_at=now)  # expired: expires_at <= now
            self.given_token(db, project, expires_at=now + TICK + self.clock_tolerance)
            stats = db.stats()
        counts = (stats.active_tokens, stats.expired_tokens)
        assert counts == (1, 1), (
            "stats() with one token expiring at now and one a microsecond later: "
            f"(active_tokens, expired_tokens) is {counts}, expected (1, 1)"
        )

    @staticmethod
    def check_size(stats: Stats) -> None:
        size = stats.size_bytes
        assert size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0)
