"""Tokens: create, read, update (administrative fields only), delete, list."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from .._db import DB
from .._errors import ProjectNotFoundError, TokenExistsError, TokenNotFoundError
from .._models import generate_token
from ._base import ConformanceBase, at, unique


class TokenTests(ConformanceBase):
    def test_create_token_round_trips_every_field(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.new_token(
            project,
            expires_at=at(86_400.000001, base=self.now()),
            is_active=False,
            deactivated_at=at(3.5),
            request_count=7,
            max_requests=100,
            created_at=at(1.000123),
            last_used_at=at(2.999999),
            cache_hit_count=4,
        )
        assert db.create_token(token) == token
        assert db.get_token_by_id(token.token) == token

    def test_create_token_with_defaults_round_trips(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.new_token(project)
        assert db.create_token(token) == token
        stored = db.get_token_by_id(token.token)
        assert stored == token
        assert stored.expires_at is None
        assert stored.max_requests is None
        assert stored.last_used_at is None
        assert stored.deactivated_at is None
        assert (stored.request_count, stored.cache_hit_count) == (0, 0)

    def test_create_token_duplicate_value(self, db: DB) -> None:
        token = self.given_token(db)
        other_project = self.given_project(db)
        with pytest.raises(TokenExistsError):
            db.create_token(self.new_token(other_project, token=token.token))
        assert db.get_token_by_id(token.token) == token
        assert db.list_tokens(other_project.id) == []

    def test_create_token_for_unknown_project(self, db: DB) -> None:
        token = self.new_token(unique("missing-project"))
        with pytest.raises(ProjectNotFoundError):
            db.create_token(token)
        with pytest.raises(TokenNotFoundError):
            db.get_token_by_id(token.token)

    def test_get_unknown_token(self, db: DB) -> None:
        self.given_token(db)
        with pytest.raises(TokenNotFoundError):
            db.get_token_by_id(generate_token())

    def test_a_token_is_found_by_its_exact_value_only(self, db: DB) -> None:
        # A case variant or padded value of a real token never authenticates, nor spends its
        # quota (a case-insensitive, PAD SPACE collation would find it): every backend
        # compares by code point, and the core refuses padded values before any query.
        token = self.given_token(db, token="sk-AbCdEfExactValue", max_requests=5)  # noqa: S106
        for variant in (
            "SK-ABCDEFEXACTVALUE",
            "sk-abcdefexactvalue",
            "sk-AbCdEfExactValue   ",
            "  sk-AbCdEfExactValue",
            "sk-AbCdEfExactValue\t",
        ):
            with pytest.raises(TokenNotFoundError):
                db.get_token_by_id(variant)
            with pytest.raises(TokenNotFoundError):
                db.increment_token_usage(variant)
        assert db.get_token_by_id(token.token).request_count == 0

    def test_update_unknown_token(self, db: DB) -> None:
        project = self.given_project(db)
        with pytest.raises(TokenNotFoundError):
            db.update_token(self.new_token(project))
        assert db.list_tokens() == []

    def test_delete_unknown_token(self, db: DB) -> None:
        with pytest.raises(TokenNotFoundError):
            db.delete_token(generate_token())

    def test_delete_token(self, db: DB) -> None:
        project = self.given_project(db)
        keep = self.given_token(db, project)
        gone = self.given_token(db, project)
        db.delete_token(gone.token)
        with pytest.raises(TokenNotFoundError):
            db.get_token_by_id(gone.token)
        with pytest.raises(TokenNotFoundError):
            db.delete_token(gone.token)
        assert db.list_tokens() == [keep]
        assert db.get_project_by_id(project.id) == project

    def test_update_token_stores_administrative_fields(self, db: DB) -> None:
        token = self.given_token(db, max_requests=5)
        expires = self.now() + timedelta(days=2, microseconds=7)
        changed = attrs.evolve(
            token, expires_at=expires, is_active=False, deactivated_at=at(50), max_requests=9
        )
        returned = db.update_token(changed)
        stored = db.get_token_by_id(token.token)
        assert returned == stored == changed

    def test_update_token_can_clear_optional_fields(self, db: DB) -> None:
        token = self.given_token(
            db,
            expires_at=self.now() + timedelta(hours=1),
            is_active=False,
            deactivated_at=at(1),
            max_requests=3,
        )
        cleared = attrs.evolve(
            token, expires_at=None, is_active=True, deactivated_at=None, max_requests=None
        )
        assert db.update_token(cleared) == cleared
        assert db.get_token_by_id(token.token) == cleared

    def test_update_token_never_overwrites_usage_counters(self, db: DB) -> None:
        stale = self.given_token(db, max_requests=100)
        for _ in range(3):
            db.increment_token_usage(stale.token)
        db.increment_cache_hit_count(stale.token, 2)
        fresh = db.get_token_by_id(stale.token)
        returned = db.update_token(attrs.evolve(stale, max_requests=50))
        stored = db.get_token_by_id(stale.token)
        assert stored.request_count == 3, "update_token() from a stale read wrote request_count"
        assert stored.cache_hit_count == 2, "update_token() from a stale read wrote cache_hit_count"
        assert stored.last_used_at == fresh.last_used_at, (
            "update_token() from a stale read wrote last_used_at"
        )
        assert stored.max_requests == 50, "update_token() did not store max_requests"
        assert returned == stored, "update_token() must return the stored token"

    def test_update_token_ignores_counters_and_identity_fields(self, db: DB) -> None:
        project = self.given_project(db)
        other = self.given_project(db)
        token = self.given_token(db, project, created_at=at(0))
        db.update_token(
            attrs.evolve(
                token,
                project_id=other.id,
                created_at=at(500),
                request_count=999,
                cache_hit_count=999,
                last_used_at=at(600),
            )
        )
        stored = db.get_token_by_id(token.token)
        assert stored == token, (
            "update_token() changed a field other than expires_at, is_active, deactivated_at "
            "and max_requests"
        )
        assert db.list_tokens(other.id) == [], "update_token() moved the token to another project"

    def test_list_tokens_newest_first(self, db: DB) -> None:
        project = self.given_project(db)
        made = [self.given_token(db, project, created_at=at(s)) for s in (20, 10, 30, 0)]
        expected = sorted(made, key=lambda t: t.created_at, reverse=True)
        assert db.list_tokens(project.id) == expected, "list_tokens(project): newest first"
        assert db.list_tokens() == expected, "list_tokens(): newest created_at first"

    def test_list_tokens_ties_broken_by_token_descending(self, db: DB) -> None:
        project = self.given_project(db)
        same = at(100)
        values = ["sk-tie-b", "sk-tie-d", "sk-tie-a", "sk-tie-c"]
        for value in values:
            self.given_token(db, project, token=value + "-" + "x" * 24, created_at=same)
        newest = self.given_token(db, project, token="sk-tie-0-" + "x" * 24, created_at=at(200))
        listed = [t.token for t in db.list_tokens(project.id)]
        expected = [newest.token, *sorted((v + "-" + "x" * 24 for v in values), reverse=True)]
        assert listed == expected, (
            "list_tokens(): newest created_at first, ties by token value descending"
        )
        assert [t.token for t in db.list_tokens()] == expected, "list_tokens() of every project"

    def test_list_tokens_filters_by_project(self, db: DB) -> None:
        first = self.given_project(db)
        second = self.given_project(db)
        a = [self.given_token(db, first, created_at=at(s)) for s in (1, 3)]
        b = [self.given_token(db, second, created_at=at(s)) for s in (2, 4)]
        assert db.list_tokens(first.id) == [a[1], a[0]]
        assert db.list_tokens(second.id) == [b[1], b[0]]
        assert db.list_tokens() == [b[1], a[1], b[0], a[0]]
        assert db.list_tokens(unique("missing")) == []
