"""The generated forwarding methods keep the protocol's signatures exactly."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Protocol

import pytest

from llm_proxy_db import DB
from llm_proxy_db._delegation import forward, forwarding


class _Shapes(Protocol):
    def positional(self, token: str, count: int = 0, /) -> str: ...

    def keyword_only(self, token: str, *, delta: int = 1) -> str: ...

    def variadic(self, *tokens: str, **options: str) -> str: ...

    def optional(self, project_id: str | None = None) -> str: ...


class _Recorder:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: f"{name}{args}{sorted(kwargs.items())}"


@forwarding("self._inner.{name}({args})", protocol=_Shapes, checked=True)
class _Forwarder:
    positional = forward(_Shapes.positional)

    def __init__(self) -> None:
        self._inner = _Recorder()


def test_parameter_kinds_are_kept() -> None:
    forwarder: Any = _Forwarder()
    assert forwarder.positional("t", 2) == "positional('t', 2)[]"
    with pytest.raises(TypeError):
        forwarder.positional(token="t")  # noqa: S106 - positional-only
    assert forwarder.keyword_only("t", delta=3) == "keyword_only('t',)[('delta', 3)]"
    with pytest.raises(TypeError):
        forwarder.keyword_only("t", 3)  # keyword-only
    assert forwarder.variadic("a", "b", mode="x") == "variadic('a', 'b')[('mode', 'x')]"
    assert forwarder.optional() == "optional(None,)[]"
    for name in ("positional", "keyword_only", "variadic", "optional"):
        generated = getattr(_Forwarder, name)
        protocol = inspect.signature(getattr(_Shapes, name), eval_str=True)
        assert inspect.signature(generated) == protocol


def test_ints_are_checked_and_only_counts_must_be_positive() -> None:
    forwarder: Any = _Forwarder()
    assert forwarder.positional("t", 0) == "positional('t', 0)[]"  # not a count: 0 is fine
    with pytest.raises(TypeError, match="count must be a int"):
        forwarder.positional("t", True)
    with pytest.raises(ValueError, match="delta must be an integer >= 1"):
        forwarder.keyword_only("t", delta=0)
    with pytest.raises(TypeError, match="project_id must be a str, got int"):
        forwarder.optional(project_id=3)  # a str or None


def test_generated_methods_carry_the_protocols_hints_and_docs() -> None:
    hints = typing.get_type_hints(DB.increment_cache_hit_count)
    assert hints == {"token": str, "delta": int, "return": type(None)}
    assert DB.increment_token_usage.__doc__ and "atomically" in DB.increment_token_usage.__doc__
    assert DB.increment_token_usage.__qualname__ == "DB.increment_token_usage"
