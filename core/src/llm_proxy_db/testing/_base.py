"""The fixtures and helpers every group of conformance tests shares."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Protocol, TypeVar

import attrs
import pytest

from .._clock import set_clock
from .._db import DB
from .._models import AuditEvent, Project, Token, utcnow
from .._registry import Capabilities

__all__ = ["BackendFactory", "ConformanceBase", "pinned_clock", "requires"]

KNOWN_CAPABILITIES: Final = tuple(field.name for field in attrs.fields(Capabilities))
"""Every capability a backend may declare: the fields of ``Capabilities``."""

_REQUIRES_ATTR: Final = "__llm_proxy_db_requires__"

#: The smallest step between two stored instants (stores keep microseconds).
TICK: Final = timedelta(microseconds=1)

_F = TypeVar("_F", bound=Callable[..., object])


class BackendFactory(Protocol):
    """What the ``backend_factory`` fixture returns.

    ``factory()`` opens a new, empty, migrated ``DB`` that shares nothing with any other;
    ``factory(reopen=db)`` opens the storage of ``db`` again (used by the ``persistent``
    tests, after ``db`` was closed).
    """

    def __call__(self, *, reopen: DB | None = None) -> DB: ...


def requires(*capabilities: str) -> Callable[[_F], _F]:
    """Run the decorated conformance test only on backends declaring every capability.

    Others skip it with a reason naming the backend and the missing capability.
    """
    unknown = [name for name in capabilities if name not in KNOWN_CAPABILITIES]
    if unknown or not capabilities:
        raise ValueError(f"unknown capability {unknown!r}; known: {', '.join(KNOWN_CAPABILITIES)}")

    def decorate(test: _F) -> _F:
        setattr(test, _REQUIRES_ATTR, tuple(capabilities))
        return test

    return decorate


def required_capabilities(test: object) -> tuple[str, ...]:
    """The capabilities that :func:`requires` attached to ``test`` (none if undecorated)."""
    found: tuple[str, ...] = getattr(test, _REQUIRES_ATTR, ())
    return found


def _raw_backend(db: DB) -> Any:
    """The backend object behind ``db`` (what its factory returned), bypassing the facade.

    For the few tests of what only a backend can get wrong (its own ``close()``,
    ``health_check()`` and ``transaction()``); fetch it before closing ``db``.
    """
    return db._backend


@contextmanager
def pinned_clock(instant: datetime) -> Iterator[datetime]:
    """Stop the library's clock (``llm_proxy_db.utcnow``) at ``instant`` for the block.

    Every "now" the store logic and conforming backends use comes from that clock, so a
    test can put a boundary (an ``expires_at``) exactly at "now". Process-wide: threads
    the block starts see the pinned clock too.
    """
    previous = set_clock(lambda: instant)
    try:
        yield instant
    finally:
        set_clock(previous)


def unique(prefix: str) -> str:
    """A short unique string, for names and ids that must not clash between tests."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def secret_key() -> str:
    """An upstream API key that looks real and never appears anywhere by accident."""
    return "sk-proj-" + secrets.token_hex(24)


def at(seconds: float, *, base: datetime | None = None) -> datetime:
    """A fixed, aware UTC instant ``seconds`` after ``base`` (default 2024-05-01 12:00 UTC)."""
    start = base or datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    return start + timedelta(seconds=seconds)


def assert_utc(value: datetime | None, what: str = "the datetime") -> None:
    """``value`` is an aware datetime in UTC; ``what`` names it in the failure message
    (the call and the field, e.g. ``"update_project() updated_at"``)."""
    assert value is not None, f"{what}: None came back"
    assert value.tzinfo is not None, f"{what}: naive datetime {value!r} came back"
    assert value.utcoffset() == timedelta(0), f"{what}: {value!r} is not in UTC"


class ConformanceBase:
    """Fixtures and helpers; the tests live in the topic mixins."""

    #: Test name (``test_x`` or ``test_x[param]``) -> why it fails on this backend. Those
    #: tests run as strict xfails: an unexpected pass is reported as a failure.
    expected_failures: ClassVar[Mapping[str, str]] = {}

    #: How far a timestamp the backend sets itself (``updated_at``, ``last_used_at``,
    #: ``deactivated_at``) may lie outside the client's clock window around the call,
    #: for backends whose clock is a server's.
    clock_tolerance: ClassVar[timedelta] = timedelta(0)

    #: Modules every process started by the ``multi_process`` tests imports before it
    #: opens the database: name the module that ``register_backend()``-s a backend
    #: registered in code (spawned processes find installed backends by entry point).
    spawn_imports: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """Override this fixture in your subclass of ``StoreConformance``."""
        pytest.fail(
            f"{type(self).__name__} must override the `backend_factory` fixture: a callable "
            "where factory() opens a new, empty, migrated, isolated DB and "
            "factory(reopen=db) opens the same storage as db again "
            "(see llm_proxy_db.testing.BackendFactory)",
            pytrace=False,
        )

    @pytest.fixture
    def db(self, backend_factory: BackendFactory) -> Iterator[DB]:
        """A new empty database for one test, closed afterwards."""
        database = backend_factory()
        try:
            yield database
        finally:
            database.close()

    @pytest.fixture(autouse=True)
    def _conformance_controls(self, request: pytest.FixtureRequest) -> None:
        """Turn ``expected_failures`` into strict xfails and skip on missing capabilities."""
        node = request.node
        names = (node.name, getattr(node, "originalname", node.name))
        for name in names:
            reason = self.expected_failures.get(name)
            if reason is not None:
                node.add_marker(
                    pytest.mark.xfail(strict=True, reason=f"expected failure: {reason}")
                )
                break
        needed = required_capabilities(request.function)
        if needed:
            database: DB = request.getfixturevalue("db")
            missing = [name for name in needed if name not in database.capabilities]
            if missing:
                pytest.skip(
                    f"backend {database.backend_spec.name!r} lacks the capability "
                    f"{', '.join(repr(name) for name in missing)}"
                )

    # -- helpers ------------------------------------------------------------------------

    def assert_within(
        self, before: datetime, value: datetime | None, after: datetime, *, what: str
    ) -> None:
        """``value`` is aware UTC and lies in ``[before, after]`` (with the clock tolerance).

        ``what`` names the call and the field in the failure message, e.g.
        ``"increment_token_usage() last_used_at"``.
        """
        assert_utc(value, what)
        assert value is not None
        slack = self.clock_tolerance
        window = f"[{before.isoformat()}, {after.isoformat()}]"
        if slack:
            window += f" widened by the clock_tolerance {slack}"
        assert before - slack <= value <= after + slack, (
            f"{what}: {value.isoformat()} is not within the call's clock window {window}"
        )

    @staticmethod
    def new_project(**changes: Any) -> Project:
        values: dict[str, Any] = {"name": unique("project"), "openai_api_key": secret_key()}
        values.update(changes)
        return Project(**values)

    @staticmethod
    def new_token(project: Project | str, **changes: Any) -> Token:
        project_id = project if isinstance(project, str) else project.id
        return Token(project_id=project_id, **changes)

    @staticmethod
    def new_event(**changes: Any) -> AuditEvent:
        values: dict[str, Any] = {"action": "token.use", "actor": "tester", "outcome": "success"}
        values.update(changes)
        return AuditEvent(**values)

    def given_project(self, db: DB, **changes: Any) -> Project:
        return db.create_project(self.new_project(**changes))

    def given_token(self, db: DB, project: Project | None = None, **changes: Any) -> Token:
        owner = project if project is not None else self.given_project(db)
        return db.create_token(self.new_token(owner, **changes))

    @staticmethod
    def now() -> datetime:
        return utcnow()
