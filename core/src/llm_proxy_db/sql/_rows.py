"""Fused row decoders: one generated function per model and dialect.

A row from the driver becomes a model in one call: the columns are unpacked, the
timestamps decoded inline (``datetime.fromisoformat`` for SQLite's UTC text, a ``tzinfo``
for the naive UTC that PostgreSQL and MySQL return) and the slots set through their
descriptors, skipping the frozen class's ``__setattr__`` and its validators. This is the
trusted path: only for rows this package's schema holds.

A value the inline code does not take as it is (another offset, no offset, a Go
``time.Time`` string, more than six fraction digits) sends the whole row through the
dialect's general ``decode_time``, so every form the general codec reads is still read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import attrs

from ._timestamps import decode_naive_utc, decode_text_timestamp

__all__ = ["Kind", "row_decoder"]

Kind = Literal["value", "bool", "time", "optional_time", "count", "json"]
"""How a column becomes a field: as it is, ``bool``, a timestamp (or None), a counter
(NULL read as 0) or JSON text (or None)."""

T = TypeVar("T")


class _Unusual(Exception):
    """A timestamp the inline decoding does not take: decode the row the general way."""


# The inline form of the known time decoders (lines, for a column ``{v}``); any other
# decoder is called per value.
_INLINE: dict[Callable[[Any], datetime], tuple[str, ...]] = {
    decode_text_timestamp: (
        "{v} = _fromisoformat({v})",
        "if {v}.tzinfo is not _UTC: raise _Unusual",
    ),
    decode_naive_utc: (
        "if {v}.tzinfo is not None: raise _Unusual",
        "{v} = {v}.replace(tzinfo=_UTC)",
    ),
}
_CALL = ("{v} = _decode_time({v})",)


def row_decoder(
    cls: type[T], kinds: Sequence[Kind], decode_time: Callable[[Any], datetime]
) -> Callable[[Sequence[Any]], T]:
    """A function from a row (columns in ``cls``'s field order) to a ``cls`` instance.

    ``kinds`` says how each column becomes its field; ``decode_time`` is the dialect's.
    """
    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    if len(names) != len(kinds):
        raise ValueError(f"{cls.__name__} has {len(names)} fields, got {len(kinds)} kinds")
    inline = _INLINE.get(decode_time, _CALL)
    fast: list[str] = []  # at the try block's indentation
    general: list[str] = []
    for name, kind in zip(names, kinds, strict=True):
        v = f"c_{name}"
        if kind == "time":
            fast += [line.format(v=v) for line in inline]
            general.append(f"{v} = _decode_time({v})")
        elif kind == "optional_time":
            fast.append(f"if {v} is not None:")
            fast += ["    " + line.format(v=v) for line in inline]
            general.append(f"if {v} is not None: {v} = _decode_time({v})")
        elif kind == "bool":
            fast.append(f"{v} = True if {v} else False")
            general.append(fast[-1])
        elif kind == "count":
            fast.append(f"{v} = {v} or 0")
            general.append(fast[-1])
        elif kind == "json":
            fast.append(f"if {v} is not None: {v} = _json_loads({v})")
            general.append(fast[-1])
    unpack = ", ".join(f"c_{name}" for name in names) + ("," if len(names) == 1 else "") + " = row"
    lines = ["def decode(row):", f"    {unpack}", "    try:"]
    lines += ["        " + line for line in fast or ["pass"]]
    lines += ["    except (_Unusual, ValueError, TypeError, AttributeError):", f"        {unpack}"]
    lines += ["        " + line for line in general or ["pass"]]
    lines.append("    self = _new(_cls)")
    lines += [f"    _set_{name}(self, c_{name})" for name in names]
    lines.append("    return self")
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_cls": cls,
        "_UTC": UTC,
        "_Unusual": _Unusual,
        "_fromisoformat": datetime.fromisoformat,
        "_decode_time": decode_time,
        "_json_loads": json.loads,
    }
    for name in names:  # the slot's own descriptor: no frozen __setattr__ on the way
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
    source = "\n".join(lines)
    exec(compile(source, f"<row decoder {cls.__name__}>", "exec"), namespace)  # noqa: S102 - field names only
    decode: Callable[[Sequence[Any]], T] = namespace["decode"]
    decode.__qualname__ = f"decode_{cls.__name__}_row"
    return decode
