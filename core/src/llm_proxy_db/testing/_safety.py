"""UTC round trips in a non-UTC local zone, and secrets kept out of errors and reprs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import attrs
import pytest

from .._db import DB
from .._errors import (
    AlreadyExistsError,
    AuditEventNotFoundError,
    DatabaseError,
    NotFoundError,
    ProjectExistsError,
    ProjectInactiveError,
    ProjectNotFoundError,
    TokenExistsError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
    TokenNotFoundError,
    TokenUsageError,
)
from .._models import AuditEventFilter, Token, generate_token, mask_token
from ._base import ConformanceBase, assert_utc, at, secret_key, unique

_KOLKATA = timezone(timedelta(hours=5, minutes=30))
_MINUS_THREE = timezone(timedelta(hours=-3))


@contextmanager
def local_zone(name: str) -> Iterator[None]:
    """Run the block with the process's local time zone set to ``name``."""
    if not hasattr(time, "tzset"):  # pragma: no cover - Windows
        pytest.skip("time.tzset() is not available on this platform")
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _error_text(exc: BaseException) -> str:
    """Everything that can be read of the exception and of every exception chained to it:
    str(), repr(), the args and the attributes, along ``__cause__`` and ``__context__``
    (a suppressed context is still there for a logger or a debugger to print)."""
    parts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *map(repr, current.args)]
        parts += [repr(value) for value in vars(current).values()]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return "\n".join(parts)


def expect_error(expected: type[BaseException], call: Callable[[], object], what: str) -> Any:
    """The error ``call`` raises, which must be an ``expected``; a failure names ``what``
    (the call and its case) and what happened instead."""
    try:
        result = call()
    except expected as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"{what}: expected {expected.__name__}, got {type(exc).__name__}: {exc}")
    pytest.fail(f"{what}: expected {expected.__name__}, but the call returned {result!r}")


class SafetyTests(ConformanceBase):
    # -- time zones ---------------------------------------------------------------------

    def test_utc_round_trip_in_non_utc_local_zone(self, db: DB) -> None:
        with local_zone("America/New_York"):
            created = datetime(2024, 3, 10, 2, 30, 0, 123456, tzinfo=_KOLKATA)
            project = self.given_project(
                db,
                created_at=created,
                updated_at=created,
                is_active=False,
                deactivated_at=datetime(2024, 11, 3, 1, 30, 0, 1, tzinfo=_MINUS_THREE),
            )
            stored = db.get_project_by_id(project.id)
            assert stored == project
            for field in ("created_at", "updated_at", "deactivated_at"):
                assert_utc(getattr(stored, field), f"get_project_by_id() {field}")
            assert stored.created_at.microsecond == 123456

            expires = (self.now() + timedelta(days=3, microseconds=17)).astimezone(_KOLKATA)
            token = self.given_token(
                db, self.given_project(db), expires_at=expires, created_at=created
            )
            stored_token = db.get_token_by_id(token.token)
            assert stored_token == token
            assert_utc(stored_token.expires_at, "get_token_by_id() expires_at")
            assert_utc(stored_token.created_at, "get_token_by_id() created_at")

            before = self.now()
            used = db.increment_token_usage(token.token)
            updated = db.update_project(attrs.evolve(stored, name=stored.name + "-x"))
            after = self.now()
            self.assert_within(
                before, used.last_used_at, after, what="increment_token_usage() last_used_at"
            )
            self.assert_within(
                before, updated.updated_at, after, what="update_project() updated_at"
            )
            self.assert_within(
                before,
                db.get_token_by_id(token.token).last_used_at,
                after,
                what="get_token_by_id() last_used_at after increment_token_usage()",
            )

    def test_expiry_in_non_utc_local_zone(self, db: DB) -> None:
        with local_zone("Asia/Tokyo"):
            project = self.given_project(db)
            expired = self.given_token(
                db,
                project,
                expires_at=(self.now() - timedelta(milliseconds=1)).astimezone(_KOLKATA),
            )
            alive = self.given_token(
                db, project, expires_at=(self.now() + timedelta(hours=1)).astimezone(_MINUS_THREE)
            )
            with pytest.raises(TokenExpiredError):
                db.increment_token_usage(expired.token)
            assert db.increment_token_usage(alive.token).request_count == 1
            assert db.revoke_expired_tokens() == 1
            assert db.stats().expired_tokens == 1

    def test_audit_order_across_daylight_saving_change(self, db: DB) -> None:
        # 05:30 UTC is 01:30 EDT and 06:00 UTC is 01:00 EST on 2024-11-03 in New York: a
        # backend that stored local wall-clock times would order these two the wrong way.
        with local_zone("America/New_York"):
            first = datetime(2024, 11, 3, 5, 30, tzinfo=UTC)
            second = datetime(2024, 11, 3, 6, 0, tzinfo=UTC)
            a = db.create_audit_event(self.new_event(id="id-a", timestamp=first))
            b = db.create_audit_event(self.new_event(id="id-b", timestamp=second))
            assert db.list_audit_events() == [b, a]
            flt = AuditEventFilter(start_time=second.astimezone(_KOLKATA))
            assert db.list_audit_events(flt) == [b]
            assert db.count_audit_events(AuditEventFilter(end_time=second)) == 1
            for event in db.list_audit_events():
                assert_utc(event.timestamp, "list_audit_events() timestamp")

    # -- secrets ------------------------------------------------------------------------

    def test_errors_never_contain_secrets(self, db: DB) -> None:
        api_key = secret_key()
        project = self.given_project(db, openai_api_key=api_key)
        limited = self.given_token(db, project, max_requests=1)
        db.increment_token_usage(limited.token)
        inactive = self.given_token(db, project, is_active=False, deactivated_at=at(1))
        expired = self.given_token(db, project, expires_at=self.now() - timedelta(seconds=1))
        idle_project = self.given_project(db, openai_api_key=secret_key())
        idle_token = self.given_token(db, idle_project)
        db.update_project(attrs.evolve(idle_project, is_active=False))
        unknown = generate_token()
        orphan = generate_token()
        secrets_ = [
            api_key,
            idle_project.openai_api_key,
            limited.token,
            inactive.token,
            expired.token,
            idle_token.token,
            unknown,
            orphan,
        ]
        provocations: dict[str, tuple[type[DatabaseError], Callable[[], Any]]] = {
            "duplicate project id": (
                AlreadyExistsError,
                lambda: db.create_project(self.new_project(id=project.id, openai_api_key=api_key)),
            ),
            "duplicate project name": (
                AlreadyExistsError,
                lambda: db.create_project(
                    self.new_project(name=project.name, openai_api_key=api_key)
                ),
            ),
            "update unknown project": (
                NotFoundError,
                lambda: db.update_project(self.new_project(openai_api_key=api_key)),
            ),
            "duplicate token": (
                AlreadyExistsError,
                lambda: db.create_token(self.new_token(project, token=limited.token)),
            ),
            "token for unknown project": (
                NotFoundError,
                lambda: db.create_token(self.new_token(unique("missing"), token=orphan)),
            ),
            "get unknown token": (NotFoundError, lambda: db.get_token_by_id(unknown)),
            "update unknown token": (
                NotFoundError,
                lambda: db.update_token(self.new_token(project, token=unknown)),
            ),
            "delete unknown token": (NotFoundError, lambda: db.delete_token(unknown)),
            "revoke unknown token": (NotFoundError, lambda: db.revoke_token(unknown)),
            "reset unknown token": (NotFoundError, lambda: db.reset_token_usage(unknown)),
            "cache hit unknown token": (
                NotFoundError,
                lambda: db.increment_cache_hit_count(unknown),
            ),
            "increment unknown token": (NotFoundError, lambda: db.increment_token_usage(unknown)),
            "limit reached": (
                TokenLimitReachedError,
                lambda: db.increment_token_usage(limited.token),
            ),
            "inactive token": (
                TokenInactiveError,
                lambda: db.increment_token_usage(inactive.token),
            ),
            "expired token": (TokenExpiredError, lambda: db.increment_token_usage(expired.token)),
            "inactive project": (
                ProjectInactiveError,
                lambda: db.increment_token_usage(idle_token.token),
            ),
        }
        leaks: list[str] = []
        for what, (expected, call) in provocations.items():
            text = _error_text(expect_error(expected, call, what))
            leaks += [f"{what}: {mask_token(s)}" for s in secrets_ if s in text]
        assert not leaks, f"errors (messages, attributes or chained errors) hold secrets: {leaks}"

    def test_errors_carry_their_attributes(self, db: DB) -> None:
        """What a proxy maps to an HTTP answer: the keys and the refusal's details."""
        project = self.given_project(db)
        limited = self.given_token(db, project, max_requests=1)
        db.increment_token_usage(limited.token)
        inactive = self.given_token(db, project, is_active=False, deactivated_at=at(1))
        expired = self.given_token(db, project, expires_at=self.now() - timedelta(seconds=1))
        idle_project = self.given_project(db)
        idle_token = self.given_token(db, idle_project)
        db.update_project(attrs.evolve(idle_project, is_active=False))
        unknown, missing_project = generate_token(), unique("missing")

        refusals: list[tuple[str, type[TokenUsageError], Token]] = [
            ("limit reached", TokenLimitReachedError, limited),
            ("inactive token", TokenInactiveError, inactive),
            ("expired token", TokenExpiredError, expired),
            ("inactive project", ProjectInactiveError, idle_token),
        ]
        for what, expected, token in refusals:
            refused = expect_error(expected, partial(db.increment_token_usage, token.token), what)
            where = f"increment_token_usage() ({what})"
            assert refused.masked_token == mask_token(token.token), f"{where}: masked_token"
            assert refused.project_id == token.project_id, f"{where}: project_id"
        limit = expect_error(
            TokenLimitReachedError,
            lambda: db.increment_token_usage(limited.token),
            "limit reached",
        )
        assert limit.max_requests == 1, "TokenLimitReachedError.max_requests"

        masked = mask_token(unknown)
        keyed: list[tuple[str, type[DatabaseError], Callable[[], object], set[str]]] = [
            (
                "get_token_by_id(unknown)",
                TokenNotFoundError,
                lambda: db.get_token_by_id(unknown),
                {masked},
            ),
            (
                "increment_token_usage(unknown)",
                TokenNotFoundError,
                lambda: db.increment_token_usage(unknown),
                {masked},
            ),
            (
                "revoke_token(unknown)",
                TokenNotFoundError,
                lambda: db.revoke_token(unknown),
                {masked},
            ),
            (
                "reset_token_usage(unknown)",
                TokenNotFoundError,
                lambda: db.reset_token_usage(unknown),
                {masked},
            ),
            (
                "delete_token(unknown)",
                TokenNotFoundError,
                lambda: db.delete_token(unknown),
                {masked},
            ),
            (
                "get_project_by_id(unknown)",
                ProjectNotFoundError,
                lambda: db.get_project_by_id(missing_project),
                {missing_project},
            ),
            (
                "delete_project(unknown)",
                ProjectNotFoundError,
                lambda: db.delete_project(missing_project),
                {missing_project},
            ),
            (
                "create_token() for an unknown project",
                ProjectNotFoundError,
                lambda: db.create_token(self.new_token(missing_project)),
                {missing_project},
            ),
            (
                "create_token() duplicate",
                TokenExistsError,
                lambda: db.create_token(self.new_token(project, token=limited.token)),
                {mask_token(limited.token)},
            ),
            (
                "create_project() duplicate name",
                ProjectExistsError,
                lambda: db.create_project(self.new_project(name=project.name)),
                {project.name},
            ),
            (
                "create_project() duplicate id",
                ProjectExistsError,
                lambda: db.create_project(self.new_project(id=project.id)),
                {project.id},
            ),
            (
                "get_audit_event_by_id(unknown)",
                AuditEventNotFoundError,
                lambda: db.get_audit_event_by_id(missing_project),
                {missing_project},
            ),
        ]
        for what, kind, call, allowed in keyed:
            error = expect_error(kind, call, what)
            assert error.key in allowed, f"{what}: {kind.__name__}.key is {error.key!r}"
        event = db.create_audit_event(self.new_event())
        duplicate = expect_error(
            AlreadyExistsError,
            lambda: db.create_audit_event(self.new_event(id=event.id)),
            "create_audit_event() duplicate id",
        )
        assert duplicate.key == event.id, "create_audit_event() duplicate: AlreadyExistsError.key"

    def test_reprs_never_contain_secrets(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project)
        for shown in (
            db.get_project_by_id(project.id),
            db.list_projects()[0],
            db.get_token_by_id(token.token),
            db.list_tokens()[0],
            db.increment_token_usage(token.token),
            db.stats(),
            db,
        ):
            text = repr(shown) + str(shown)
            assert project.openai_api_key not in text
            assert token.token not in text
