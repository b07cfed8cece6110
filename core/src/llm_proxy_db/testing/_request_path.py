"""The proxy's request path: ``authorize`` and the batch ``create_audit_events``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest

from .._db import DB
from .._errors import (
    DatabaseError,
    TokenLimitReachedError,
)
from .._models import AuditEvent, Authorization, generate_token
from ._base import ConformanceBase, at, unique

TICK_S = timedelta(seconds=1)


def _refusal(call: Callable[[], Any]) -> tuple[str, str, dict[str, Any]]:
    """The refusal ``call`` raised (class name, message, attributes), or "no refusal"."""
    try:
        call()
    except DatabaseError as exc:
        shown = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
        return type(exc).__name__, str(exc), shown
    return "no refusal", "", {}


class RequestPathTests(ConformanceBase):
    # -- authorize ------------------------------------------------------------------------

    def test_authorize_counts_and_returns_the_project(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=3, last_used_at=None)
        before = self.now()
        granted = db.authorize(token.token)
        after = self.now()
        assert isinstance(granted, Authorization)
        assert granted.token.request_count == 1
        self.assert_within(
            before, granted.token.last_used_at, after, what="authorize() last_used_at"
        )
        assert granted.token == db.get_token_by_id(token.token), (
            "authorize() returned another token"
        )
        assert granted.project == db.get_project_by_id(project.id)
        assert granted.project.openai_api_key == project.openai_api_key, "no upstream key"
        assert granted.token == attrs.evolve(
            token, request_count=1, last_used_at=granted.token.last_used_at
        )

    def test_authorize_and_increment_count_alike(self, db: DB) -> None:
        token = self.given_token(db, max_requests=4)
        assert db.authorize(token.token).token.request_count == 1
        assert db.increment_token_usage(token.token).request_count == 2
        assert db.authorize(token.token).token.request_count == 3
        assert db.increment_token_usage(token.token).request_count == 4
        at_limit = db.get_token_by_id(token.token)
        with pytest.raises(TokenLimitReachedError):
            db.authorize(token.token)
        assert db.get_token_by_id(token.token) == at_limit, "a refused authorize() counted"

    @pytest.mark.parametrize(
        "wrong",
        ["unknown", "inactive", "expired", "at its limit", "of an inactive project", "deleted"],
    )
    def test_authorize_refuses_as_increment_does(self, db: DB, wrong: str) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=1)
        value = token.token
        if wrong == "unknown":
            value = generate_token()
        elif wrong == "inactive":
            db.revoke_token(token.token)
        elif wrong == "expired":
            db.update_token(attrs.evolve(token, expires_at=self.now() - timedelta(seconds=1)))
        elif wrong == "at its limit":
            db.increment_token_usage(token.token)
        elif wrong == "of an inactive project":
            db.update_project(attrs.evolve(project, is_active=False, deactivated_at=at(1)))
        else:
            db.delete_project(project.id)
        stored = None if wrong in ("unknown", "deleted") else db.get_token_by_id(value)
        expected = _refusal(lambda: db.increment_token_usage(value))
        assert expected[0] != "no refusal"
        got = _refusal(lambda: db.authorize(value))
        assert got == expected, (
            f"authorize() of a token that is {wrong} raised {got[0]} ({got[1]!r}); "
            f"increment_token_usage() raised {expected[0]} ({expected[1]!r})"
        )
        if stored is not None:
            assert db.get_token_by_id(value) == stored, "a refused authorize() changed the token"

    def test_authorize_refusal_order(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=1)
        db.authorize(token.token)
        at_limit = db.get_token_by_id(token.token)
        db.update_project(attrs.evolve(project, is_active=False, deactivated_at=at(1)))
        wrong = attrs.evolve(
            at_limit, is_active=False, deactivated_at=at(2), expires_at=self.now() - TICK_S
        )
        steps = [
            wrong,
            attrs.evolve(wrong, is_active=True, deactivated_at=None),
            attrs.evolve(wrong, is_active=True, deactivated_at=None, expires_at=None),
        ]
        for state in steps:
            db.update_token(state)
            expected = _refusal(lambda: db.increment_token_usage(token.token))
            assert _refusal(lambda: db.authorize(token.token)) == expected
        db.update_project(attrs.evolve(project, is_active=True, deactivated_at=None))
        expected = _refusal(lambda: db.increment_token_usage(token.token))
        assert expected[0] == "TokenLimitReachedError"
        assert _refusal(lambda: db.authorize(token.token)) == expected
        assert db.get_token_by_id(token.token).request_count == 1, "a refusal counted a request"

    def test_authorize_in_a_transaction(self, db: DB) -> None:
        project = self.given_project(db)
        token = self.given_token(db, project)
        with db.transaction() as tx:
            granted = tx.authorize(token.token)
            assert granted.project == tx.get_project_by_id(project.id)
        assert db.get_token_by_id(token.token).request_count == 1
        with pytest.raises(RuntimeError), db.transaction() as tx:
            tx.authorize(token.token)
            raise RuntimeError("roll back")
        assert db.get_token_by_id(token.token).request_count == 1, "a rolled-back count stayed"

    def test_authorize_exact_limit_with_racing_threads(self, db: DB) -> None:
        threads, attempts_each, limit = 8, 25, 50
        project = self.given_project(db)
        token = self.given_token(db, project, max_requests=limit)
        barrier = threading.Barrier(threads)
        outcomes: Counter[str] = Counter()
        counts: list[int] = []
        lock = threading.Lock()

        def work(index: int) -> None:
            local: Counter[str] = Counter()
            seen: list[int] = []
            barrier.wait(timeout=30)
            for attempt in range(attempts_each):
                try:
                    if (index + attempt) % 4:
                        granted = db.authorize(token.token)
                        if granted.project.id != project.id:
                            local["wrong project"] += 1
                        seen.append(granted.token.request_count)
                    else:
                        seen.append(db.increment_token_usage(token.token).request_count)
                    local["ok"] += 1
                except TokenLimitReachedError:
                    local["limit"] += 1
                except Exception as exc:  # reported below
                    local[type(exc).__name__] += 1
            with lock:
                outcomes.update(local)
                counts.extend(seen)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert dict(outcomes) == {"ok": limit, "limit": threads * attempts_each - limit}
        assert sorted(counts) == list(range(1, limit + 1)), "each call gets its own count"
        assert db.get_token_by_id(token.token).request_count == limit

    # -- create_audit_events --------------------------------------------------------------

    def test_create_audit_events_stores_new_and_skips_stored(self, db: DB) -> None:
        stored = db.create_audit_event(self.new_event(action="first.version"))
        again = attrs.evolve(stored, action="second.version")
        new = [self.new_event() for _ in range(3)]
        assert db.create_audit_events([new[0], again, new[1], new[2]]) == 3
        assert db.get_audit_event_by_id(stored.id) == stored, "a skipped event overwrote one"
        for event in new:
            assert db.get_audit_event_by_id(event.id) == event
        assert db.count_audit_events() == 4

    def test_create_audit_events_duplicates_in_a_batch_count_once(self, db: DB) -> None:
        first = self.new_event(action="first.copy")
        events = [first, attrs.evolve(first, action="second.copy"), self.new_event(), first]
        assert db.create_audit_events(events) == 2
        assert db.get_audit_event_by_id(first.id) == first, "the batch's first copy is stored"
        assert db.count_audit_events() == 2

    def test_create_audit_events_of_nothing(self, db: DB) -> None:
        db.create_audit_event(self.new_event())
        assert db.create_audit_events([]) == 0
        assert db.count_audit_events() == 1

    def test_create_audit_events_thousand_then_replay(self, db: DB) -> None:
        base = self.now()
        events = [
            self.new_event(id=unique("bulk"), timestamp=base + timedelta(microseconds=i))
            for i in range(1000)
        ]
        assert db.create_audit_events(events) == 1000
        assert db.count_audit_events() == 1000
        assert db.create_audit_events(events) == 0, "a replay stored something"
        assert db.create_audit_events(list(reversed(events))) == 0
        assert db.count_audit_events() == 1000, "a replay duplicated events"
        assert db.list_audit_events() == list(reversed(events))

    def test_create_audit_events_round_trips_every_field(self, db: DB) -> None:
        project = self.given_project(db)
        full = AuditEvent(
            action="token.use",
            actor="proxy ü",
            outcome="failure",
            timestamp=at(3.123456),
            project_id=project.id,
            request_id=unique("request"),
            correlation_id=unique("correlation"),
            client_ip="2001:db8::1",
            method="POST",
            path="/v1/chat/completions?x=1",
            user_agent="curl/8 ✓",
            reason="limit reached",
            token_id=generate_token()[:12],
            metadata={"model": "gpt", "tokens": [1, 2], "nested": {"ok": True}, "n": None},
        )
        bare = self.new_event(outcome="success")
        assert db.create_audit_events([full, bare]) == 2
        assert db.get_audit_event_by_id(full.id) == full
        assert db.get_audit_event_by_id(bare.id) == bare

    def test_create_audit_events_in_a_transaction(self, db: DB) -> None:
        events = [self.new_event() for _ in range(3)]
        with pytest.raises(RuntimeError), db.transaction() as tx:
            assert tx.create_audit_events(events) == 3
            raise RuntimeError("roll back")
        assert db.count_audit_events() == 0, "a rolled-back batch stayed"
        with db.transaction() as tx:
            assert tx.create_audit_events(events[:2]) == 2
            assert tx.create_audit_events(events) == 1
        assert db.count_audit_events() == 3
