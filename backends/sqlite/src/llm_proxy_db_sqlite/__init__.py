"""The SQLite backend of llm-proxy-db (``DB_DRIVER=sqlite``).

Its names load on first use, so discovering plugins imports no driver: ``SQLiteBackend``
and ``SQLITE``, the dialect (for tests and tools that run SQL of their own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import SQLiteBackend
    from ._dialect import SQLITE

__all__ = ["SQLITE", "SQLiteBackend"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteBackend":
        from ._backend import SQLiteBackend

        return SQLiteBackend
    if name == "SQLITE":
        from ._dialect import SQLITE

        return SQLITE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
