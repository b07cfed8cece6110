"""Counting requests: increment_token_usage, revocation, cache hits and resets."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import attrs
import pytest

from .._db import DB
from .._errors import (
    ProjectInactiveError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
)
from .._models import generate_token
from ._base import ConformanceBase, at, unique


class UsageTests(ConformanceBase):
    # -- increment_token_usage ------------------------------------------------------------

    def test_increment_counts_and_sets_last_used_at(self, db: DB) -> None:
        token = self.given_token(db, last_used_at=None)
        before = self.now()
        returned = db.increment_token_usage(token.token)
        after = self.now()
        assert returned.request_count == 1
        self.assert_within(before, returned.last_used_at, after)
        assert db.get_token_by_id(token.token) == returned
        assert returned == attrs.evolve(token, request_count=1, last_used_at=returned.last_used_at)

    def test_increment_unlimited_token(self, db: DB) -> None:
        token = self.given_token(db, max_requests=None)
        for expected in range(1, 26):
            assert db.increment_token_usage(token.token).request_count == expected
        assert db.get_token_by_id(token.token).request_count == 25

    @pytest.mark.parametrize("limit", [1, 3])
    def test_increment_exact_limit(self, db: DB, limit: int) -> None:
        token = self.given_token(db, max_requests=limit)
        for expected in range(1, limit + 1):
            assert db.increment_token_usage(token.token).request_count == expected
        at_limit = db.get_token_by_id(token.token)
        for _ in range(2):
            with pytest.raises(TokenLimitReachedError):
                db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token) == at_limit
        assert at_limit.request_count == limit

    def test_increment_stored_count_at_limit(self, db: DB) -> None:
        token = self.given_token(db, request_count=4, max_requests=5)
        assert db.increment_token_usage(token.token).request_count == 5
        with pytest.raises(TokenLimitReachedError):
            db.increment_token_usage(token.token)

    def test_increment_unknown_token(self, db: DB) -> None:
        self.given_token(db)
        with pytest.raises(TokenNotFoundError):
            db.increment_token_usage(generate_token())

    def test_increment_inactive_token(self, db: DB) -> None:
        token = self.given_token(db, is_active=False, deactivated_at=at(1))
        with pytest.raises(TokenInactiveError):
            db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token) == token

    def test_increment_expired_by_one_millisecond(self, db: DB) -> None:
        token = self.given_token(db, expires_at=self.now() - timedelta(milliseconds=1))
        with pytest.raises(TokenExpiredError):
            db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token) == token

    def test_increment_expiring_now_is_expired(self, db: DB) -> None:
        # expires_at <= now is expired: by the time the call runs, now >= expires_at.
        token = self.given_token(db, expires_at=self.now())
        with pytest.raises(TokenExpiredError):
            db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token) == token

    def test_increment_not_yet_expired(self, db: DB) -> None:
        token = self.given_token(db, expires_at=self.now() + timedelta(hours=1))
        assert db.increment_token_usage(token.token).request_count == 1

    def test_increment_after_project_deactivated(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project)
        db.increment_token_usage(token.token)
        used = db.get_token_by_id(token.token)
        db.update_project(attrs.evolve(project, is_active=False, deactivated_at=self.now()))
        with pytest.raises(ProjectInactiveError):
            db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token) == used
        db.update_project(attrs.evolve(project, is_active=True, deactivated_at=None))
        assert db.increment_token_usage(token.token).request_count == 2

    def test_increment_refusal_order(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=1)
        db.increment_token_usage(token.token)
        at_limit = db.get_token_by_id(token.token)
        db.update_project(attrs.evolve(project, is_active=False, deactivated_at=at(1)))
        everything_wrong = attrs.evolve(
            at_limit,
            is_active=False,
            deactivated_at=at(2),
            expires_at=self.now() - timedelta(seconds=1),
        )
        db.update_token(everything_wrong)
        with pytest.raises(TokenNotFoundError):
            db.increment_token_usage(generate_token())
        with pytest.raises(TokenInactiveError):
            db.increment_token_usage(token.token)
        db.update_token(attrs.evolve(everything_wrong, is_active=True, deactivated_at=None))
        with pytest.raises(TokenExpiredError):
            db.increment_token_usage(token.token)
        db.update_token(
            attrs.evolve(everything_wrong, is_active=True, deactivated_at=None, expires_at=None)
        )
        with pytest.raises(ProjectInactiveError):
            db.increment_token_usage(token.token)
        db.update_project(attrs.evolve(project, is_active=True, deactivated_at=None))
        with pytest.raises(TokenLimitReachedError):
            db.increment_token_usage(token.token)
        assert db.get_token_by_id(token.token).request_count == 1

    def test_increment_exact_limit_with_racing_threads(self, db: DB) -> None:
        threads, attempts_each, limit = 8, 25, 50
        token = self.given_token(db, max_requests=limit)
        barrier = threading.Barrier(threads)
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def work() -> None:
            local: Counter[str] = Counter()
            barrier.wait(timeout=30)
            for _ in range(attempts_each):
                try:
                    db.increment_token_usage(token.token)
                    local["ok"] += 1
                except TokenLimitReachedError:
                    local["limit"] += 1
                except Exception as exc:  # reported below
                    local[type(exc).__name__] += 1
            with lock:
                outcomes.update(local)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert dict(outcomes) == {"ok": limit, "limit": threads * attempts_each - limit}
        assert db.get_token_by_id(token.token).request_count == limit

    # -- revoke -------------------------------------------------------------------------

    def test_revoke_token_is_idempotent(self, db: DB) -> None:
        token = self.given_token(db)
        before = self.now()
        db.revoke_token(token.token)
        after = self.now()
        first = db.get_token_by_id(token.token)
        assert first.is_active is False
        self.assert_within(before, first.deactivated_at, after)
        assert first == attrs.evolve(token, is_active=False, deactivated_at=first.deactivated_at)
        db.revoke_token(token.token)
        assert db.get_token_by_id(token.token) == first
        with pytest.raises(TokenInactiveError):
            db.increment_token_usage(token.token)

    def test_revoke_unknown_token(self, db: DB) -> None:
        with pytest.raises(TokenNotFoundError):
            db.revoke_token(generate_token())

    def test_revoke_project_tokens(self, db: DB) -> None:
        project = self.given_project(db)
        other = self.given_project(db)
        active = [
            self.given_token(db, project),
            self.given_token(db, project, expires_at=self.now() + timedelta(days=1)),
        ]
        inactive = self.given_token(db, project, is_active=False, deactivated_at=at(7))
        bystander = self.given_token(db, other)
        before = self.now()
        assert db.revoke_project_tokens(project.id) == 2
        after = self.now()
        for token in active:
            stored = db.get_token_by_id(token.token)
            assert stored.is_active is False
            self.assert_within(before, stored.deactivated_at, after)
        assert db.get_token_by_id(inactive.token) == inactive
        assert db.get_token_by_id(bystander.token) == bystander
        assert db.revoke_project_tokens(project.id) == 0

    def test_revoke_project_tokens_of_unknown_project(self, db: DB) -> None:
        token = self.given_token(db)
        assert db.revoke_project_tokens(unique("missing")) == 0
        assert db.get_token_by_id(token.token) == token

    def test_revoke_expired_tokens(self, db: DB) -> None:
        project = self.given_project(db)
        past = self.now() - timedelta(seconds=1)
        expired = [self.given_token(db, project, expires_at=past) for _ in range(2)]
        inactive_expired = self.given_token(
            db, project, expires_at=past, is_active=False, deactivated_at=at(3)
        )
        future = self.given_token(db, project, expires_at=self.now() + timedelta(hours=1))
        forever = self.given_token(db, project)
        before = self.now()
        assert db.revoke_expired_tokens() == 2
        after = self.now()
        for token in expired:
            stored = db.get_token_by_id(token.token)
            assert stored.is_active is False
            self.assert_within(before, stored.deactivated_at, after)
        for token in (inactive_expired, future, forever):
            assert db.get_token_by_id(token.token) == token
        assert db.revoke_expired_tokens() == 0

    def test_revoke_expired_tokens_when_none(self, db: DB) -> None:
        assert db.revoke_expired_tokens() == 0

    # -- cache hits and resets ------------------------------------------------------------

    def test_increment_cache_hit_count(self, db: DB) -> None:
        token = self.given_token(db)
        db.increment_cache_hit_count(token.token)
        assert db.get_token_by_id(token.token).cache_hit_count == 1
        db.increment_cache_hit_count(token.token, 5)
        db.increment_cache_hit_count(token.token, delta=2)
        stored = db.get_token_by_id(token.token)
        assert stored.cache_hit_count == 8
        assert stored.request_count == 0

    @pytest.mark.parametrize("delta", [0, -1])
    def test_increment_cache_hit_count_rejects_bad_delta(self, db: DB, delta: int) -> None:
        token = self.given_token(db)
        with pytest.raises(ValueError):
            db.increment_cache_hit_count(token.token, delta)
        assert db.get_token_by_id(token.token) == token

    def test_increment_cache_hit_count_unknown_token(self, db: DB) -> None:
        with pytest.raises(TokenNotFoundError):
            db.increment_cache_hit_count(generate_token())

    def test_reset_token_usage(self, db: DB) -> None:
        token = self.given_token(db, max_requests=2)
        db.increment_token_usage(token.token)
        db.increment_token_usage(token.token)
        db.increment_cache_hit_count(token.token, 3)
        used = db.get_token_by_id(token.token)
        returned = db.reset_token_usage(token.token)
        assert returned == attrs.evolve(used, request_count=0)
        assert db.get_token_by_id(token.token) == returned
        assert returned.cache_hit_count == 3
        assert returned.last_used_at == used.last_used_at
        assert db.increment_token_usage(token.token).request_count == 1

    def test_reset_unknown_token(self, db: DB) -> None:
        with pytest.raises(TokenNotFoundError):
            db.reset_token_usage(generate_token())
