"""The ``DB`` facade and the records: what no backend can get wrong, tested once here.

These used to run in every backend's conformance suite, where they could only ever check
the facade (the closed state, argument checks, the transaction object's end) or the
models (validation, UTC normalisation). They run on the memory backend; the calls come
from the protocols (``llm_proxy_db.testing._calls``), so a new store method is covered
without editing this file.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest

from llm_proxy_db import (
    DB,
    STORAGE_API_VERSION,
    AuditEvent,
    AuditEventFilter,
    Backend,
    BackendSpec,
    DatabaseError,
    FullConfig,
    Project,
    Token,
    new_from_full_config,
    register_backend,
    unregister_backend,
)
from llm_proxy_db._delegation import protocol_methods
from llm_proxy_db._protocols import Stores
from llm_proxy_db.testing._calls import BACKEND_METHODS, STORE_METHODS, Keys, arguments, call

_KOLKATA = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture
def db() -> Iterator[DB]:
    database = new_from_full_config(FullConfig(driver="memory"))
    try:
        yield database
    finally:
        database.close()


def _keys(db: DB) -> Keys:
    project = db.create_project(Project(name="facade", openai_api_key="sk-upstream-key"))
    token = db.create_token(Token(project_id=project.id))
    event = db.create_audit_event(AuditEvent(action="a", actor="b", outcome="success"))
    return Keys(project.id, token.token, event.id)


# -- close ------------------------------------------------------------------------------


def test_close_is_idempotent(db: DB) -> None:
    db.close()
    db.close()
    with pytest.raises(DatabaseError, match="closed"):
        db.health_check()


@pytest.mark.parametrize("method", [*BACKEND_METHODS, "migrations"])
def test_calls_after_close_raise(db: DB, method: str) -> None:
    keys = _keys(db)
    db.close()
    if method == "close":
        db.close()  # idempotent: the one call that does not raise
        return
    with pytest.raises(DatabaseError, match="closed"):
        if method == "migrations":
            db.migrations  # noqa: B018 - the property raises
        else:
            call(db, method, keys)


def test_context_manager_closes() -> None:
    with new_from_full_config(FullConfig(driver="memory")) as db:
        db.health_check()
        project = db.create_project(Project(name="n", openai_api_key="k"))
        assert db.get_project_by_id(project.id) == project
        assert repr(db) == "<DB memory open>"
    assert repr(db) == "<DB memory closed>"
    with pytest.raises(DatabaseError):
        db.health_check()
    db.close()


# -- the transaction object -------------------------------------------------------------


def test_transaction_offers_every_store_method(db: DB) -> None:
    with db.transaction() as tx:
        for name in STORE_METHODS:
            assert callable(getattr(tx, name, None)), f"transaction lacks {name}()"
        assert tx.list_projects() == []
        assert tx.list_audit_events(AuditEventFilter(limit=1)) == []
        assert tx.count_audit_events() == 0
        assert tx.stats().projects == 0


def test_transaction_object_refuses_work_after_its_block(db: DB) -> None:
    with db.transaction() as tx:
        tx.create_project(Project(name="inside", openai_api_key="k"))
    with pytest.raises(DatabaseError, match="transaction has ended"):
        tx.create_project(Project(name="after", openai_api_key="k"))
    for name in STORE_METHODS:
        with pytest.raises(DatabaseError, match="transaction has ended"):
            call(tx, name, Keys("p", "sk-t", "e"))
    assert [p.name for p in db.list_projects()] == ["inside"]


# -- argument checks --------------------------------------------------------------------


class _Recorder:
    """A backend that records the store calls reaching it (none should)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: object, **kwargs: object) -> None:
            self.calls.append(name)

        return record


@pytest.fixture
def recorder() -> Iterator[tuple[DB, _Recorder]]:
    backend = _Recorder()
    as_backend = cast(Backend, backend)  # it answers every store call, as a Backend does
    register_backend(
        BackendSpec(
            name="facade-recorder", api_version=STORAGE_API_VERSION, factory=lambda _: as_backend
        ),
        replace=True,
    )
    try:
        with new_from_full_config(FullConfig(driver="facade-recorder")) as db:
            yield db, backend
    finally:
        unregister_backend("facade-recorder")


def _required_parameters(method: str) -> list[str]:
    signature = inspect.signature(protocol_methods(Stores)[method])
    return [p.name for p in list(signature.parameters.values())[1:]]


@pytest.mark.parametrize(
    ("method", "position"),
    [(m, i) for m in STORE_METHODS for i in range(len(_required_parameters(m)))],
)
def test_facade_rejects_wrong_argument_types(
    recorder: tuple[DB, _Recorder], method: str, position: int
) -> None:
    db, backend = recorder
    args: list[Any] = list(arguments(method, Keys("p", "sk-t", "e")))
    signature = inspect.signature(protocol_methods(Stores)[method])
    parameter = list(signature.parameters.values())[1 + position]
    while len(args) <= position:  # a parameter with a default, passed explicitly
        args.append(parameter.default)
    args[position] = object()
    # Counts (``delta``) are refused with ValueError, like a 0; everything else TypeError.
    with pytest.raises((TypeError, ValueError), match=parameter.name):
        getattr(db, method)(*args)
    assert backend.calls == [], "an ill-typed call reached the backend"


@pytest.mark.parametrize("delta", [0, -1, True, 1.0])
def test_increment_cache_hit_count_rejects_bad_delta(
    recorder: tuple[DB, _Recorder], delta: Any
) -> None:
    db, backend = recorder
    with pytest.raises(ValueError, match="delta"):
        db.increment_cache_hit_count("sk-any-token", delta)
    assert backend.calls == []


def test_well_typed_calls_reach_the_backend(recorder: tuple[DB, _Recorder]) -> None:
    db, backend = recorder
    for name in STORE_METHODS:
        call(db, name, Keys("p", "sk-t", "e"))
    assert backend.calls == list(STORE_METHODS)


# -- the records ------------------------------------------------------------------------

_INVALID_MODELS: dict[str, Callable[[], object]] = {
    "project empty name": lambda: Project(name="", openai_api_key="k"),
    "project blank name": lambda: Project(name="   ", openai_api_key="k"),
    "project empty api key": lambda: Project(name="n", openai_api_key=""),
    "project empty id": lambda: Project(name="n", openai_api_key="k", id=""),
    "project naive created_at": lambda: Project(
        name="n", openai_api_key="k", created_at=datetime(2024, 1, 1)
    ),
    "project naive deactivated_at": lambda: Project(
        name="n", openai_api_key="k", deactivated_at=datetime(2024, 1, 1)
    ),
    "token empty project_id": lambda: Token(project_id=""),
    "token empty token": lambda: Token(project_id="p", token=""),
    "token negative request_count": lambda: Token(project_id="p", request_count=-1),
    "token max_requests 0": lambda: Token(project_id="p", max_requests=0),
    "token max_requests negative": lambda: Token(project_id="p", max_requests=-5),
    "token negative cache_hit_count": lambda: Token(project_id="p", cache_hit_count=-1),
    "token naive expires_at": lambda: Token(project_id="p", expires_at=datetime(2030, 1, 1)),
    "event empty action": lambda: AuditEvent(action="", actor="a", outcome="success"),
    "event empty actor": lambda: AuditEvent(action="a", actor="", outcome="success"),
    "event bad outcome": lambda: AuditEvent(action="a", actor="b", outcome="maybe"),  # type: ignore[arg-type]
    "event naive timestamp": lambda: AuditEvent(
        action="a", actor="b", outcome="success", timestamp=datetime(2024, 1, 1)
    ),
    "filter bad outcome": lambda: AuditEventFilter(outcome="ok"),  # type: ignore[arg-type]
    "filter naive start": lambda: AuditEventFilter(start_time=datetime(2024, 1, 1)),
    "filter limit 0": lambda: AuditEventFilter(limit=0),
    "filter negative offset": lambda: AuditEventFilter(offset=-1),
}


@pytest.mark.parametrize("case", sorted(_INVALID_MODELS))
def test_models_reject_invalid_values(case: str) -> None:
    with pytest.raises(ValueError):
        _INVALID_MODELS[case]()


def test_new_audit_event_ids_are_time_ordered_uuid7() -> None:
    # Appending to the log must land at the end of the id index (UUIDv7, RFC 9562).
    def event() -> AuditEvent:
        return AuditEvent(action="a", actor="b", outcome="success")

    before_ms = time.time_ns() // 1_000_000
    first = event()
    parsed = uuid.UUID(first.id)
    assert str(parsed) == first.id  # canonical lowercase form
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before_ms <= parsed.int >> 80 <= time.time_ns() // 1_000_000
    time.sleep(0.002)
    later = [event().id for _ in range(1000)]
    assert all(first.id < other for other in later)  # a later millisecond sorts after
    assert len(set(later)) == 1000  # 74 random bits within one millisecond


def test_models_normalise_datetimes_to_utc() -> None:
    local = datetime(2024, 6, 1, 17, 30, 0, 654321, tzinfo=_KOLKATA)
    for value in (
        Project(name="n", openai_api_key="k", created_at=local).created_at,
        Token(project_id="p", expires_at=local).expires_at,
        AuditEvent(action="a", actor="b", outcome="failure", timestamp=local).timestamp,
        AuditEventFilter(end_time=local).end_time,
    ):
        assert value == local
        assert value is not None and value.utcoffset() == timedelta(0)
        assert value.microsecond == 654321
