"""Entry point of the SQLite backend: cheap to import, opens nothing."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from typing import Any

from llm_proxy_db import Backend, BackendSpec, Capabilities, FullConfig, hookimpl


def _open(config: FullConfig) -> Backend:
    from ._backend import SQLiteBackend

    return SQLiteBackend(config)


async def _open_async(config: FullConfig) -> Any:
    # An AsyncBackend: llm_proxy_db exports no name for it, and AsyncSqlStores declares
    # its store methods to type checkers only through __getattr__.
    from ._async_backend import open_async

    return await open_async(config)


@hookimpl
def llm_proxy_db_backends() -> Iterator[BackendSpec]:
    yield BackendSpec(
        name="sqlite",
        api_version=3,  # the storage API this backend is written for (not the core's)
        factory=_open,
        async_factory=_open_async,
        capabilities=Capabilities(persistent=True, multi_process=True, migrations=True),
        description="SQLite file via the standard library (default; DATABASE_PATH)",
        migrations=files("llm_proxy_db_sqlite") / "migrations",
    )
