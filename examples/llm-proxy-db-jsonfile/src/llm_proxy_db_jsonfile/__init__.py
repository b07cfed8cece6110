"""The ``jsonfile`` backend of llm-proxy-db: every record in one JSON file (an example).

The backend class loads on first use, so discovering plugins opens and imports nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import JsonFileBackend

__all__ = ["JsonFileBackend"]


def __getattr__(name: str) -> Any:
    if name == "JsonFileBackend":
        from ._backend import JsonFileBackend

        return JsonFileBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
