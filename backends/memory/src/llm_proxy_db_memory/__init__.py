"""The in-memory backend of llm-proxy-db (``DB_DRIVER=memory``)."""

from __future__ import annotations

from ._store import MemoryBackend

__all__ = ["MemoryBackend"]
