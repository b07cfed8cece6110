"""The cattrs converter: records to and from plain, JSON-ready dicts.

Datetimes become ISO 8601 strings in UTC and are parsed back (an ISO string without an
offset is rejected by the models, like any naive datetime). Unknown keys are an error.
"""

from __future__ import annotations

from datetime import datetime

import cattrs

__all__ = ["converter"]


def _structure_datetime(value: object, _type: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)
    conv.register_unstructure_hook(datetime, datetime.isoformat)
    conv.register_structure_hook(datetime, _structure_datetime)
    return conv


converter: cattrs.Converter = _make_converter()
"""Turns records into plain dicts (``converter.unstructure(token)``) and back
(``converter.structure(data, Token)``); structuring validates like the constructor."""
