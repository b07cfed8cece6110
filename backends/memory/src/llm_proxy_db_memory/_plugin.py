"""Entry point of the memory backend: cheap to import, opens nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl

if TYPE_CHECKING:
    from ._async_store import AsyncMemoryBackend


def _open(config: FullConfig) -> Backend:
    from ._store import MemoryBackend

    return MemoryBackend()


async def _open_async(config: FullConfig) -> AsyncMemoryBackend:
    from ._async_store import AsyncMemoryBackend

    return AsyncMemoryBackend()


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="memory",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        async_factory=_open_async,
        capabilities=Capabilities(),
        description="In-process dicts: tests and prototyping; nothing persists",
    )
