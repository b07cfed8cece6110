"""The error tree: every class is built from its message alone, and survives ``pickle`` (a
worker process, a multiprocessing pool or a task queue sends it back) with its class, its
message and every attribute."""

from __future__ import annotations

import inspect
import pickle
import typing
from typing import Any, Literal

import pytest

import llm_proxy_db
import llm_proxy_db.cli  # its own subclasses (NoMigrationsError) belong to the tree too
import llm_proxy_db.sql
from llm_proxy_db import DatabaseError


def _subclasses(root: type[DatabaseError]) -> list[type[DatabaseError]]:
    found: list[type[DatabaseError]] = []
    pending = [root]
    while pending:
        kind = pending.pop()
        if kind not in found:
            found.append(kind)
            pending.extend(kind.__subclasses__())
    return found


def _tree() -> list[type[DatabaseError]]:
    """``DatabaseError`` and every subclass the package defines (not those of tests)."""
    return sorted(
        (k for k in _subclasses(DatabaseError) if k.__module__.split(".")[0] == "llm_proxy_db"),
        key=lambda kind: f"{kind.__module__}.{kind.__qualname__}",
    )


TREE = _tree()
EXPORTED = {
    value
    for name in llm_proxy_db.__all__
    if isinstance(value := getattr(llm_proxy_db, name), type) and issubclass(value, DatabaseError)
}


def _keywords(kind: type[DatabaseError]) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of the constructor: the attributes the error carries."""
    parameters = inspect.signature(kind).parameters.values()
    return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _sample(hint: Any, default: object) -> object:
    """A value of type ``hint`` that is neither None nor ``default``."""
    if typing.get_origin(hint) is Literal:
        return next(value for value in typing.get_args(hint) if value != default)
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    option = options[0]
    if typing.get_origin(option) is Literal:
        return _sample(option, default)
    if option is bool:
        return not default
    if option is int:
        return 7 if default != 7 else 8
    if option is str:
        return "sample"
    raise AssertionError(f"no sample value for {hint!r}: extend _sample")


def _samples(kind: type[DatabaseError]) -> dict[str, object]:
    hints = typing.get_type_hints(kind.__init__)
    return {
        name: _sample(hints[name], parameter.default) for name, parameter in _keywords(kind).items()
    }


def _name(kind: type[DatabaseError]) -> str:
    return kind.__qualname__


def test_the_tree_holds_every_exported_error_and_the_sql_violation() -> None:
    assert set(TREE) >= EXPORTED
    assert llm_proxy_db.sql.IntegrityViolation in TREE
    in_errors_module = {k for k in TREE if k.__module__ == "llm_proxy_db._errors"}
    assert in_errors_module <= EXPORTED, "an error class of llm_proxy_db is not exported"
    assert len(TREE) >= 17


def test_the_documented_attributes_are_keyword_arguments() -> None:
    # What the CLI and callers read; a rename would break them silently.
    expected = {
        llm_proxy_db.NotFoundError: {"key"},
        llm_proxy_db.AlreadyExistsError: {"key"},
        llm_proxy_db.TokenUsageError: {"masked_token", "project_id"},
        llm_proxy_db.TokenLimitReachedError: {"masked_token", "project_id", "max_requests"},
        llm_proxy_db.MigrationError: {"version"},
        llm_proxy_db.sql.IntegrityViolation: {"kind"},
    }
    for kind, names in expected.items():
        assert set(_keywords(kind)) >= names, kind


@pytest.mark.parametrize("kind", TREE, ids=_name)
def test_one_argument_construction(kind: type[DatabaseError]) -> None:
    error = kind("the message")
    assert str(error) == "the message" and error.args == ("the message",)
    for name, parameter in _keywords(kind).items():
        assert getattr(error, name) == parameter.default, name
    with pytest.raises(TypeError):
        kind("the message", "a second positional argument")  # type: ignore[call-arg]


@pytest.mark.parametrize("kind", TREE, ids=_name)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_keeps_class_message_and_attributes(
    kind: type[DatabaseError], protocol: int
) -> None:
    samples = _samples(kind)
    error = kind("the message", **samples)
    copy = pickle.loads(pickle.dumps(error, protocol=protocol))  # noqa: S301 - our own bytes
    assert type(copy) is kind
    assert str(copy) == "the message" and copy.args == error.args
    for name, value in samples.items():
        assert getattr(copy, name) == value, name
    assert vars(copy) == vars(error)
    assert isinstance(copy, DatabaseError)


@pytest.mark.parametrize("kind", TREE, ids=_name)
def test_pickle_keeps_default_attributes(kind: type[DatabaseError]) -> None:
    copy = pickle.loads(pickle.dumps(kind("m")))  # noqa: S301 - our own bytes
    assert type(copy) is kind and vars(copy) == vars(kind("m"))
