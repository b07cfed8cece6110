"""The in-memory backend of llm-proxy-db (``DB_DRIVER=memory``).

The backend class loads on first use, so discovering plugins imports no driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._store import MemoryBackend

__all__ = ["MemoryBackend"]


def __getattr__(name: str) -> Any:
    if name == "MemoryBackend":
        from ._store import MemoryBackend

        return MemoryBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
