"""The MySQL and MariaDB backend of llm-proxy-db (``DB_DRIVER=mysql``).

Its names load on first use, so discovering plugins imports no driver: ``MySQLBackend``
and ``MYSQL``, the dialect (for tests and tools that run SQL of their own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import MySQLBackend
    from ._dialect import MYSQL

__all__ = ["MYSQL", "MySQLBackend"]


def __getattr__(name: str) -> Any:
    if name == "MySQLBackend":
        from ._backend import MySQLBackend

        return MySQLBackend
    if name == "MYSQL":
        from ._dialect import MYSQL

        return MYSQL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
