"""Counting requests: increment_token_usage, revocation, cache hits and resets."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import attrs
import pytest

from .._db import DB
from .._errors import (
    DatabaseError,
    ProjectInactiveError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
)
from .._models import generate_token
from ._base import TICK, ConformanceBase, at, pinned_clock, unique


class UsageTests(ConformanceBase):
    # -- increment_token_usage ------------------------------------------------------------

    def test_increment_counts_and_sets_last_used_at(self, db: DB) -> None:
        token = self.given_token(db, last_used_at=None)
        before = self.now()
        returned = db.increment_token_usage(token.token)
        after = self.now()
        assert returned.request_count == 1
        self.assert_within(
            before, returned.last_used_at, after, what="increment_token_usage() last_used_at"
        )
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
        """``expires_at <= now`` is expired: with the library's clock pinned, a token whose
        ``expires_at`` *is* now is refused, one a microsecond later still counts."""
        project = self.given_project(db)
        with pinned_clock(self.now()) as now:
            due = self.given_token(db, project, expires_at=now)
            alive = self.given_token(db, project, expires_at=self.just_after(now))
            with pytest.raises(TokenExpiredError):
                db.increment_token_usage(due.token)
                pytest.fail("increment_token_usage() counted a token whose expires_at is now")
            assert db.get_token_by_id(due.token) == due, "a refused increment changed the token"
            used = db.increment_token_usage(alive.token)
            assert used.request_count == 1, "increment_token_usage() of an unexpired token"
            self.assert_within(
                now, used.last_used_at, now, what="increment_token_usage() last_used_at"
            )

    def just_after(self, now: datetime) -> datetime:
        """The earliest ``expires_at`` that is not expired at the pinned ``now`` (later by
        the clock tolerance, for a backend whose clock is a server's)."""
        return now + TICK + self.clock_tolerance

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

        def refused(value: str, expected: type[DatabaseError], wrong: str) -> None:
            try:
                db.increment_token_usage(value)
            except DatabaseError as exc:
                got: str = type(exc).__name__
            else:
                got = "no refusal"
            assert got == expected.__name__, (
                f"increment_token_usage() of a token that is {wrong} raised {got}; the "
                f"contract's order (not found, inactive, expired, project inactive, limit) "
                f"asks for {expected.__name__}"
            )

        refused(generate_token(), TokenNotFoundError, "unknown")
        everything = "inactive, expired, of an inactive project and at its limit"
        refused(token.token, TokenInactiveError, everything)
        db.update_token(attrs.evolve(everything_wrong, is_active=True, deactivated_at=None))
        refused(token.token, TokenExpiredError, "expired, of an inactive project and at its limit")
        db.update_token(
            attrs.evolve(everything_wrong, is_active=True, deactivated_at=None, expires_at=None)
        )
        refused(token.token, ProjectInactiveError, "of an inactive project and at its limit")
        db.update_project(attrs.evolve(project, is_active=True, deactivated_at=None))
        refused(token.token, TokenLimitReachedError, "at its limit")
        assert db.get_token_by_id(token.token).request_count == 1, "a refusal counted a request"

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
        assert first.is_active is False, "revoke_token() left the token active"
        self.assert_within(
            before, first.deactivated_at, after, what="revoke_token() deactivated_at"
        )
        assert first == attrs.evolve(token, is_active=False, deactivated_at=first.deactivated_at)
        db.revoke_token(token.token)
        assert db.get_token_by_id(token.token) == first
        with pytest.raises(TokenInactiveError):
            db.increment_token_usage(token.token)

    def test_revoke_keeps_an_existing_deactivated_at(self, db: DB) -> None:
        # An active token may carry a deactivated_at (reactivated by update_token without
        # clearing it): revoking keeps that first instant.
        token = self.given_token(db, deactivated_at=at(5))
        db.revoke_token(token.token)
        stored = db.get_token_by_id(token.token)
        assert (stored.is_active, stored.deactivated_at) == (False, at(5)), (
            "revoke_token() of an active token with deactivated_at set: (is_active, deactivated_at)"
        )
        db.update_token(attrs.evolve(stored, is_active=True))
        assert db.revoke_project_tokens(token.project_id) == 1
        again = db.get_token_by_id(token.token)
        assert again.deactivated_at == at(5), "revoke_project_tokens() replaced deactivated_at"

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
        changed = db.revoke_project_tokens(project.id)
        after = self.now()
        assert changed == 2, (
            f"revoke_project_tokens() of 2 active and 1 inactive token returned {changed}: it "
            "counts the tokens that went from active to inactive"
        )
        for token in active:
            stored = db.get_token_by_id(token.token)
            assert stored.is_active is False, "revoke_project_tokens() left a token active"
            self.assert_within(
                before, stored.deactivated_at, after, what="revoke_project_tokens() deactivated_at"
            )
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
        changed = db.revoke_expired_tokens()
        after = self.now()
        assert changed == 2, (
            f"revoke_expired_tokens() of 2 active and 1 inactive expired token returned {changed}"
        )
        for token in expired:
            stored = db.get_token_by_id(token.token)
            assert stored.is_active is False, "revoke_expired_tokens() left a token active"
            self.assert_within(
                before, stored.deactivated_at, after, what="revoke_expired_tokens() deactivated_at"
            )
        for token in (inactive_expired, future, forever):
            assert db.get_token_by_id(token.token) == token
        assert db.revoke_expired_tokens() == 0

    def test_revoke_expired_tokens_at_the_expiry_instant(self, db: DB) -> None:
        project = self.given_project(db)
        with pinned_clock(self.now()) as now:
            due = self.given_token(db, project, expires_at=now)
            past = self.given_token(db, project, expires_at=now - TICK)
            alive = self.given_token(db, project, expires_at=self.just_after(now))
            revoked = db.revoke_expired_tokens()
            assert revoked == 2, (
                "revoke_expired_tokens() with tokens expiring at now, a microsecond before "
                f"and a microsecond after: {revoked} revoked, expected 2 (expires_at <= now)"
            )
            for token in (due, past):
                stored = db.get_token_by_id(token.token)
                assert stored.is_active is False, (
                    f"revoke_expired_tokens() left active a token expiring {token.expires_at}"
                )
                self.assert_within(
                    now, stored.deactivated_at, now, what="revoke_expired_tokens() deactivated_at"
                )
            assert db.get_token_by_id(alive.token) == alive, "revoked a token not yet expired"

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
        assert stored.cache_hit_count == 8, "cache_hit_count after increments of 1, 5 and 2"
        assert stored.request_count == 0, "increment_cache_hit_count() changed request_count"

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
        assert returned.cache_hit_count == 3, "reset_token_usage() changed cache_hit_count"
        assert returned.last_used_at == used.last_used_at, (
            "reset_token_usage() changed last_used_at"
        )
        assert returned == attrs.evolve(used, request_count=0), "reset_token_usage() returned"
        assert db.get_token_by_id(token.token) == returned, "reset_token_usage() stored"
        assert db.increment_token_usage(token.token).request_count == 1

    def test_reset_unknown_token(self, db: DB) -> None:
        with pytest.raises(TokenNotFoundError):
            db.reset_token_usage(generate_token())
