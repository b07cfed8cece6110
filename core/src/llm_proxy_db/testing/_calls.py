"""A sample call of every method of the store contract, derived from the protocols.

The method names come from ``Stores`` and ``Backend`` (``protocol_methods``) and each
call's arguments from the method's signature, so a method added to a protocol is called
by every test that goes through :func:`call`, without editing a list here. A parameter
of a kind this module cannot fill raises ``TypeError`` naming it: extend :func:`_sample`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

import attrs

from .._delegation import protocol_methods
from .._models import AuditEvent, Project, Token
from .._protocols import Backend, Stores
from ._base import secret_key, unique

__all__ = ["BACKEND_METHODS", "READS", "STORE_METHODS", "Keys", "arguments", "call"]

STORE_METHODS: Final = tuple(protocol_methods(Stores))
"""Every store method (what ``DB`` and a transaction's object offer), in protocol order."""

BACKEND_METHODS: Final = tuple(protocol_methods(Backend))
"""The store methods plus ``close``, ``health_check`` and ``transaction``."""

READS: Final = frozenset(
    name
    for name in STORE_METHODS
    if name.startswith(("get_", "list_", "count_")) or name == "stats"
)
"""The store methods that only read; every other one writes."""


@attrs.frozen
class Keys:
    """The records a sample call names: an existing project and token, an event id."""

    project_id: str
    token: str
    event_id: str


def _sample(method: str, parameter: inspect.Parameter, keys: Keys) -> object:
    """A value for one required parameter of ``method``."""
    kind = parameter.annotation
    updating = method.startswith("update_")
    if kind is Project:
        name = unique("sample-project")
        if updating:  # the existing project, renamed
            return Project(id=keys.project_id, name=name, openai_api_key=secret_key())
        return Project(name=name, openai_api_key=secret_key())
    if kind is Token:
        if updating:  # the existing token, with new administrative fields
            return Token(project_id=keys.project_id, token=keys.token, max_requests=7)
        return Token(project_id=keys.project_id)
    if kind is AuditEvent:
        return AuditEvent(action="sample.call", actor="conformance", outcome="success")
    if kind == list[AuditEvent]:
        return [AuditEvent(action="sample.call", actor="conformance", outcome="success")]
    if kind is str:
        by_name = {"project_id": keys.project_id, "token": keys.token, "event_id": keys.event_id}
        if parameter.name in by_name:
            return by_name[parameter.name]
    raise TypeError(
        f"the conformance suite has no sample value for {method}({parameter}): "
        "extend llm_proxy_db.testing._calls._sample"
    )


def arguments(method: str, keys: Keys) -> tuple[object, ...]:
    """Sample positional arguments for ``method``: its required parameters filled from
    ``keys``; parameters with a default keep it."""
    signature = inspect.signature(protocol_methods(Backend)[method], eval_str=True)
    parameters = list(signature.parameters.values())[1:]  # without self
    return tuple(
        _sample(method, p, keys) for p in parameters if p.default is inspect.Parameter.empty
    )


def call(target: object, method: str, keys: Keys) -> Any:
    """Call ``target.method`` with sample arguments and return what it returns.

    A context manager it returns (what ``transaction()`` gives) is entered and left at
    once, so that the call does its work (an empty unit of work) and holds nothing.
    """
    bound: Callable[..., Any] = getattr(target, method)
    result = bound(*arguments(method, keys))
    if isinstance(result, AbstractContextManager):
        with result:
            pass
        return None
    return result
