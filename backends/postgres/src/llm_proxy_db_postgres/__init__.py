"""The PostgreSQL backend of llm-proxy-db (``DB_DRIVER=postgres``)."""

from __future__ import annotations

from ._backend import PostgresBackend

__all__ = ["PostgresBackend"]
