"""The SQLite backend of llm-proxy-db (``DB_DRIVER=sqlite``), the default."""

from __future__ import annotations

from ._backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
