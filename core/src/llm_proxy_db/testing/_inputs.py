"""Bad input, table-driven: every text field and filter, the counters, times, metadata.

Each input either raises ``TypeError`` / ``ValueError`` / a ``DatabaseError`` subclass
before any statement (and nothing in the database changes), or is stored and read back
exactly. The expected answer of every input is written in the tables below, from the
limits the models declare, so every backend must give the same one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import attrs
import pytest

from .._db import DB
from .._errors import (
    DatabaseError,
    NotFoundError,
    ProjectNotFoundError,
    TokenNotFoundError,
    TokenUsageError,
    TransientError,
)
from .._limits import MAX_COUNT, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, TEXT_LIMITS
from .._models import AuditEvent, AuditEventFilter, Project, Token
from ._base import ConformanceBase, at

__all__ = ["InputTests"]

MEGABYTE: Final = "x" * 1_000_000
SQL_AND_WILDCARDS: Final = (
    "'; DROP TABLE projects; --",
    "%",
    "_",
    "\\",
    "!",
    "a%b_c!d\\e",
    "%_%",
    '"quoted" `ticks` $1 ? :name',
)
LOOK_ALIKES: Final = (
    "p\u0430yp\u0430l",  # Cyrillic a
    "\u00e9",  # é, composed
    "e\u0301",  # e and a combining accent
    "\ufb01le",  # the fi ligature
    "\uff50\uff41\uff59",  # fullwidth
    "a\u200bb",  # a zero-width space
    "\u202eevil",  # a right-to-left override
    "\U0001f600 emoji",
    "\u0130stanbul",  # lower() grows it
    "\u039f\u0394\u039f\u03a3",  # lower() ends it in a final sigma
)
STORED_TEXTS: Final = (*SQL_AND_WILDCARDS, *LOOK_ALIKES)
"""Texts every field stores and reads back exactly, as far as their length fits."""
REFUSED_TEXTS: Final = (MEGABYTE, "a\x00b", "\x00", "a\ud800b", "\udfff")
"""Texts no field stores: too long, a NUL, a lone surrogate."""
BLANK_TEXTS: Final = ("", "   ", "\t\n")
"""Refused where a value is required; stored exactly where a field is optional."""

_REQUIRED: Final = {
    "Project": ("name", "openai_api_key", "id"),
    "AuditEvent": ("action", "actor", "id"),
}
_OPTIONAL_AUDIT: Final = (
    "project_id",
    "request_id",
    "correlation_id",
    "client_ip",
    "method",
    "path",
    "user_agent",
    "reason",
    "token_id",
)
_FILTER_TEXTS: Final = (
    "action",
    "actor",
    "project_id",
    "client_ip",
    "request_id",
    "correlation_id",
    "method",
    "path",
)
_INT_INPUTS: Final = (-1, 0, 1, MAX_COUNT, MAX_COUNT + 1, 2**63 - 1, 2**63, 2**64, True, False)
_PLUS_FIVE = timezone(timedelta(hours=5))
_MINUS_FIVE = timezone(timedelta(hours=-5))
_EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_TIME_INPUTS: Final[tuple[tuple[str, Any, str], ...]] = (
    ("naive", datetime(2024, 5, 1, 12, 0), "ValueError"),
    ("year 1 UTC", datetime(1, 1, 1, tzinfo=UTC), "ValueError"),
    ("year 1 +05:00", datetime(1, 1, 1, 3, tzinfo=_PLUS_FIVE), "ValueError"),
    ("year 999 UTC", datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC), "ValueError"),
    ("year 1000 UTC", _EARLIEST, "stored"),
    ("year 1000 +05:00 (999 in UTC)", datetime(1000, 1, 1, 4, tzinfo=_PLUS_FIVE), "ValueError"),
    ("year 9999 UTC", _LATEST, "stored"),
    ("year 9999 -05:00", datetime(9999, 12, 31, 22, tzinfo=_MINUS_FIVE), "ValueError"),
    ("year 9999 +05:00", datetime(9999, 12, 31, 23, tzinfo=_PLUS_FIVE), "stored"),
    ("a date, not a datetime", _LATEST.date(), "TypeError"),
    ("a string", "2024-05-01T12:00:00Z", "TypeError"),
)


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


_METADATA_INPUTS: Final[tuple[tuple[str, Callable[[], Any], str], ...]] = (
    ("an object", lambda: {"a": object()}, "ValueError"),
    ("a set", lambda: {"a": {1, 2}}, "ValueError"),
    ("a tuple", lambda: {"a": (1, 2)}, "ValueError"),
    ("an int key", lambda: {1: "a"}, "ValueError"),
    ("NaN", lambda: {"a": math.nan}, "ValueError"),
    ("infinity", lambda: {"a": math.inf}, "ValueError"),
    ("bytes", lambda: {"a": b"x"}, "ValueError"),
    ("a list", lambda: [1, 2], "TypeError"),
    ("a string", lambda: "{}", "TypeError"),
    ("1,000 levels deep", lambda: _deep(1000), "ValueError"),
    ("one level too deep", lambda: _deep(MAX_METADATA_DEPTH + 1), "ValueError"),
    ("as deep as allowed", lambda: _deep(MAX_METADATA_DEPTH), "stored"),
    ("cyclic", _cyclic, "ValueError"),
    ("1 MB", lambda: {"a": MEGABYTE}, "ValueError"),
    ("just too big", lambda: {"a": "x" * (MAX_METADATA_BYTES - 8)}, "ValueError"),
    ("as big as allowed", lambda: {"a": "x" * (MAX_METADATA_BYTES - 9)}, "stored"),
    ("big, non-ASCII", lambda: {"a": "\u00e9" * 30_000}, "stored"),
    ("a NUL", lambda: {"a": "x\x00y"}, "ValueError"),
    ("a NUL in a key", lambda: {"x\x00": 1}, "ValueError"),
    ("a lone surrogate", lambda: {"a": ["\ud800"]}, "ValueError"),
    ("a huge int", lambda: {"a": 10**5000}, "ValueError"),
    (
        "SQL, wildcards, look-alikes",
        lambda: {t: [t, {"k": t}] for t in STORED_TEXTS},
        "stored",
    ),
    ("empty", dict, "stored"),
    ("mixed", lambda: {"n": None, "b": True, "i": -(2**70), "f": 0.1, "l": [], "d": {}}, "stored"),
)


def _text_expectation(field: str, value: str, *, required: bool) -> str:
    """What the models promise for ``value`` in ``field``: ``"stored"`` or the error."""
    if value in REFUSED_TEXTS or len(value) > TEXT_LIMITS[field]:
        return "ValueError"
    if required and not value.strip():
        return "ValueError"
    if field == "token" and not (value.isascii() and value.isprintable() and " " not in value):
        return "ValueError"
    return "stored"


def _outcome(build: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """``("stored", value)`` when ``build(*args, **kwargs)`` returns, else the class of its
    error."""
    try:
        return "stored", build(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, None


class InputTests(ConformanceBase):
    """Bad input: refused before any statement with nothing changed, or stored exactly."""

    # -- helpers ------------------------------------------------------------------------

    def given_events(self, db: DB, *changes: dict[str, Any]) -> list[AuditEvent]:
        return [db.create_audit_event(self.new_event(**change)) for change in changes]

    @staticmethod
    def contents(db: DB) -> tuple[Any, ...]:
        """Everything the database holds, to show that a refused call changed nothing."""
        stats = attrs.evolve(db.stats(), size_bytes=None)  # a file's size may move by itself
        return (db.list_projects(), db.list_tokens(), db.list_audit_events(), stats)

    def _text_inputs(self, field: str, *, required: bool) -> list[tuple[str, str]]:
        values = [*STORED_TEXTS, *REFUSED_TEXTS, *BLANK_TEXTS]
        if field == "token":
            values += ["sk-" + "a" * 188, "sk-" + "a" * 189, " sk-abc", "sk-abc\n", "sk-\x1b[0m"]
        return [(v, _text_expectation(field, v, required=required)) for v in values]

    # -- text fields of records -----------------------------------------------------------

    @pytest.mark.parametrize("field", ["name", "openai_api_key", "id"])
    def test_project_text_fields_refuse_or_round_trip(self, db: DB, field: str) -> None:
        before = self.contents(db)
        stored: list[Project] = []
        for value, expected in self._text_inputs(field, required=True):
            got, project = _outcome(self.new_project, **{field: value})
            what = f"Project({field}={value[:40]!r})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if project is not None:
                created = db.create_project(project)
                assert created == project, what
                assert db.get_project_by_id(project.id) == project, f"{what} read back"
                stored.append(project)
        assert before[0] == [], "a new database holds no project"
        by_id = {p.id: p for p in db.list_projects()}
        assert by_id == {p.id: p for p in stored}, f"list_projects() after every {field}"

    def test_look_alike_names_stay_distinct(self, db: DB) -> None:
        for names in (("\u00e9", "e\u0301"), ("paypal", "p\u0430yp\u0430l"), ("fi", "\ufb01")):
            projects = [self.given_project(db, name=name) for name in names]
            for project in projects:
                assert db.get_project_by_id(project.id).name == project.name

    def test_token_value_refuses_or_round_trips(self, db: DB) -> None:
        project = self.given_project(db)
        for value, expected in self._text_inputs("token", required=True):
            got, token = _outcome(self.new_token, project, token=value)
            what = f"Token(token={value[:40]!r})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if token is not None:
                assert db.create_token(token) == token, what
                assert db.get_token_by_id(value) == token, f"{what} read back"
                db.increment_cache_hit_count(value)
                assert db.get_token_by_id(value).cache_hit_count == 1, what

    def test_token_project_id_refuses_or_round_trips(self, db: DB) -> None:
        for value, expected in self._text_inputs("project_id", required=True):
            got, token = _outcome(self.new_token, value)
            what = f"Token(project_id={value[:40]!r})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if token is not None:
                before = self.contents(db)
                with pytest.raises(ProjectNotFoundError):
                    db.create_token(token)
                assert self.contents(db) == before, f"{what}: a refused create changed data"
                owner = self.given_project(db, id=value)
                assert db.create_token(token) == token, what
                assert db.list_tokens(value) == [token], f"{what}: list_tokens(project_id)"
                assert db.revoke_project_tokens(value) == 1, what
                db.delete_project(owner.id)

    @pytest.mark.parametrize("field", [*_REQUIRED["AuditEvent"], *_OPTIONAL_AUDIT])
    def test_audit_text_fields_refuse_or_round_trip(self, db: DB, field: str) -> None:
        required = field in _REQUIRED["AuditEvent"]
        stored: list[AuditEvent] = []
        for index, (value, expected) in enumerate(self._text_inputs(field, required=required)):
            got, event = _outcome(self.new_event, **{field: value, "timestamp": at(index)})
            what = f"AuditEvent({field}={value[:40]!r})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if event is not None:
                assert db.create_audit_event(event) == event, what
                assert db.get_audit_event_by_id(event.id) == event, f"{what} read back"
                stored.append(event)
        listed = db.list_audit_events()
        assert sorted(listed, key=lambda e: e.id) == sorted(stored, key=lambda e: e.id)
        if field in _FILTER_TEXTS:  # the exact filter finds each stored value, and only it
            for event in stored:
                value = getattr(event, field)
                flt = AuditEventFilter(**{field: value})
                expected_events = flt.select(listed)
                assert db.list_audit_events(flt) == expected_events, f"{field}={value!r}"
                assert db.count_audit_events(flt) == len(expected_events), f"{field}={value!r}"

    # -- filters --------------------------------------------------------------------------

    @pytest.mark.parametrize("field", [*_FILTER_TEXTS, "search"])
    def test_filter_texts_refuse_or_match_literally(self, db: DB, field: str) -> None:
        haystack = [*STORED_TEXTS, "plain", "PLAIN%", "x_y", "a!b", "back\\slash"]
        events = [
            self.given_events(db, {"reason": f"<{text}>", "path": text, "timestamp": at(i)})[0]
            for i, text in enumerate(haystack)
        ]
        before = self.contents(db)
        for value, expected in self._text_inputs(field, required=False):
            got, flt = _outcome(AuditEventFilter, **{field: value})
            what = f"AuditEventFilter({field}={value[:40]!r})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if flt is not None:
                wanted = flt.select(events)  # the models' own reading of the filter
                assert db.list_audit_events(flt) == wanted, what
                assert db.count_audit_events(flt) == len(wanted), what
        assert self.contents(db) == before

    @pytest.mark.parametrize("field", ["limit", "offset"])
    def test_filter_paging_ints(self, db: DB, field: str) -> None:
        events = sorted(
            (self.given_events(db, {"timestamp": at(i)})[0] for i in range(3)),
            key=lambda e: e.timestamp,
            reverse=True,
        )
        minimum = 1 if field == "limit" else 0
        for value in _INT_INPUTS:
            if isinstance(value, bool):
                expected = "TypeError"
            elif minimum <= value <= 2**63 - 1:
                expected = "stored"
            else:
                expected = "ValueError"
            got, flt = _outcome(AuditEventFilter, **{field: value})
            assert got == expected, f"AuditEventFilter({field}={value}): expected {expected}"
            if flt is not None:
                wanted = flt.select(events)
                assert db.list_audit_events(flt) == wanted, f"{field}={value}"
                assert db.count_audit_events(flt) == 3, f"{field}={value}"

    # -- lookups by a presented value --------------------------------------------------------

    def test_presented_tokens_that_cannot_exist_are_not_found(self, db: DB) -> None:
        token = self.given_token(db)
        before = self.contents(db)
        presented = [
            MEGABYTE,
            "sk-" + "a" * 189,
            f" {token.token}",
            f"{token.token}\n",
            f"{token.token} ",
            "",
            "a\x00b",
            "a\ud800b",
            "sk-\u0430bc",
            "%",
            "_",
            token.token[:-1] + "_",
            token.token[:-1] + "%",
            "'; DROP TABLE tokens; --",
        ]
        calls: list[Callable[[str], Any]] = [
            db.get_token_by_id,
            db.increment_token_usage,
            db.revoke_token,
            db.delete_token,
            db.reset_token_usage,
            db.increment_cache_hit_count,
        ]
        for value in presented:
            for call in calls:
                with pytest.raises(TokenNotFoundError) as caught:
                    call(value)
                assert caught.value.key is not None, f"{call.__name__}({value[:20]!r})"
                text = str(caught.value)
                assert "\x00" not in text and "\ud800" not in text, text
        assert self.contents(db) == before, "a refused lookup changed the database"
        assert db.get_token_by_id(token.token) == token

    def test_presented_ids_that_cannot_exist(self, db: DB) -> None:
        project = self.given_project(db)
        self.given_token(db, project)
        self.given_events(db, {"project_id": project.id})
        before = self.contents(db)
        for value in ("a\x00b", "a\ud800b"):
            for call in (
                db.get_project_by_id,
                db.delete_project,
                db.list_tokens,
                db.revoke_project_tokens,
                db.get_audit_event_by_id,
            ):
                with pytest.raises(ValueError):
                    call(value)
        for value in (MEGABYTE, "%", "_", "'; DROP TABLE projects; --", "", " "):
            with pytest.raises(ProjectNotFoundError):
                db.get_project_by_id(value)
            with pytest.raises(ProjectNotFoundError):
                db.delete_project(value)
            assert db.list_tokens(value) == []
            assert db.revoke_project_tokens(value) == 0
            with pytest.raises(NotFoundError):
                db.get_audit_event_by_id(value)
        assert self.contents(db) == before

    # -- counters -------------------------------------------------------------------------

    @pytest.mark.parametrize("field", ["request_count", "max_requests", "cache_hit_count"])
    def test_counter_fields_refuse_or_round_trip(self, db: DB, field: str) -> None:
        project = self.given_project(db)
        minimum = 1 if field == "max_requests" else 0
        for value in _INT_INPUTS:
            if isinstance(value, bool):
                expected = "TypeError"
            elif minimum <= value <= MAX_COUNT:
                expected = "stored"
            else:
                expected = "ValueError"
            got, token = _outcome(self.new_token, project, **{field: value})
            assert got == expected, f"Token({field}={value}): expected {expected}, got {got}"
            if token is not None:
                assert db.create_token(token) == token
                assert db.get_token_by_id(token.token) == token
                if field == "max_requests":
                    updated = db.update_token(attrs.evolve(token, max_requests=value))
                    assert updated.max_requests == value

    def test_increment_delta_bounds(self, db: DB) -> None:
        token = self.given_token(db)
        before = self.contents(db)
        for value, error in (
            (0, ValueError),
            (-1, ValueError),
            (MAX_COUNT + 1, ValueError),
            (2**63, ValueError),
            (2**64, ValueError),
            (True, ValueError),
            (1.0, ValueError),
        ):
            with pytest.raises((error, TypeError)):
                db.increment_cache_hit_count(token.token, value)  # type: ignore[arg-type]
        assert self.contents(db) == before

    def test_cache_hit_count_never_passes_its_bound(self, db: DB) -> None:
        token = self.given_token(db)
        db.increment_cache_hit_count(token.token, MAX_COUNT - 1)
        before = self.contents(db)
        for delta in (2, MAX_COUNT):
            with pytest.raises(DatabaseError) as caught:
                db.increment_cache_hit_count(token.token, delta)
            assert not isinstance(caught.value, TransientError | NotFoundError), caught.value
            assert token.token not in str(caught.value)
        assert self.contents(db) == before, "a refused increment changed the database"
        assert db.get_token_by_id(token.token).cache_hit_count == MAX_COUNT - 1
        db.increment_cache_hit_count(token.token, 1)
        stored = db.get_token_by_id(token.token)
        assert stored.cache_hit_count == MAX_COUNT
        assert type(stored.cache_hit_count) is int
        with pytest.raises(DatabaseError):
            db.increment_cache_hit_count(token.token)
        assert db.get_token_by_id(token.token).cache_hit_count == MAX_COUNT

    def test_request_count_never_passes_its_bound(self, db: DB) -> None:
        token = self.given_token(db, request_count=MAX_COUNT - 1)
        assert db.increment_token_usage(token.token).request_count == MAX_COUNT
        before = self.contents(db)
        with pytest.raises(DatabaseError) as caught:
            db.increment_token_usage(token.token)
        refused = caught.value
        assert not isinstance(refused, TransientError | NotFoundError | TokenUsageError), refused
        assert token.token not in str(refused)
        assert self.contents(db) == before, "a refused increment changed the database"
        limited = self.given_token(db, request_count=MAX_COUNT - 1, max_requests=MAX_COUNT)
        db.increment_token_usage(limited.token)
        with pytest.raises(TokenUsageError):  # the limit speaks first
            db.increment_token_usage(limited.token)

    # -- datetimes ------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("record", "field"),
        [
            ("Project", "created_at"),
            ("Project", "deactivated_at"),
            ("Token", "expires_at"),
            ("Token", "last_used_at"),
            ("AuditEvent", "timestamp"),
            ("AuditEventFilter", "start_time"),
            ("AuditEventFilter", "end_time"),
        ],
    )
    def test_datetimes_refuse_or_round_trip(self, db: DB, record: str, field: str) -> None:
        project = self.given_project(db)
        for label, value, expected in _TIME_INPUTS:
            if record == "Project":
                got, built = _outcome(self.new_project, **{field: value})
            elif record == "Token":
                got, built = _outcome(self.new_token, project, **{field: value})
            elif record == "AuditEvent":
                got, built = _outcome(self.new_event, **{field: value})
            else:
                got, built = _outcome(AuditEventFilter, **{field: value})
            what = f"{record}({field}={label})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if built is None:
                continue
            assert getattr(built, field).utcoffset() == timedelta(0), what
            if isinstance(built, Project):
                assert db.create_project(built) == built, what
                assert db.get_project_by_id(built.id) == built, what
            elif isinstance(built, Token):
                assert db.create_token(built) == built, what
                assert db.get_token_by_id(built.token) == built, what
            elif isinstance(built, AuditEvent):
                assert db.create_audit_event(built) == built, what
                assert db.get_audit_event_by_id(built.id) == built, what
            else:
                events = db.list_audit_events()
                assert db.list_audit_events(built) == built.select(events), what

    def test_extreme_expiry_is_usable_and_expiry_at_the_earliest_is_expired(self, db: DB) -> None:
        project = self.given_project(db)
        latest = self.given_token(db, project, expires_at=_LATEST)
        assert db.increment_token_usage(latest.token).request_count == 1
        earliest = self.given_token(db, project, expires_at=_EARLIEST)
        with pytest.raises(TokenUsageError):
            db.increment_token_usage(earliest.token)
        assert db.revoke_expired_tokens() == 1
        assert db.stats().expired_tokens == 1

    # -- metadata -------------------------------------------------------------------------

    def test_metadata_refuses_or_round_trips(self, db: DB) -> None:
        for index, (label, make, expected) in enumerate(_METADATA_INPUTS):
            got, event = _outcome(self.new_event, metadata=make(), timestamp=at(index))
            what = f"AuditEvent(metadata={label})"
            assert got == expected, f"{what}: expected {expected}, got {got}"
            if event is not None:
                assert db.create_audit_event(event) == event, what
                assert db.get_audit_event_by_id(event.id) == event, f"{what} read back"
        search = AuditEventFilter(search="\u0430yp")
        assert db.count_audit_events(search) == 1, "search in metadata finds a look-alike"
