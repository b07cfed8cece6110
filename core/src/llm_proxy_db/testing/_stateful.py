"""Model-based testing: random operation sequences, checked against a reference model.

A Hypothesis ``RuleBasedStateMachine`` drives the backend under test and
:class:`~llm_proxy_db.testing._reference.ReferenceModel` (plain dicts that share no code with
any backend) through the same random calls and compares every result and every error
class. Timestamps the store sets itself must lie in the call's clock window (widened by the
suite's ``clock_tolerance``); the model then adopts them.

Generated data is chosen so that the contract decides every answer:

- expiries lie in the past or at least an hour ahead, so no token expires during a run;
- project names use lowercase letters and digits only, whose order is the same under a
  byte-wise and a linguistic collation;
- audit text is ASCII (case folding is the same everywhere), and searched needles contain
  none of the characters JSON puts between metadata keys and values;
- inside a transaction, only calls that cannot violate a constraint are made (whether a
  transaction survives a failed statement is not part of the contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Generic, TypeVar

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from .._db import DB, StoreFacade
from .._errors import DatabaseError, NotFoundError
from .._models import AuditEvent, AuditEventFilter, Project, Token, utcnow
from ._base import BackendFactory, ConformanceBase
from ._reference import ReferenceModel

# Typed here once: some hypothesis releases leave this function unannotated.
_run_machine: Callable[..., None] = run_state_machine_as_test

__all__ = ["StatefulTests", "StoreMachine"]

_T = TypeVar("_T")

# -- generated data ---------------------------------------------------------------------

_BASE: Final = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
#: Fixed instants: few, so that ties and filter boundaries are hit often.
TIMES: Final = tuple(
    _BASE + timedelta(seconds=s) for s in (0, 0.000001, 1, 2.5, 3600, -86400 * 400)
)
PROJECT_NAMES: Final = ("alpha", "bravo", "b2", "charlie", "c10", "c9", "delta0")
MISSING_PROJECT: Final = "project-missing"
MISSING_TOKEN: Final = "sk-model-missing-0000000000000000"
MISSING_EVENT: Final = "ev-missing"

ACTIONS: Final = ("token.use", "token.revoke", "Project.Create")
ACTORS: Final = ("admin", "system", "Tester_1")
EVENT_PROJECTS: Final = (None, "proj-0", "proj-1", MISSING_PROJECT)
CLIENT_IPS: Final = (None, "10.0.0.1", "10.0.0.12")
REQUEST_IDS: Final = (None, "req-1", "req_%2")
CORRELATION_IDS: Final = (None, "corr-a", "CORR-B")
METHODS: Final = (None, "GET", "post")
PATHS: Final = (None, "/v1/chat", "/v1/100%_done", "C:\\logs\\a_b")
USER_AGENTS: Final = (None, "curl/8", "SearchMe-UA")  # not searched
REASONS: Final = (None, "limit reached", "Expired_Token")
TOKEN_IDS: Final = (None, "tok-searchme")  # not searched
METADATA: Final[tuple[dict[str, Any] | None, ...]] = (
    None,
    {},
    {"model": "gpt-4", "n": 3},
    {"note": "50%_off"},
    {"Key_A": "Value"},
)
SEARCHES: Final = (
    "",
    "token",
    "TOKEN",
    "%",
    "_",
    "\\",
    "10.0.0.1",
    "req_",
    "searchme",
    "4",
    "value",
    "key_a",
    "0%_",
    "/v1",
    "zzz",
    "e",
    "LIMIT",
)
FILTER_CHOICES: Final[dict[str, Sequence[object]]] = {
    "action": (*ACTIONS, "token"),
    "actor": (*ACTORS, "ADMIN"),
    "project_id": EVENT_PROJECTS[1:],
    "outcome": ("success", "failure"),
    "client_ip": CLIENT_IPS[1:],
    "request_id": REQUEST_IDS[1:],
    "correlation_id": CORRELATION_IDS[1:],
    "method": METHODS[1:],
    "path": PATHS[1:],
    "start_time": TIMES,
    "end_time": TIMES,
    "search": SEARCHES,
    "before_id": ("ev-00", "ev-07", "ev-15", "ev-22", "ev-30", "ev-99"),  # ev-99: never made
}


@st.composite
def audit_events(draw: st.DrawFn) -> AuditEvent:
    """Audit events whose ids come from a small space, so duplicates happen."""
    return AuditEvent(
        id=f"ev-{draw(st.integers(0, 30)):02d}",
        action=draw(st.sampled_from(ACTIONS)),
        actor=draw(st.sampled_from(ACTORS)),
        outcome=draw(st.sampled_from(("success", "failure"))),
        timestamp=draw(st.sampled_from(TIMES)),
        project_id=draw(st.sampled_from(EVENT_PROJECTS)),
        request_id=draw(st.sampled_from(REQUEST_IDS)),
        correlation_id=draw(st.sampled_from(CORRELATION_IDS)),
        client_ip=draw(st.sampled_from(CLIENT_IPS)),
        method=draw(st.sampled_from(METHODS)),
        path=draw(st.sampled_from(PATHS)),
        user_agent=draw(st.sampled_from(USER_AGENTS)),
        reason=draw(st.sampled_from(REASONS)),
        token_id=draw(st.sampled_from(TOKEN_IDS)),
        metadata=draw(st.sampled_from(METADATA)),
    )


@st.composite
def audit_filters(draw: st.DrawFn) -> AuditEventFilter | None:
    """None, or a filter on up to three fields, sometimes paged."""
    if draw(st.integers(0, 9)) == 0:
        return None
    fields = draw(st.lists(st.sampled_from(sorted(FILTER_CHOICES)), max_size=3, unique=True))
    values: dict[str, Any] = {name: draw(st.sampled_from(FILTER_CHOICES[name])) for name in fields}
    values["limit"] = draw(st.sampled_from((None, None, 1, 2, 5)))
    values["offset"] = draw(st.sampled_from((0, 0, 1, 3)))
    return AuditEventFilter(**values)


optional_times = st.none() | st.sampled_from(TIMES)
expiry_kinds = st.sampled_from(("past", "none", "future"))
expiry_offsets = st.integers(0, 30 * 86400 * 1_000_000).map(lambda us: timedelta(microseconds=us))
max_requests = st.none() | st.integers(1, 3)
mostly_true = st.sampled_from((True, True, True, False))


@attrs.frozen
class TokenFields:
    """A token's generated fields; the expiry is made relative to the time of the call."""

    expiry_kind: str
    expiry_offset: timedelta
    is_active: bool
    deactivated_at: datetime | None
    request_count: int
    max_requests: int | None
    created_at: datetime
    last_used_at: datetime | None
    cache_hit_count: int


def token_fields() -> st.SearchStrategy[TokenFields]:
    return st.builds(
        TokenFields,
        expiry_kind=expiry_kinds,
        expiry_offset=expiry_offsets,
        is_active=mostly_true,
        deactivated_at=optional_times,
        request_count=st.integers(0, 3),
        max_requests=max_requests,
        created_at=st.sampled_from(TIMES),
        last_used_at=optional_times,
        cache_hit_count=st.integers(0, 2),
    )


# -- running calls and comparing --------------------------------------------------------


@attrs.frozen
class Outcome(Generic[_T]):
    """What one backend call did, and the clock window around it."""

    value: _T | None
    error: Exception | None
    before: datetime
    after: datetime


def attempt(call: Callable[[], _T]) -> Outcome[_T]:
    """Run ``call``, catching the errors the contract defines (and ``ValueError``)."""
    before = utcnow()
    try:
        value = call()
    except (DatabaseError, ValueError) as exc:
        return Outcome(None, exc, before, utcnow())
    return Outcome(value, None, before, utcnow())


class _Rollback(Exception):
    """Raised inside a transaction to make it roll back."""


@attrs.frozen
class MachineSetup:
    """What the machine needs from the running conformance test."""

    factory: BackendFactory
    clock_tolerance: timedelta


class StoreMachine(RuleBasedStateMachine):
    """Random store calls against a backend and the reference model, side by side.

    Subclassed per test run with ``setup`` set (see
    :meth:`StatefulTests.test_random_operations_match_reference_model`).
    """

    setup: ClassVar[MachineSetup | None] = None

    def __init__(self) -> None:
        super().__init__()
        if self.setup is None:
            raise RuntimeError("StoreMachine.setup is not set: run it via StatefulTests")
        self.tolerance = self.setup.clock_tolerance
        self.db: DB = self.setup.factory()
        self.model = ReferenceModel()
        # Everything ever created (deleted ones included), to get/update known ids.
        self.project_ids: list[str] = []
        self.token_values: list[str] = []
        self.event_ids: list[str] = []
        self.serial = 0

    def teardown(self) -> None:
        self.db.close()

    # -- helpers --------------------------------------------------------------------------

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:04d}"

    def fresh_token_value(self) -> str:
        return self.fresh("sk-model-") + "-" + "x" * 24

    def expiry(self, kind: str, offset: timedelta) -> datetime | None:
        """None, or an instant far enough from now that no run crosses it."""
        if kind == "none":
            return None
        if kind == "past":
            return utcnow() - self.tolerance - timedelta(seconds=1) - offset
        return utcnow() + self.tolerance + timedelta(hours=1, minutes=1) + offset

    def check_stamp(self, what: str, outcome: Outcome[Any], value: datetime | None) -> None:
        """A timestamp the store set itself lies in the call's window, in UTC."""
        assert value is not None, f"{what}: the store did not set the timestamp"
        assert value.utcoffset() == timedelta(0), f"{what}: {value!r} is not UTC"
        low, high = outcome.before - self.tolerance, outcome.after + self.tolerance
        assert low <= value <= high, (
            f"{what}: {value.isoformat()} is outside the call's window "
            f"[{outcome.before.isoformat()}, {outcome.after.isoformat()}]"
        )

    def agree(self, what: str, outcome: Outcome[_T], model_call: Callable[[], _T]) -> _T | None:
        """The backend's ``outcome`` matches what the model answers (value or error class)."""
        try:
            expected = model_call()
        except (DatabaseError, ValueError) as exc:
            wanted = type(exc)
            if outcome.error is None:
                raise AssertionError(
                    f"{what}: expected {wanted.__name__}, the backend returned {outcome.value!r}"
                ) from None
            if not isinstance(outcome.error, wanted):
                raise AssertionError(
                    f"{what}: expected {wanted.__name__}, the backend raised "
                    f"{type(outcome.error).__name__}: {outcome.error}"
                ) from outcome.error
            return None
        if outcome.error is not None:
            raise AssertionError(
                f"{what}: expected {expected!r}, the backend raised "
                f"{type(outcome.error).__name__}: {outcome.error}"
            ) from outcome.error
        assert outcome.value == expected, (
            f"{what}: the backend returned\n  {outcome.value!r}\nthe model expected\n  {expected!r}"
        )
        return expected

    @staticmethod
    def same_tokens(what: str, got: list[Token], expected: list[Token]) -> None:
        """The same tokens, newest ``created_at`` first (ties in any order)."""
        assert sorted(got, key=lambda t: t.token) == sorted(expected, key=lambda t: t.token), (
            f"{what}: the backend lists\n  {got!r}\nthe model has\n  {expected!r}"
        )
        assert [t.created_at for t in got] == [t.created_at for t in expected], (
            f"{what}: not ordered newest created_at first: {[t.created_at for t in got]}"
        )

    def pick(self, data: st.DataObject, live: list[str], known: list[str], missing: str) -> str:
        """Mostly a live id; else one deleted since, or one that never existed."""
        anything = st.sampled_from([*known, missing])
        if not live:
            return data.draw(anything)
        return data.draw(st.sampled_from(live) | st.sampled_from(live) | anything)

    def project_id(self, data: st.DataObject) -> str:
        return self.pick(data, sorted(self.model.projects), self.project_ids, MISSING_PROJECT)

    def token_value(self, data: st.DataObject) -> str:
        return self.pick(data, sorted(self.model.tokens), self.token_values, MISSING_TOKEN)

    def event_id(self, data: st.DataObject) -> str:
        return self.pick(data, sorted(self.model.events), self.event_ids, MISSING_EVENT)

    def live_token(self, data: st.DataObject, model: ReferenceModel) -> str:
        return data.draw(st.sampled_from([*sorted(model.tokens), MISSING_TOKEN]))

    def make_token(self, project_id: str, value: str, fields: TokenFields) -> Token:
        return Token(
            project_id=project_id,
            token=value,
            expires_at=self.expiry(fields.expiry_kind, fields.expiry_offset),
            is_active=fields.is_active,
            deactivated_at=fields.deactivated_at,
            request_count=fields.request_count,
            max_requests=fields.max_requests,
            created_at=fields.created_at,
            last_used_at=fields.last_used_at,
            cache_hit_count=fields.cache_hit_count,
        )

    # -- operations, on a store (the DB or a transaction) and a model ---------------------

    def do_create_project(
        self, store: StoreFacade, model: ReferenceModel, project: Project
    ) -> None:
        outcome = attempt(lambda: store.create_project(project))
        if self.agree("create_project", outcome, lambda: model.create_project(project)):
            self.project_ids.append(project.id)

    def do_update_project(
        self, store: StoreFacade, model: ReferenceModel, project: Project
    ) -> None:
        outcome = attempt(lambda: store.update_project(project))
        stamp = outcome.before
        if outcome.value is not None:
            stamp = outcome.value.updated_at
            self.check_stamp("update_project updated_at", outcome, stamp)
        self.agree("update_project", outcome, lambda: model.update_project(project, stamp))

    def do_create_token(self, store: StoreFacade, model: ReferenceModel, token: Token) -> None:
        outcome = attempt(lambda: store.create_token(token))
        if self.agree("create_token", outcome, lambda: model.create_token(token)):
            self.token_values.append(token.token)

    def do_increment(self, store: StoreFacade, model: ReferenceModel, value: str) -> None:
        outcome = attempt(lambda: store.increment_token_usage(value))
        stamp = outcome.before
        if outcome.value is not None:
            stamp_or_none = outcome.value.last_used_at
            self.check_stamp("increment_token_usage last_used_at", outcome, stamp_or_none)
            assert stamp_or_none is not None
            stamp = stamp_or_none
        self.agree(
            "increment_token_usage", outcome, lambda: model.increment_token_usage(value, stamp)
        )

    def do_authorize(self, store: StoreFacade, model: ReferenceModel, value: str) -> None:
        outcome = attempt(lambda: store.authorize(value))
        stamp = outcome.before
        if outcome.value is not None:
            stamp_or_none = outcome.value.token.last_used_at
            self.check_stamp("authorize last_used_at", outcome, stamp_or_none)
            assert stamp_or_none is not None
            stamp = stamp_or_none
        self.agree("authorize", outcome, lambda: model.authorize(value, stamp))

    def do_create_events(
        self, store: StoreFacade, model: ReferenceModel, events: list[AuditEvent]
    ) -> None:
        outcome = attempt(lambda: store.create_audit_events(events))
        if self.agree("create_audit_events", outcome, lambda: model.create_audit_events(events)):
            self.event_ids.extend(e.id for e in events if e.id not in self.event_ids)

    def adopt_revocations(
        self, what: str, store: StoreFacade, model: ReferenceModel, outcome: Outcome[Any]
    ) -> None:
        """Check and adopt the ``deactivated_at`` a revoke set on formerly unstamped tokens."""
        for value in model.stamped:
            stored = store.get_token_by_id(value)
            self.check_stamp(f"{what} deactivated_at", outcome, stored.deactivated_at)
            model.adopt(value, stored.deactivated_at)
            assert stored == model.tokens[value], (
                f"{what}: the backend stored\n  {stored!r}\nthe model expected\n  "
                f"{model.tokens[value]!r}"
            )
        model.stamped = []

    def do_revoke(self, store: StoreFacade, model: ReferenceModel, value: str) -> None:
        outcome = attempt(lambda: store.revoke_token(value))
        self.agree("revoke_token", outcome, lambda: model.revoke_token(value, outcome.before))
        self.adopt_revocations("revoke_token", store, model, outcome)

    def do_reset(self, store: StoreFacade, model: ReferenceModel, value: str) -> None:
        outcome = attempt(lambda: store.reset_token_usage(value))
        self.agree("reset_token_usage", outcome, lambda: model.reset_token_usage(value))

    def do_delete_token(self, store: StoreFacade, model: ReferenceModel, value: str) -> None:
        outcome = attempt(lambda: store.delete_token(value))
        self.agree("delete_token", outcome, lambda: model.delete_token(value))

    def do_create_event(self, store: StoreFacade, model: ReferenceModel, event: AuditEvent) -> None:
        outcome = attempt(lambda: store.create_audit_event(event))
        if self.agree("create_audit_event", outcome, lambda: model.create_audit_event(event)):
            self.event_ids.append(event.id)

    @initialize(
        names=st.lists(st.sampled_from(PROJECT_NAMES), min_size=1, max_size=2, unique=True),
        tokens=st.lists(st.tuples(st.integers(0, 1), token_fields()), max_size=3),
    )
    def some_projects_and_tokens(
        self, names: list[str], tokens: list[tuple[int, TokenFields]]
    ) -> None:
        """Start most runs with data, so that early steps are not all "not found"."""
        created = []
        for name in names:
            project = Project(id=self.fresh("proj-"), name=name, openai_api_key="sk-upstream")
            self.do_create_project(self.db, self.model, project)
            created.append(project.id)
        for which, fields in tokens:
            project_id = created[which % len(created)]
            token = self.make_token(project_id, self.fresh_token_value(), fields)
            self.do_create_token(self.db, self.model, token)

    # -- rules: projects ------------------------------------------------------------------

    @rule(
        data=st.data(),
        reuse_id=st.booleans(),
        name=st.sampled_from(PROJECT_NAMES),
        is_active=mostly_true,
        deactivated_at=optional_times,
        created_at=st.sampled_from(TIMES),
        updated_at=st.sampled_from(TIMES),
    )
    def create_project(
        self,
        data: st.DataObject,
        reuse_id: bool,
        name: str,
        is_active: bool,
        deactivated_at: datetime | None,
        created_at: datetime,
        updated_at: datetime,
    ) -> None:
        project_id = self.fresh("proj-")
        if reuse_id and self.project_ids:
            project_id = data.draw(st.sampled_from(self.project_ids))
        project = Project(
            id=project_id,
            name=name,
            openai_api_key=f"sk-upstream-{name}",
            is_active=is_active,
            deactivated_at=deactivated_at,
            created_at=created_at,
            updated_at=updated_at,
        )
        self.do_create_project(self.db, self.model, project)

    @rule(
        data=st.data(),
        name=st.sampled_from(PROJECT_NAMES) | st.none(),
        is_active=mostly_true,
        deactivated_at=optional_times,
        noise=st.sampled_from(TIMES),
    )
    def update_project(
        self,
        data: st.DataObject,
        name: str | None,
        is_active: bool,
        deactivated_at: datetime | None,
        noise: datetime,
    ) -> None:
        """Change the administrative fields; ``created_at``/``updated_at`` sent are ignored."""
        project_id = self.project_id(data)
        current = self.model.projects.get(project_id)
        project = Project(
            id=project_id,
            name=name or (current.name if current else "nobody"),
            openai_api_key=data.draw(st.sampled_from(("sk-new-key", "sk-other-key"))),
            is_active=is_active,
            deactivated_at=deactivated_at,
            created_at=noise,
            updated_at=noise,
        )
        self.do_update_project(self.db, self.model, project)

    @rule(data=st.data())
    def delete_project(self, data: st.DataObject) -> None:
        project_id = self.project_id(data)
        outcome = attempt(lambda: self.db.delete_project(project_id))
        self.agree("delete_project", outcome, lambda: self.model.delete_project(project_id))

    @rule(data=st.data())
    def get_project(self, data: st.DataObject) -> None:
        project_id = self.project_id(data)
        outcome = attempt(lambda: self.db.get_project_by_id(project_id))
        self.agree("get_project_by_id", outcome, lambda: self.model.get_project(project_id))

    # -- rules: tokens --------------------------------------------------------------------

    @rule(data=st.data(), duplicate=st.booleans(), fields=token_fields())
    def create_token(self, data: st.DataObject, duplicate: bool, fields: TokenFields) -> None:
        project_id = self.project_id(data)
        value = self.fresh_token_value()
        # A duplicate value only for a live project: which error wins when both are wrong
        # is not part of the contract.
        if duplicate and project_id in self.model.projects and self.model.tokens:
            value = data.draw(st.sampled_from(sorted(self.model.tokens)))
        self.do_create_token(self.db, self.model, self.make_token(project_id, value, fields))

    @rule(
        data=st.data(),
        expiry_kind=expiry_kinds,
        expiry_offset=expiry_offsets,
        is_active=mostly_true,
        deactivated_at=optional_times,
        limit=max_requests,
        noise_count=st.integers(0, 9),
        noise_time=st.sampled_from(TIMES),
    )
    def update_token(
        self,
        data: st.DataObject,
        expiry_kind: str,
        expiry_offset: timedelta,
        is_active: bool,
        deactivated_at: datetime | None,
        limit: int | None,
        noise_count: int,
        noise_time: datetime,
    ) -> None:
        """Change the administrative fields; the counters and times sent must be ignored."""
        value = self.token_value(data)
        project_ids = sorted(self.model.projects) or [MISSING_PROJECT]
        token = Token(
            project_id=data.draw(st.sampled_from(project_ids)),
            token=value,
            expires_at=self.expiry(expiry_kind, expiry_offset),
            is_active=is_active,
            deactivated_at=deactivated_at,
            request_count=noise_count,
            max_requests=limit,
            created_at=noise_time,
            last_used_at=noise_time,
            cache_hit_count=noise_count,
        )
        outcome = attempt(lambda: self.db.update_token(token))
        self.agree("update_token", outcome, lambda: self.model.update_token(token))

    @rule(data=st.data())
    def delete_token(self, data: st.DataObject) -> None:
        self.do_delete_token(self.db, self.model, self.token_value(data))

    @rule(data=st.data())
    def get_token(self, data: st.DataObject) -> None:
        value = self.token_value(data)
        outcome = attempt(lambda: self.db.get_token_by_id(value))
        self.agree("get_token_by_id", outcome, lambda: self.model.get_token(value))

    @rule(data=st.data(), every=st.booleans())
    def list_tokens(self, data: st.DataObject, every: bool) -> None:
        project_id = None if every else self.project_id(data)
        got = self.db.list_tokens(project_id)
        self.same_tokens(f"list_tokens({project_id!r})", got, self.model.list_tokens(project_id))

    @rule(data=st.data())
    def increment_token_usage(self, data: st.DataObject) -> None:
        self.do_increment(self.db, self.model, self.token_value(data))

    @rule()
    def increment_every_token(self) -> None:
        """One request on each token: checks every refusal reason the state has."""
        for value in sorted(self.model.tokens):
            self.do_increment(self.db, self.model, value)

    @rule(data=st.data())
    def authorize(self, data: st.DataObject) -> None:
        self.do_authorize(self.db, self.model, self.token_value(data))

    @rule(data=st.data())
    def revoke_token(self, data: st.DataObject) -> None:
        self.do_revoke(self.db, self.model, self.token_value(data))

    @rule(data=st.data())
    def revoke_project_tokens(self, data: st.DataObject) -> None:
        project_id = self.project_id(data)
        outcome = attempt(lambda: self.db.revoke_project_tokens(project_id))
        self.agree(
            "revoke_project_tokens",
            outcome,
            lambda: self.model.revoke_project_tokens(project_id, outcome.before),
        )
        self.adopt_revocations("revoke_project_tokens", self.db, self.model, outcome)

    @rule()
    def revoke_expired_tokens(self) -> None:
        outcome = attempt(self.db.revoke_expired_tokens)
        self.agree(
            "revoke_expired_tokens",
            outcome,
            lambda: self.model.revoke_expired_tokens(outcome.before),
        )
        self.adopt_revocations("revoke_expired_tokens", self.db, self.model, outcome)

    @rule(data=st.data(), delta=st.integers(0, 3))
    def increment_cache_hit_count(self, data: st.DataObject, delta: int) -> None:
        value = self.token_value(data)
        outcome = attempt(lambda: self.db.increment_cache_hit_count(value, delta))
        self.agree(
            "increment_cache_hit_count",
            outcome,
            lambda: self.model.increment_cache_hit_count(value, delta),
        )

    @rule(data=st.data())
    def reset_token_usage(self, data: st.DataObject) -> None:
        self.do_reset(self.db, self.model, self.token_value(data))

    # -- rules: audit ---------------------------------------------------------------------

    @rule(event=audit_events())
    def create_audit_event(self, event: AuditEvent) -> None:
        self.do_create_event(self.db, self.model, event)

    @rule(data=st.data(), events=st.lists(audit_events(), max_size=4))
    def create_audit_events(self, data: st.DataObject, events: list[AuditEvent]) -> None:
        """A batch mixing new events, copies of stored ones (a replay) and repeats."""
        batch = list(events)
        replay: bool = data.draw(st.booleans(), label="replay some")
        if replay and self.model.events:
            stored = st.sampled_from(sorted(self.model.events))
            batch += [self.model.events[i] for i in data.draw(st.lists(stored, max_size=3))]
        repeat: bool = data.draw(st.booleans(), label="repeat one")
        if repeat and batch:
            batch.append(attrs.evolve(batch[0], action="repeat.copy"))
        self.do_create_events(self.db, self.model, batch)

    @rule(data=st.data())
    def get_audit_event(self, data: st.DataObject) -> None:
        event_id = self.event_id(data)
        outcome = attempt(lambda: self.db.get_audit_event_by_id(event_id))
        self.agree("get_audit_event_by_id", outcome, lambda: self.model.get_audit_event(event_id))

    @rule(flt=audit_filters())
    def list_audit_events(self, flt: AuditEventFilter | None) -> None:
        outcome = attempt(lambda: self.db.list_audit_events(flt))
        self.agree(
            f"list_audit_events({flt!r})", outcome, lambda: self.model.list_audit_events(flt)
        )

    @rule(flt=audit_filters())
    def count_audit_events(self, flt: AuditEventFilter | None) -> None:
        outcome = attempt(lambda: self.db.count_audit_events(flt))
        self.agree(
            f"count_audit_events({flt!r})", outcome, lambda: self.model.count_audit_events(flt)
        )

    # -- rules: transactions --------------------------------------------------------------

    def transaction_step(self, data: st.DataObject, tx: StoreFacade, model: ReferenceModel) -> None:
        """One call that cannot violate a constraint, made inside a transaction."""
        kind = data.draw(
            st.sampled_from(
                (
                    "create_project",
                    "update_project",
                    "create_token",
                    "increment",
                    "revoke",
                    "reset",
                    "delete_token",
                    "audit",
                    "authorize",
                    "audit_batch",
                    "read",
                )
            ),
            label="transaction step",
        )
        if kind == "create_project":
            free = [n for n in PROJECT_NAMES if all(p.name != n for p in model.projects.values())]
            name = data.draw(st.sampled_from(free)) if free else self.fresh("tx")
            self.do_create_project(
                tx, model, Project(id=self.fresh("proj-"), name=name, openai_api_key="sk-tx")
            )
        elif kind == "update_project" and model.projects:
            current = model.projects[data.draw(st.sampled_from(sorted(model.projects)))]
            changed = attrs.evolve(current, is_active=not current.is_active, openai_api_key="k2")
            self.do_update_project(tx, model, changed)
        elif kind == "create_token" and model.projects:
            token = Token(
                project_id=data.draw(st.sampled_from(sorted(model.projects))),
                token=self.fresh_token_value(),
                max_requests=data.draw(max_requests),
                created_at=data.draw(st.sampled_from(TIMES)),
            )
            self.do_create_token(tx, model, token)
        elif kind == "increment":
            self.do_increment(tx, model, self.live_token(data, model))
        elif kind == "revoke":
            self.do_revoke(tx, model, self.live_token(data, model))
        elif kind == "reset":
            self.do_reset(tx, model, self.live_token(data, model))
        elif kind == "delete_token":
            self.do_delete_token(tx, model, self.live_token(data, model))
        elif kind == "audit":
            event = data.draw(audit_events())
            self.do_create_event(tx, model, attrs.evolve(event, id=self.fresh("ev-tx-")))
        elif kind == "authorize":
            self.do_authorize(tx, model, self.live_token(data, model))
        elif kind == "audit_batch":
            events = data.draw(st.lists(audit_events(), max_size=3))
            fresh = [attrs.evolve(event, id=self.fresh("ev-tx-")) for event in events]
            self.do_create_events(tx, model, fresh + fresh[:1])
        else:  # read what the transaction wrote so far
            assert tx.list_projects() == model.list_projects(), "a transaction misreads itself"
            self.same_tokens("list_tokens in a transaction", tx.list_tokens(), model.list_tokens())

    @rule(data=st.data(), steps=st.integers(1, 4))
    def transaction_rolls_back(self, data: st.DataObject, steps: int) -> None:
        scratch = self.model.copy()
        known = (set(self.project_ids), set(self.token_values), set(self.event_ids))
        rolled_back = False
        try:
            with self.db.transaction() as tx:
                for _ in range(steps):
                    self.transaction_step(data, tx, scratch)
                raise _Rollback
        except _Rollback:
            rolled_back = True
        assert rolled_back, "transaction() swallowed the exception raised in its block"
        # What the block created is gone (the invariant compares everything else).
        for project_id in set(self.project_ids) - known[0]:
            assert_not_found(self.db.get_project_by_id, project_id)
        for value in set(self.token_values) - known[1]:
            assert_not_found(self.db.get_token_by_id, value)
        for event_id in set(self.event_ids) - known[2]:
            assert_not_found(self.db.get_audit_event_by_id, event_id)

    @rule(data=st.data(), steps=st.integers(1, 3))
    def transaction_commits(self, data: st.DataObject, steps: int) -> None:
        with self.db.transaction() as tx:
            for _ in range(steps):
                self.transaction_step(data, tx, self.model)

    # -- after every step -----------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        assert self.db.list_projects() == self.model.list_projects(), (
            f"list_projects: the backend has\n  {self.db.list_projects()!r}\n"
            f"the model has\n  {self.model.list_projects()!r}"
        )
        self.same_tokens("list_tokens()", self.db.list_tokens(), self.model.list_tokens())
        events = self.db.list_audit_events()
        assert events == self.model.list_audit_events(None), (
            f"list_audit_events(): the backend has\n  {events!r}\n"
            f"the model has\n  {self.model.list_audit_events(None)!r}"
        )


def assert_not_found(get: Callable[[str], object], key: str) -> None:
    try:
        found = get(key)
    except NotFoundError:
        return
    raise AssertionError(f"a record written in a rolled-back transaction survived: {found!r}")


class StatefulTests(ConformanceBase):
    """The model-based test: one Hypothesis state machine run, a fresh store per example."""

    #: Hypothesis settings of the stateful test. Raise ``max_examples`` for a longer
    #: search, e.g. ``stateful_settings = settings(StatefulTests.stateful_settings,
    #: max_examples=500)``.
    stateful_settings: ClassVar[settings] = settings(
        max_examples=75,
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

    def test_random_operations_match_reference_model(self, backend_factory: BackendFactory) -> None:
        """Random call sequences give the same results and errors as the reference model."""
        setup = MachineSetup(factory=backend_factory, clock_tolerance=self.clock_tolerance)

        class StoreMachineRun(StoreMachine):
            pass

        StoreMachineRun.setup = setup
        _run_machine(StoreMachineRun, settings=self.stateful_settings)
