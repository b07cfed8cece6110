"""The PostgreSQL backend of llm-proxy-db (``DB_DRIVER=postgres``).

Its names load on first use, so discovering plugins imports no driver: ``PostgresBackend``
and ``POSTGRES``, the dialect (for tests and tools that run SQL of their own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import PostgresBackend
    from ._dialect import POSTGRES

__all__ = ["POSTGRES", "PostgresBackend"]


def __getattr__(name: str) -> Any:
    if name == "PostgresBackend":
        from ._backend import PostgresBackend

        return PostgresBackend
    if name == "POSTGRES":
        from ._dialect import POSTGRES

        return POSTGRES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
