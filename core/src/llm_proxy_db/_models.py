"""The records: frozen, keyword-only attrs classes validated at construction.

Every datetime is timezone-aware and normalised to UTC (microsecond precision). Update a
record with :func:`attrs.evolve`, which validates again. Rows read back from a database
are rebuilt with the trusted builders at the bottom of this module, which skip validation
(the data was validated on the way in) and cost about half as much.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import attrs

from ._clock import utcnow
from ._errors import (
    AuditEventNotFoundError,
    ProjectInactiveError,
    TokenExpiredError,
    TokenInactiveError,
    TokenLimitReachedError,
)
from ._limits import (
    MAX_PAGE,
    check_count,
    check_metadata,
    check_metadata_size,
    check_text,
    check_time,
    check_token_format,
)
from ._masking import mask_token

__all__ = [
    "AuditEvent",
    "AuditEventFilter",
    "Authorization",
    "Outcome",
    "Project",
    "Stats",
    "Token",
    "generate_token",
    "mask_token",
    "utcnow",
]

Outcome = Literal["success", "failure"]
OUTCOMES: Final = ("success", "failure")
TOKEN_PREFIX: Final = "sk-"


def generate_token() -> str:
    """A new client secret: ``"sk-"`` and 256 random bits from :mod:`secrets`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _new_id() -> str:
    return str(uuid.uuid4())


_RAND_B = (1 << 62) - 1
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62


def _new_event_id() -> str:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Ids of new audit events sort by creation time, so each insert lands at the end of the
    id index instead of on a random page of it: on a table of a million events SQLite
    stores a batch about 3x faster, and InnoDB's clustered primary key stays compact.
    """
    random = int.from_bytes(os.urandom(10))
    value = (
        time.time_ns() // 1_000_000 << 80
        | _VERSION_7
        | (random >> 62 & 0xFFF) << 64
        | _VARIANT
        | random & _RAND_B
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _to_utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} is not allowed: give it a timezone (e.g. UTC)"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # past year 1 or 9999 in UTC: the validator names the field
        return value


def _to_utc_optional(value: object) -> datetime | None:
    return None if value is None else _to_utc(value)


def _time(instance: object, attribute: attrs.Attribute[Any], value: datetime) -> None:
    if value.__class__ is not datetime or value.tzinfo is not UTC or value.year < 1000:
        check_time(attribute.name, value)  # out of range (or a subclass): ValueError


def _optional_time(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _time(instance, attribute, value)  # type: ignore[arg-type]


def _non_empty(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")
    check_text(attribute.name, value)


def _token_value(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, got {type(value).__name__}")
    check_token_format(value)


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string or None, got {type(value).__name__}")
    check_text(attribute.name, value)


def _bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {type(value).__name__}")


def _int_at_least(
    minimum: int, maximum: int | None = None
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An int (never a bool) from ``minimum`` to ``maximum`` (default ``MAX_COUNT``)."""
    bounds = () if maximum is None else (maximum,)

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
        check_count(attribute.name, value, minimum, *bounds)

    return check


def _optional_int_at_least(
    minimum: int, maximum: int | None = None
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    check = _int_at_least(minimum, maximum)

    def optional(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


def _outcome(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in OUTCOMES:
        raise ValueError(f"outcome must be 'success' or 'failure', got {value!r}")


def _json_object(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise TypeError(f"{attribute.name} must be a dict or None, got {type(value).__name__}")
    check_metadata(attribute.name, value)  # depth first: json would meet the recursion limit
    try:
        text = metadata_text(value)
        same = json.loads(text) == value  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        message = f"{attribute.name} must be JSON-serialisable: {exc}"
    else:
        message = ""
    if message:
        raise ValueError(message)
    check_metadata_size(attribute.name, text)  # type: ignore[arg-type]
    if not same:  # e.g. int keys or tuples, which would come back changed
        raise ValueError(
            f"{attribute.name} must survive a JSON round trip unchanged "
            "(string keys; lists, not tuples)"
        )


def _hidden(value: object) -> str:
    return "'***'"


def _masked(value: object) -> str:
    return repr(mask_token(value)) if isinstance(value, str) else "'***'"


@attrs.frozen(kw_only=True)
class Project:
    """A tenant: holds the upstream provider key that the proxy uses on its behalf."""

    name: str = attrs.field(validator=_non_empty)
    openai_api_key: str = attrs.field(validator=_non_empty, repr=_hidden)
    id: str = attrs.field(factory=_new_id, validator=_non_empty)
    is_active: bool = attrs.field(default=True, validator=_bool)
    deactivated_at: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    created_at: datetime = attrs.field(factory=utcnow, converter=_to_utc, validator=_time)
    updated_at: datetime = attrs.field(factory=utcnow, converter=_to_utc, validator=_time)


@attrs.frozen(kw_only=True)
class Token:
    """A client credential for one project, with its quota and usage counters."""

    project_id: str = attrs.field(validator=_non_empty)
    token: str = attrs.field(factory=generate_token, validator=_token_value, repr=_masked)
    expires_at: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    is_active: bool = attrs.field(default=True, validator=_bool)
    deactivated_at: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    request_count: int = attrs.field(default=0, validator=_int_at_least(0))
    max_requests: int | None = attrs.field(default=None, validator=_optional_int_at_least(1))
    created_at: datetime = attrs.field(factory=utcnow, converter=_to_utc, validator=_time)
    last_used_at: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    cache_hit_count: int = attrs.field(default=0, validator=_int_at_least(0))

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether ``expires_at`` is at or before ``now`` (default: the current time)."""
        return self.expires_at is not None and self.expires_at <= (now or utcnow())

    def check_usable(self, *, project_active: bool, now: datetime | None = None) -> None:
        """Raise why ``increment_token_usage`` must refuse this token, if it must.

        The order is the contract's: inactive, expired, project inactive, limit reached.
        """
        masked = mask_token(self.token)
        project_id = self.project_id
        if not self.is_active:
            raise TokenInactiveError(
                f"token {masked} is inactive", masked_token=masked, project_id=project_id
            )
        if self.is_expired(now):
            raise TokenExpiredError(
                f"token {masked} has expired", masked_token=masked, project_id=project_id
            )
        if not project_active:
            raise ProjectInactiveError(
                f"the project of token {masked} is inactive",
                masked_token=masked,
                project_id=project_id,
            )
        if self.max_requests is not None and self.request_count >= self.max_requests:
            raise TokenLimitReachedError(
                f"token {masked} has used all of its {self.max_requests} requests",
                masked_token=masked,
                project_id=project_id,
                max_requests=self.max_requests,
            )


@attrs.frozen(kw_only=True)
class Authorization:
    """What ``authorize`` returns: the counted token and its project (the upstream key
    included)."""

    token: Token
    project: Project


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One entry of the append-only security log.

    ``id`` defaults to a new time-ordered UUID (version 7), so the log's indexes grow at
    their end; any unique string is accepted.
    """

    action: str = attrs.field(validator=_non_empty)
    actor: str = attrs.field(validator=_non_empty)
    outcome: Outcome = attrs.field(validator=_outcome)
    id: str = attrs.field(factory=_new_event_id, validator=_non_empty)
    timestamp: datetime = attrs.field(factory=utcnow, converter=_to_utc, validator=_time)
    project_id: str | None = attrs.field(default=None, validator=_optional_str)
    request_id: str | None = attrs.field(default=None, validator=_optional_str)
    correlation_id: str | None = attrs.field(default=None, validator=_optional_str)
    client_ip: str | None = attrs.field(default=None, validator=_optional_str)
    method: str | None = attrs.field(default=None, validator=_optional_str)
    path: str | None = attrs.field(default=None, validator=_optional_str)
    user_agent: str | None = attrs.field(default=None, validator=_optional_str)
    reason: str | None = attrs.field(default=None, validator=_optional_str)
    token_id: str | None = attrs.field(default=None, validator=_optional_str)
    metadata: dict[str, Any] | None = attrs.field(default=None, validator=_json_object)


@attrs.frozen(kw_only=True)
class AuditEventFilter:
    """Which audit events to list or count.

    Every field left at None matches everything. ``start_time`` is inclusive and
    ``end_time`` exclusive; ``search`` is a case-insensitive substring matched literally
    against action, actor, request_id, correlation_id, client_ip, method, path, reason and
    metadata. ``limit``/``offset`` page the newest-first list (newest timestamp first, ties
    by id descending, by code point).

    ``before_id`` pages by key: only events after that event in the list's order (older, or
    as old with a smaller id) are listed or counted, so the next page starts at the last id
    of this one at the cost of the first page (an unknown id is
    ``AuditEventNotFoundError``). It combines with every other field, ``offset`` included.
    """

    action: str | None = attrs.field(default=None, validator=_optional_str)
    actor: str | None = attrs.field(default=None, validator=_optional_str)
    project_id: str | None = attrs.field(default=None, validator=_optional_str)
    outcome: Outcome | None = attrs.field(
        default=None, validator=attrs.validators.optional(_outcome)
    )
    client_ip: str | None = attrs.field(default=None, validator=_optional_str)
    request_id: str | None = attrs.field(default=None, validator=_optional_str)
    correlation_id: str | None = attrs.field(default=None, validator=_optional_str)
    method: str | None = attrs.field(default=None, validator=_optional_str)
    path: str | None = attrs.field(default=None, validator=_optional_str)
    start_time: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    end_time: datetime | None = attrs.field(
        default=None, converter=_to_utc_optional, validator=_optional_time
    )
    search: str | None = attrs.field(default=None, validator=_optional_str)
    limit: int | None = attrs.field(default=None, validator=_optional_int_at_least(1, MAX_PAGE))
    offset: int = attrs.field(default=0, validator=_int_at_least(0, MAX_PAGE))
    before_id: str | None = attrs.field(default=None, validator=_optional_str)

    def matches(self, event: AuditEvent, before: AuditEvent | None = None) -> bool:
        """Whether ``event`` passes every condition of this filter (``limit``/``offset``
        aside). With ``before_id`` set, ``before`` must be the event it names (a
        ``ValueError`` otherwise): ``event`` then matches only if it comes after ``before``
        in the list's order."""
        if self.before_id is not None:
            if before is None or before.id != self.before_id:
                raise ValueError(
                    f"before_id is {self.before_id!r}: matches() needs that event as before "
                    f"(got {'None' if before is None else repr(before.id)})"
                )
            if (event.timestamp, event.id) >= (before.timestamp, before.id):
                return False
        for name in EXACT_FILTER_FIELDS:
            wanted = getattr(self, name)
            if wanted is not None and getattr(event, name) != wanted:
                return False
        if self.start_time is not None and event.timestamp < self.start_time:
            return False
        if self.end_time is not None and event.timestamp >= self.end_time:
            return False
        if self.search is not None:
            needle = fold_case(self.search)
            texts = [getattr(event, name) for name in SEARCHED_FIELDS[:-1]]
            texts.append(metadata_text(event.metadata))
            return any(text is not None and needle in fold_case(text) for text in texts)
        return True

    def select(self, events: Iterable[AuditEvent]) -> list[AuditEvent]:
        """The matching events, newest first (ties by id descending), paged: what
        ``list_audit_events`` returns from a store holding ``events``. The ``before_id``
        event is looked up among ``events`` (``AuditEventNotFoundError`` if absent)."""
        events, before = self._anchored(events)
        found = sorted(
            (e for e in events if self.matches(e, before)),
            key=lambda e: (e.timestamp, e.id),
            reverse=True,
        )
        end = None if self.limit is None else self.offset + self.limit
        return found[self.offset : end]

    def count(self, events: Iterable[AuditEvent]) -> int:
        """How many of ``events`` match (``limit``/``offset`` aside): what
        ``count_audit_events`` returns from a store holding ``events``."""
        events, before = self._anchored(events)
        return sum(1 for e in events if self.matches(e, before))

    def _anchored(
        self, events: Iterable[AuditEvent]
    ) -> tuple[Iterable[AuditEvent], AuditEvent | None]:
        if self.before_id is None:
            return events, None
        events = list(events)
        for event in events:
            if event.id == self.before_id:
                return events, event
        raise AuditEventNotFoundError.for_id(self.before_id)


EXACT_FILTER_FIELDS: Final = (
    "action",
    "actor",
    "project_id",
    "outcome",
    "client_ip",
    "request_id",
    "correlation_id",
    "method",
    "path",
)
SEARCHED_FIELDS: Final = (
    "action",
    "actor",
    "request_id",
    "correlation_id",
    "client_ip",
    "method",
    "path",
    "reason",
    "metadata",
)
"""The columns ``AuditEventFilter.search`` looks in (metadata as its JSON text)."""


def fold_case(text: str) -> str:
    """``text`` lower-cased as ``AuditEventFilter.search`` compares it: character by
    character (Unicode's simple case mapping, as a database's ``LOWER`` does): a capital
    dotted I becomes ``"i"`` and a capital sigma always ``"\u03c3"``, where ``str.lower``
    gives two characters for the first and, at the end of a word, a final sigma."""
    if text.isascii():
        return text.lower()
    return "".join(["i" if c == "\u0130" else c.lower() for c in text])


def metadata_text(metadata: dict[str, Any] | None) -> str | None:
    """The JSON text stored for an audit event's metadata."""
    if metadata is None:
        return None
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)


@attrs.frozen(kw_only=True)
class Stats:
    """Counts for an operator: what ``DB.stats()`` returns.

    ``active_tokens`` are active and unexpired; ``expired_tokens`` have ``expires_at`` at or
    before now, whatever their active flag; ``size_bytes`` is None where the backend cannot
    tell.
    """

    projects: int
    active_projects: int
    tokens: int
    active_tokens: int
    expired_tokens: int
    total_requests: int
    size_bytes: int | None


_T = TypeVar("_T")


def _trusted_builder(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for ``cls`` that skips converters and validators.

    Only for values that already satisfy the class's invariants (rows this package wrote,
    decoded by a codec that yields aware UTC datetimes). Arguments follow field order.
    """
    names = [a.name for a in attrs.fields(cls)]  # type: ignore[arg-type]
    lines = [f"def build({', '.join(names)}):", "    self = _new(_cls)"]
    lines += [f"    _set(self, {name!r}, {name})" for name in names]
    lines.append("    return self")
    namespace: dict[str, Any] = {"_new": object.__new__, "_set": object.__setattr__, "_cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from attrs field names only
    build: Callable[..., _T] = namespace["build"]
    build.__qualname__ = f"trusted_{cls.__name__}"
    return build


trusted_project = _trusted_builder(Project)
trusted_token = _trusted_builder(Token)
trusted_audit_event = _trusted_builder(AuditEvent)
