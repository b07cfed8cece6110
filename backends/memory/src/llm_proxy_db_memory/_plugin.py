"""Entry point of the memory backend: cheap to import, opens nothing."""

from __future__ import annotations

from collections.abc import Iterator

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._store import MemoryBackend

    return MemoryBackend()


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="memory",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        capabilities=Capabilities(),
        description="In-process dicts: tests and prototyping; nothing persists",
    )
