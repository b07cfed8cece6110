"""Methods that forward a store call, generated once from the store protocols.

The store contract is written once, in :mod:`._protocols`. Every class that only passes
store calls on (the ``DB`` facade, the object a transaction yields, the SQL stores over an
executor, and their awaiting twins) gets its methods from :func:`forwarding`, which writes
each method from the protocol's signature, so none of them is written out by hand:

* ``checked``: the arguments' types are checked against the protocol's annotations
  (``TypeError``; the counts in :data:`COUNTS` must be integers >= 1, ``ValueError``);
* ``guarded``: the transaction rule (:mod:`._transaction_rule`);
* ``call``: what the method returns, e.g. ``self._stores.{name}({args})``;
* ``awaiting``: an ``async def`` that awaits the call.

A class lists the methods it forwards as ``name = forward(Protocol.name)`` (that line is
also what type checkers read), and :func:`forwarding` replaces each with generated code.
"""

from __future__ import annotations

import inspect
import linecache
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, Union, cast, get_args, get_origin

from . import _limits, _transaction_rule
from ._protocols import Stores

__all__ = [
    "COUNTS",
    "AsyncForwardedStores",
    "ForwardedStores",
    "aforward",
    "forward",
    "forwarded_names",
    "forwarding",
    "protocol_methods",
]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

_FORWARDED: Final = "__llm_proxy_db_forwarded__"
"""Where a decorated class keeps ``{name: protocol method}`` of what it forwards."""

COUNTS: Final = frozenset({"delta"})
"""Parameters that are counts: integers from 1 to ``MAX_COUNT`` (``ValueError``
otherwise); other ``int`` parameters are only checked to be ints (never bools)."""

TOKENS: Final = frozenset({"token"})
"""``str`` parameters that are token values presented for lookup: one that cannot be a
stored token is ``TokenNotFoundError`` with nothing queried (``_limits.lookup_token``).
Other ``str`` parameters (ids) holding a NUL or a lone surrogate, which no backend
stores, are a ``ValueError`` (``_limits.check_key``)."""


class _Forward:
    __slots__ = ("method",)

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method


def forward(method: F) -> F:
    """Mark a class attribute as a forwarded protocol method (``create_project =
    forward(Stores.create_project)``); :func:`forwarding` writes its body."""
    return cast(F, _Forward(method))


def aforward(
    method: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """:func:`forward` for an awaiting class: type checkers read the protocol method as a
    coroutine with the same parameters and result."""
    forwarded: Any = _Forward(method)
    return cast("Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]", forwarded)


def forwarded_names(cls: type) -> tuple[str, ...]:
    """The methods :func:`forwarding` generated for ``cls`` and its bases."""
    return tuple(getattr(cls, _FORWARDED, {}))


def protocol_methods(protocol: type) -> dict[str, Callable[..., Any]]:
    """The public methods ``protocol`` declares (its own and its bases'), by name."""
    methods: dict[str, Callable[..., Any]] = {}
    for base in reversed(protocol.__mro__):
        if base is object or not getattr(base, "_is_protocol", False):
            continue
        for name, value in vars(base).items():
            if not name.startswith("_") and inspect.isfunction(value):
                methods[name] = value
    return methods


def forwarding(
    call: str,
    *,
    protocol: type | None = None,
    checked: bool = False,
    guarded: bool = False,
    awaiting: bool = False,
    prelude: str = "",
    namespace: dict[str, Any] | None = None,
) -> Callable[[C], C]:
    """A class decorator writing every ``forward(...)`` attribute of the class, every
    method its bases forward and every method of ``protocol``, as a method that returns
    ``call``.

    ``call`` is a template with ``{name}`` and ``{args}`` (the arguments as passed);
    ``prelude`` is a statement run first (the ``AsyncDB``'s event-loop check);
    ``namespace`` supplies names the template and the prelude use besides ``self``.
    """

    def decorate(cls: C) -> C:
        methods = protocol_methods(protocol) if protocol is not None else {}
        for base in reversed(cls.__mro__[1:]):
            methods.update(getattr(base, _FORWARDED, {}))
        for name, value in list(vars(cls).items()):
            if isinstance(value, _Forward):
                methods[name] = value.method
        for name, method in methods.items():
            generated = _generate(
                name, method, call, checked, guarded, awaiting, prelude, namespace or {}, cls
            )
            setattr(cls, name, generated)
        setattr(cls, _FORWARDED, methods)
        return cls

    return decorate


def _generate(
    name: str,
    method: Callable[..., Any],
    call: str,
    checked: bool,
    guarded: bool,
    awaiting: bool,
    prelude: str,
    namespace: dict[str, Any],
    owner: type,
) -> Callable[..., Any]:
    signature = inspect.signature(method, eval_str=True)
    parameters = list(signature.parameters.values())[1:]  # without self
    globals_: dict[str, Any] = {
        "_blocks": _transaction_rule.open_blocks,
        "_threads": _transaction_rule.thread_blocks,
        "_refuse": _transaction_rule.refuse,
        "_type_error": _type_error,
        "_count_error": _count_error,
        "_lookup_token": _limits.lookup_token,
        "_check_key": _limits.check_key,
        "_MAX_COUNT": _limits.MAX_COUNT,
        **namespace,
    }
    header, arguments = _header_and_arguments(parameters, globals_)
    lines = [f"{'async ' if awaiting else ''}def {name}({', '.join(['self', *header])}):"]
    if prelude:
        lines.append(f"    {prelude.format(name=name)}")
    if guarded and awaiting:  # an awaiting facade: the context's blocks only
        lines.append(f"    if _blocks.get(): _refuse(self, {name!r}, blocking=False)")
    elif guarded:
        lines.append(f"    if _blocks.get() or _threads: _refuse(self, {name!r})")
    if checked:
        for index, parameter in enumerate(parameters):
            lines.extend(_check(parameter, f"_kind_{index}", globals_))
    body = call.format(name=name, args=", ".join(arguments))
    lines.append(f"    return {'await ' if awaiting else ''}{body}")
    source = "\n".join(lines) + "\n"
    filename = f"<forwarded {owner.__module__}.{owner.__qualname__}.{name}>"
    # As attrs does: register the source, so tracebacks show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), globals_)  # noqa: S102 - from our protocols only
    generated: Callable[..., Any] = globals_[name]
    generated.__qualname__ = f"{owner.__qualname__}.{name}"
    generated.__module__ = owner.__module__
    generated.__doc__ = method.__doc__
    generated.__annotations__ = typing.get_type_hints(method)
    generated.__signature__ = signature  # type: ignore[attr-defined]
    generated.__wrapped__ = method  # type: ignore[attr-defined]
    return generated


def _header_and_arguments(
    parameters: list[inspect.Parameter], globals_: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The generated ``def``'s parameter list and the call's arguments, kinds kept."""
    header: list[str] = []
    arguments: list[str] = []
    kind = inspect.Parameter
    keyword_only_started = False
    for index, parameter in enumerate(parameters):
        text = parameter.name
        if parameter.default is not kind.empty:
            default = f"_default_{index}"
            globals_[default] = parameter.default
            text = f"{text}={default}"
        if parameter.kind is kind.VAR_POSITIONAL:
            header.append(f"*{parameter.name}")
            arguments.append(f"*{parameter.name}")
            keyword_only_started = True
            continue
        if parameter.kind is kind.VAR_KEYWORD:
            header.append(f"**{parameter.name}")
            arguments.append(f"**{parameter.name}")
            continue
        if parameter.kind is kind.KEYWORD_ONLY:
            if not keyword_only_started:
                header.append("*")
                keyword_only_started = True
            arguments.append(f"{parameter.name}={parameter.name}")
        else:
            arguments.append(parameter.name)
        header.append(text)
        if parameter.kind is kind.POSITIONAL_ONLY and (
            index + 1 == len(parameters) or parameters[index + 1].kind is not kind.POSITIONAL_ONLY
        ):
            header.append("/")
    return header, arguments


def _check(parameter: inspect.Parameter, slot: str, globals_: dict[str, Any]) -> list[str]:
    """Source lines that check one argument against its annotation."""
    name = parameter.name
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return []
    if get_origin(parameter.annotation) is list:  # list[Model]: the list, then each item
        (item,) = get_args(parameter.annotation)
        if not isinstance(item, type):
            raise TypeError(f"cannot check an argument annotated {parameter.annotation!r}")
        globals_[slot] = item
        globals_["_list_error"] = _list_error
        return [
            f"    if not isinstance({name}, list) or not all("
            f"isinstance(_item, {slot}) for _item in {name}): "
            f"raise _list_error({name!r}, {slot}, {name})"
        ]
    kinds, optional = _kinds(parameter.annotation)
    if kinds == (int,):
        condition = f"{name}.__class__ is not int"  # an int, never a bool
        if name in COUNTS:
            condition += f" or not 1 <= {name} <= _MAX_COUNT"
        if optional:
            condition = f"{name} is not None and ({condition})"
        error = "_count_error" if name in COUNTS else "_type_error"
        extra = "" if name in COUNTS else f", {slot}"
        if name not in COUNTS:
            globals_[slot] = kinds
        return [f"    if {condition}: raise {error}({name!r}{extra}, {name})"]
    globals_[slot] = kinds
    condition = f"not isinstance({name}, {slot})"
    if optional:
        condition = f"{name} is not None and {condition}"
    lines = [f"    if {condition}: raise _type_error({name!r}, {slot}, {name})"]
    if kinds == (str,):
        value_check = (
            f"_lookup_token({name})" if name in TOKENS else f"_check_key({name!r}, {name})"
        )
        lines.append(
            f"    if {name} is not None: {value_check}" if optional else f"    {value_check}"
        )
    return lines


def _kinds(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """The classes an annotation admits, and whether it admits None."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
    else:
        members = (annotation,)
    kinds = tuple(m for m in members if m is not type(None))
    if not all(isinstance(kind, type) for kind in kinds):
        raise TypeError(f"cannot check an argument annotated {annotation!r}")
    return kinds, len(kinds) != len(members)


def _type_error(name: str, kinds: tuple[type, ...], value: object) -> TypeError:
    wanted = " or ".join(kind.__name__ for kind in kinds)
    return TypeError(f"{name} must be a {wanted}, got {type(value).__name__}")


def _list_error(name: str, kind: type, value: object) -> TypeError:
    wanted = f"{name} must be a list of {kind.__name__}"
    if not isinstance(value, list):
        return TypeError(f"{wanted}, got {type(value).__name__}")
    index, item = next((i, v) for i, v in enumerate(value) if not isinstance(v, kind))
    return TypeError(f"{wanted}, got {type(item).__name__} at index {index}")


def _count_error(name: str, value: object) -> ValueError:
    if isinstance(value, int) and value > _limits.MAX_COUNT:
        shown = _limits.int_text(value)
        return ValueError(f"{name} must be at most {_limits.MAX_COUNT}, got {shown}")
    return ValueError(f"{name} must be an integer >= 1, got {value!r}")


class ForwardedStores(Stores):
    """A base for classes that forward every ``Stores`` method (decorate the subclass with
    :func:`forwarding`): what type checkers read of them, written once."""

    __slots__ = ()

    create_project = forward(Stores.create_project)
    get_project_by_id = forward(Stores.get_project_by_id)
    update_project = forward(Stores.update_project)
    delete_project = forward(Stores.delete_project)
    list_projects = forward(Stores.list_projects)
    create_token = forward(Stores.create_token)
    get_token_by_id = forward(Stores.get_token_by_id)
    update_token = forward(Stores.update_token)
    delete_token = forward(Stores.delete_token)
    list_tokens = forward(Stores.list_tokens)
    increment_token_usage = forward(Stores.increment_token_usage)
    revoke_token = forward(Stores.revoke_token)
    revoke_project_tokens = forward(Stores.revoke_project_tokens)
    revoke_expired_tokens = forward(Stores.revoke_expired_tokens)
    increment_cache_hit_count = forward(Stores.increment_cache_hit_count)
    reset_token_usage = forward(Stores.reset_token_usage)
    create_audit_event = forward(Stores.create_audit_event)
    create_audit_events = forward(Stores.create_audit_events)
    get_audit_event_by_id = forward(Stores.get_audit_event_by_id)
    list_audit_events = forward(Stores.list_audit_events)
    count_audit_events = forward(Stores.count_audit_events)
    authorize = forward(Stores.authorize)
    stats = forward(Stores.stats)


class AsyncForwardedStores:
    """The awaiting twin of :class:`ForwardedStores`: every ``Stores`` method as a
    coroutine (decorate the subclass with ``forwarding(..., awaiting=True)``)."""

    __slots__ = ()

    create_project = aforward(Stores.create_project)
    get_project_by_id = aforward(Stores.get_project_by_id)
    update_project = aforward(Stores.update_project)
    delete_project = aforward(Stores.delete_project)
    list_projects = aforward(Stores.list_projects)
    create_token = aforward(Stores.create_token)
    get_token_by_id = aforward(Stores.get_token_by_id)
    update_token = aforward(Stores.update_token)
    delete_token = aforward(Stores.delete_token)
    list_tokens = aforward(Stores.list_tokens)
    increment_token_usage = aforward(Stores.increment_token_usage)
    revoke_token = aforward(Stores.revoke_token)
    revoke_project_tokens = aforward(Stores.revoke_project_tokens)
    revoke_expired_tokens = aforward(Stores.revoke_expired_tokens)
    increment_cache_hit_count = aforward(Stores.increment_cache_hit_count)
    reset_token_usage = aforward(Stores.reset_token_usage)
    create_audit_event = aforward(Stores.create_audit_event)
    create_audit_events = aforward(Stores.create_audit_events)
    get_audit_event_by_id = aforward(Stores.get_audit_event_by_id)
    list_audit_events = aforward(Stores.list_audit_events)
    count_audit_events = aforward(Stores.count_audit_events)
    authorize = aforward(Stores.authorize)
    stats = aforward(Stores.stats)
