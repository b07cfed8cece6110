"""The append-only audit log: create, read, filter, search, page and count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from .._db import DB
from .._errors import AlreadyExistsError, AuditEventNotFoundError
from .._models import (
    EXACT_FILTER_FIELDS,
    OUTCOMES,
    SEARCHED_FIELDS,
    AuditEvent,
    AuditEventFilter,
    generate_token,
    mask_token,
)
from ._base import ConformanceBase, at, unique


def _filter_values(field: str) -> tuple[str, str]:
    """Two values for an equality filter field, neither a substring of the other (so the
    tests hold for exact and for substring matching)."""
    if field == "outcome":
        first, second = OUTCOMES
        return first, second
    return f"{field}-aaa", f"{field}-bbb"


_MASKED_TOKEN = mask_token(generate_token())  # what an audit event stores, never the secret


class AuditTests(ConformanceBase):
    def given_events(self, db: DB, *changes: dict[str, Any]) -> list[AuditEvent]:
        return [db.create_audit_event(self.new_event(**change)) for change in changes]

    def test_create_audit_event_round_trips_every_field(self, db: DB) -> None:
        event = AuditEvent(
            action="token.use",
            actor="proxy",
            outcome="failure",
            timestamp=at(12.345678),
            project_id="p-1",
            request_id="r-1",
            correlation_id="c-1",
            client_ip="2001:db8::1",
            method="POST",
            path="/v1/chat/completions?x=1",
            user_agent="curl/8.0 (ünïcode ✓)",
            reason="limit reached",
            token_id=_MASKED_TOKEN,
            metadata={
                "status": 429,
                "ratio": 0.5,
                "ok": False,
                "none": None,
                "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
                "text": 'ünïcode ✓ "quoted" 100%',
            },
        )
        assert db.create_audit_event(event) == event
        assert db.get_audit_event_by_id(event.id) == event

    def test_create_audit_event_with_defaults_round_trips(self, db: DB) -> None:
        event = self.new_event()
        assert db.create_audit_event(event) == event
        stored = db.get_audit_event_by_id(event.id)
        assert stored == event
        assert stored.metadata is None
        assert stored.project_id is None

    def test_create_audit_event_with_empty_metadata(self, db: DB) -> None:
        event = db.create_audit_event(self.new_event(metadata={}))
        assert db.get_audit_event_by_id(event.id).metadata == {}

    def test_create_audit_event_duplicate_id(self, db: DB) -> None:
        event = db.create_audit_event(self.new_event())
        with pytest.raises(AlreadyExistsError):
            db.create_audit_event(self.new_event(id=event.id, action="other.action"))
        assert db.get_audit_event_by_id(event.id) == event
        assert db.count_audit_events() == 1

    def test_get_unknown_audit_event(self, db: DB) -> None:
        with pytest.raises(AuditEventNotFoundError):
            db.get_audit_event_by_id(unique("missing"))

    def test_audit_events_need_no_project_or_token(self, db: DB) -> None:
        event = db.create_audit_event(
            self.new_event(project_id=unique("deleted-project"), token_id=_MASKED_TOKEN)
        )
        assert db.get_audit_event_by_id(event.id) == event

    def test_list_audit_events_newest_first(self, db: DB) -> None:
        events = self.given_events(db, *({"timestamp": at(s)} for s in (5, 1, 9, 3)))
        expected = sorted(events, key=lambda e: e.timestamp, reverse=True)
        assert db.list_audit_events() == expected
        assert db.list_audit_events(AuditEventFilter()) == expected

    def test_list_audit_events_ties_broken_by_id_descending(self, db: DB) -> None:
        same = at(100)
        events = self.given_events(
            db,
            {"id": "id-b", "timestamp": same},
            {"id": "id-d", "timestamp": same},
            {"id": "id-a", "timestamp": same},
            {"id": "id-c", "timestamp": at(50)},
            {"id": "id-0", "timestamp": at(200)},
        )
        ids = [e.id for e in db.list_audit_events()]
        assert ids == ["id-0", "id-d", "id-b", "id-a", "id-c"], (
            "list_audit_events() ids: newest timestamp first, ties by id descending"
        )
        assert len(events) == 5

    def test_list_audit_events_microsecond_order(self, db: DB) -> None:
        base = at(0)
        events = self.given_events(
            db,
            {"id": "id-a", "timestamp": base + timedelta(microseconds=2)},
            {"id": "id-b", "timestamp": base + timedelta(microseconds=1)},
            {"id": "id-c", "timestamp": base + timedelta(microseconds=3)},
        )
        assert [e.id for e in db.list_audit_events()] == ["id-c", "id-a", "id-b"]
        assert {e.id for e in events} == {"id-a", "id-b", "id-c"}

    @pytest.mark.parametrize("field", sorted(EXACT_FILTER_FIELDS))
    def test_filter_by_field(self, db: DB, field: str) -> None:
        wanted, other = _filter_values(field)
        matching = self.given_events(
            db,
            {field: wanted, "timestamp": at(1)},
            {field: wanted, "timestamp": at(3)},
        )
        self.given_events(db, {field: other, "timestamp": at(2)})
        if field != "outcome":
            self.given_events(db, {"timestamp": at(4)})  # the field left empty
        criteria: dict[str, Any] = {field: wanted}
        flt = AuditEventFilter(**criteria)
        assert db.list_audit_events(flt) == [matching[1], matching[0]], f"list_audit_events({flt})"
        assert db.count_audit_events(flt) == 2, f"count_audit_events({flt})"

    def test_filters_combine_with_and(self, db: DB) -> None:
        events = self.given_events(
            db,
            {"action": "token.use", "outcome": "success", "timestamp": at(1)},
            {"action": "token.use", "outcome": "failure", "timestamp": at(2)},
            {"action": "token.revoke", "outcome": "failure", "timestamp": at(3)},
        )
        flt = AuditEventFilter(action="token.use", outcome="failure")
        assert db.list_audit_events(flt) == [events[1]]
        assert db.count_audit_events(flt) == 1
        nothing = AuditEventFilter(action="token.revoke", outcome="success")
        assert db.list_audit_events(nothing) == []
        assert db.count_audit_events(nothing) == 0

    def test_time_range_start_inclusive_end_exclusive(self, db: DB) -> None:
        tick = timedelta(microseconds=1)
        t0, t1, t2 = at(10), at(20), at(30)
        e0, e1, e2, e3 = self.given_events(
            db,
            {"timestamp": t0},
            {"timestamp": t1},
            {"timestamp": t2 - tick},
            {"timestamp": t2},
        )

        names = {e.id: name for e, name in ((e0, "e0"), (e1, "e1"), (e2, "e2"), (e3, "e3"))}

        def check(expected: list[AuditEvent], **bounds: Any) -> None:
            flt = AuditEventFilter(**bounds)
            found = db.list_audit_events(flt)
            shown = ", ".join(f"{k}={v.isoformat()}" for k, v in bounds.items())
            got, wanted = [names.get(e.id, e.id) for e in found], [names[e.id] for e in expected]
            assert got == wanted, (
                f"list_audit_events({shown}) with e0..e3 at t0, t1, t2-1us, t2: {got}, expected "
                f"{wanted} (start_time is inclusive, end_time exclusive)"
            )
            assert db.count_audit_events(flt) == len(found), f"count_audit_events({shown})"

        check([e3, e2, e1], start_time=t1)
        check([e3, e2], start_time=t1 + tick)
        check([e0], end_time=t1)
        check([e1, e0], end_time=t1 + tick)
        check([e2, e1], start_time=t1, end_time=t2)
        check([e3], start_time=t2, end_time=t2 + tick)
        check([], start_time=t2, end_time=t2)

    def test_time_range_with_other_zones(self, db: DB) -> None:
        from datetime import timezone

        plus_two = timezone(timedelta(hours=2))
        event = db.create_audit_event(self.new_event(timestamp=at(0)))
        inside = AuditEventFilter(
            start_time=at(0).astimezone(plus_two),
            end_time=(at(0) + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-7))),
        )
        assert db.list_audit_events(inside) == [event]
        outside = AuditEventFilter(end_time=at(0).astimezone(plus_two))
        assert db.list_audit_events(outside) == []

    @pytest.mark.parametrize("field", SEARCHED_FIELDS)
    def test_search_matches_field_case_insensitively(self, db: DB, field: str) -> None:
        needle = "NdL-7"  # short: the value fits every field (method holds 10 characters)
        value: Any = {"detail": f"xx{needle}yy"} if field == "metadata" else f"xx{needle}yy"
        (hit,) = self.given_events(db, {field: value})
        self.given_events(db, {field: {"detail": "hay"} if field == "metadata" else "hay"})
        for query in ("ndl-7", "NDL-7", needle):
            flt = AuditEventFilter(search=query)
            assert db.list_audit_events(flt) == [hit], (
                f"list_audit_events(search={query!r}) in {field}"
            )
            assert db.count_audit_events(flt) == 1, (
                f"count_audit_events(search={query!r}) in {field}"
            )

    @pytest.mark.parametrize("field", ["reason", "metadata"])
    def test_search_is_case_insensitive_beyond_ascii(self, db: DB, field: str) -> None:
        text = "Größe ÜBER Straße ΣΟΦΙΑ"
        value: Any = {"note": text} if field == "metadata" else text
        (hit,) = self.given_events(db, {field: value})
        self.given_events(db, {field: {"note": "ascii"} if field == "metadata" else "ascii"})
        for query in ("über", "ÜBER", "σοφια", "größe"):
            flt = AuditEventFilter(search=query)
            assert db.list_audit_events(flt) == [hit], f"search {query!r} in {field}"

    @pytest.mark.parametrize(
        ("query", "matching", "not_matching"),
        [
            ("50%", "quota at 50% used", "HTTP 500 error"),
            ("%", "100%", "no percent sign"),
            ("a_b", "key a_b here", "key axb here"),
            ("_", "snake_case", "nodash"),
            ("\\d", "C:\\dir", "plain d"),
            ("'", "it's", "its"),
        ],
    )
    def test_search_matches_wildcards_literally(
        self, db: DB, query: str, matching: str, not_matching: str
    ) -> None:
        (hit,) = self.given_events(db, {"reason": matching, "timestamp": at(1)})
        self.given_events(db, {"reason": not_matching, "timestamp": at(2)})
        flt = AuditEventFilter(search=query)
        assert db.list_audit_events(flt) == [hit], (
            f"list_audit_events(search={query!r}) must match {matching!r} and not {not_matching!r}"
        )
        assert db.count_audit_events(flt) == 1, f"count_audit_events(search={query!r})"

    def test_search_combines_with_filters(self, db: DB) -> None:
        events = self.given_events(
            db,
            {"reason": "rate limited", "outcome": "failure", "timestamp": at(1)},
            {"reason": "rate limited", "outcome": "success", "timestamp": at(2)},
            {"reason": "fine", "outcome": "failure", "timestamp": at(3)},
        )
        flt = AuditEventFilter(search="LIMITED", outcome="failure")
        assert db.list_audit_events(flt) == [events[0]]
        assert db.count_audit_events(flt) == 1

    def test_limit_and_offset_page_newest_first(self, db: DB) -> None:
        events = self.given_events(db, *({"timestamp": at(s)} for s in range(7)))
        newest = events[::-1]

        def page(**paging: Any) -> list[AuditEvent]:
            return db.list_audit_events(AuditEventFilter(**paging))

        assert page(limit=3) == newest[:3]
        assert page(limit=3, offset=3) == newest[3:6]
        assert page(limit=3, offset=6) == newest[6:]
        assert page(limit=3, offset=7) == []
        assert page(offset=5) == newest[5:]
        assert page(limit=100) == newest
        assert page(limit=1, offset=2) == [newest[2]]

    def test_count_ignores_limit_and_offset(self, db: DB) -> None:
        self.given_events(db, *({"timestamp": at(s), "outcome": "failure"} for s in range(5)))
        self.given_events(db, {"outcome": "success"})
        for flt, expected in (
            (None, 6),
            (AuditEventFilter(limit=2, offset=1), 6),
            (AuditEventFilter(outcome="failure", limit=1), 5),
            (AuditEventFilter(outcome="failure", offset=10), 5),
        ):
            assert db.count_audit_events(flt) == expected, (
                f"count_audit_events({flt}) must ignore limit and offset"
            )
        assert len(db.list_audit_events(AuditEventFilter(outcome="failure", limit=2))) == 2

    # -- keyset paging (before_id) ---------------------------------------------------------

    def given_keyset_events(self, db: DB) -> list[AuditEvent]:
        """Events with timestamp ties and ids that differ by case or code point only: the
        full list, newest first (ties by id descending, by code point)."""
        ids = ["k-a", "k-B", "k-b", "k-\u00e1", "k-A", "k-\u00c1", "k-Z", "k-\U0001f600"]
        changes: list[dict[str, Any]] = []
        for index, event_id in enumerate(ids):
            changes.append({"id": event_id, "timestamp": at(index % 3)})
        for index in range(4):
            changes.append({"id": f"k-{index}", "timestamp": at(1)})
        self.given_events(db, *changes)
        listed = db.list_audit_events()
        assert len(listed) == len(changes)
        return listed

    def test_before_id_pages_concatenate_to_the_list(self, db: DB) -> None:
        listed = self.given_keyset_events(db)
        for size in (1, 2, 3, 5):
            pages: list[AuditEvent] = []
            page = db.list_audit_events(AuditEventFilter(limit=size))
            while page:
                pages.extend(page)
                page = db.list_audit_events(AuditEventFilter(limit=size, before_id=page[-1].id))
            assert pages == listed, f"keyset pages of {size} concatenated"

    def test_before_id_lists_and_counts_what_follows_in_list_order(self, db: DB) -> None:
        listed = self.given_keyset_events(db)
        for index, anchor in enumerate(listed):
            flt = AuditEventFilter(before_id=anchor.id)
            assert db.list_audit_events(flt) == listed[index + 1 :], f"before_id={anchor.id!r}"
            assert db.count_audit_events(flt) == len(listed) - index - 1, (
                f"count_audit_events(before_id={anchor.id!r})"
            )

    def test_before_id_combines_with_filters_and_offset(self, db: DB) -> None:
        mine, other = unique("project"), unique("project")
        self.given_events(
            db,
            *(
                {
                    "id": f"c-{index:02d}",
                    "timestamp": at(index // 2),
                    "project_id": mine if index % 3 else other,
                    "outcome": "failure" if index % 4 else "success",
                }
                for index in range(24)
            ),
        )
        events = db.list_audit_events()
        filters: list[dict[str, Any]] = [
            {"project_id": mine},
            {"project_id": mine, "outcome": "failure"},
            {"project_id": mine, "limit": 3, "offset": 2},
            {"offset": 5},
            {"start_time": at(2), "end_time": at(9), "limit": 4},
            {"search": "C-1"},
        ]
        for criteria in filters:
            for anchor in events[::3]:  # anchors inside and outside the filter
                flt = AuditEventFilter(before_id=anchor.id, **criteria)
                wanted = flt.select(events)  # the models' own reading of the filter
                assert db.list_audit_events(flt) == wanted, f"list_audit_events({flt})"
                assert db.count_audit_events(flt) == flt.count(events), f"count({flt})"
        project = [e for e in events if e.project_id == mine]
        first = db.list_audit_events(AuditEventFilter(project_id=mine, limit=4))
        rest = db.list_audit_events(
            AuditEventFilter(project_id=mine, before_id=first[-1].id, offset=2, limit=3)
        )
        assert first + rest == project[:4] + project[6:9]

    def test_before_id_of_the_last_event_is_an_empty_page(self, db: DB) -> None:
        listed = self.given_keyset_events(db)
        flt = AuditEventFilter(before_id=listed[-1].id)
        assert db.list_audit_events(flt) == []
        assert db.count_audit_events(flt) == 0
        outside = AuditEventFilter(before_id=listed[0].id, project_id=unique("none"))
        assert db.list_audit_events(outside) == []
        assert db.count_audit_events(outside) == 0

    def test_before_id_unknown_is_not_found(self, db: DB) -> None:
        missing = unique("missing")
        for flt in (AuditEventFilter(before_id=missing), AuditEventFilter(before_id="k-\u00e1")):
            with pytest.raises(AuditEventNotFoundError) as empty_list:
                db.list_audit_events(flt)
            with pytest.raises(AuditEventNotFoundError):
                db.count_audit_events(flt)
            assert empty_list.value.key == flt.before_id
        self.given_events(db, {"id": "k-a"}, {"id": "k-A"})  # "k-\u00e1" differs from both
        for flt in (
            AuditEventFilter(before_id=missing),
            AuditEventFilter(before_id="k-\u00e1", limit=1, offset=1),
        ):
            with pytest.raises(AuditEventNotFoundError) as listed:
                db.list_audit_events(flt)
            with pytest.raises(AuditEventNotFoundError) as counted:
                db.count_audit_events(flt)
            assert listed.value.key == counted.value.key == flt.before_id
